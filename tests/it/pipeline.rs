//! The whole pipeline against a real broker: traffic at known rates goes in through AMQP, the daemon
//! scrapes the management API, and `/metrics`, `/readyz` and `rabbitwatch check` must tell the truth
//! about it. Each test owns a vhost, so they run in parallel without seeing each other's queues.
//!
//! The broker refreshes queue statistics every 5 s, so counters move in 5 s steps: deadlines leave room
//! for the analysis window to fill plus a few of those steps, and rates are checked with tolerances.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::util::{
    CLUSTER, Daemon, Sample, TestVhost, Tuning, always_for, cluster_yaml, config_for,
    config_with_clusters, consume_at_rate, declare_queues, delete_queue, eventually, find,
    free_port, has_labels, hold_unacked, management_url, near, parse_metrics, publish_at_rate,
    publish_n, queue_status, run_cli,
};

/// The labels of `queue`'s series on the cluster `config_for` names.
fn queue_labels<'a>(vhost: &'a TestVhost, queue: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("cluster", CLUSTER),
        ("vhost", vhost.name()),
        ("queue", queue),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_queue_reports_rates_and_growth() {
    let vhost = TestVhost::create().await;
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;
    let queue = "orders";
    let labels = queue_labels(&vhost, queue);
    let publisher = publish_at_rate(&vhost.amqp_url(), queue, 40).await;
    let _consumer = consume_at_rate(&vhost.amqp_url(), queue, 15).await;

    eventually(
        Duration::from_secs(75),
        "publish rate 40/s ±15%, consume rate 15/s ±15%, backlog growth > 0, drain ETA +Inf and \
         status growing, all in one scrape",
        async || {
            let metrics = daemon.metrics().await?;
            let publish = find(&metrics, "rabbitwatch_queue_publish_rate", &labels);
            let consume = find(&metrics, "rabbitwatch_queue_consume_rate", &labels);
            let growth = find(&metrics, "rabbitwatch_queue_backlog_growth_rate", &labels);
            let drain_eta = find(&metrics, "rabbitwatch_queue_drain_eta_seconds", &labels);
            let status = queue_status(&metrics, &labels);
            let as_expected = publish.is_some_and(|rate| near(rate, 40.0, 0.15))
                && consume.is_some_and(|rate| near(rate, 15.0, 0.15))
                && growth.is_some_and(|slope| slope > 0.0)
                && drain_eta == Some(f64::INFINITY)
                && status.as_deref() == Some("growing");
            as_expected.then_some(()).ok_or_else(|| {
                format!(
                    "publish_rate={publish:?} consume_rate={consume:?} backlog_growth={growth:?} \
                     drain_eta={drain_eta:?} status={status:?}"
                )
            })
        },
    )
    .await;

    publisher.stop().await;
    eventually(
        Duration::from_secs(75),
        "status draining once publishing stopped and the consumer carried on",
        async || {
            let metrics = daemon.metrics().await?;
            let status = queue_status(&metrics, &labels);
            (status.as_deref() == Some("draining"))
                .then_some(())
                .ok_or_else(|| {
                    let messages = find(&metrics, "rabbitwatch_queue_messages", &labels);
                    let growth = find(&metrics, "rabbitwatch_queue_backlog_growth_rate", &labels);
                    format!("status={status:?} messages={messages:?} backlog_growth={growth:?}")
                })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_without_consumers_is_reported_no_consumers() {
    let vhost = TestVhost::create().await;
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;
    let queue = "invoices";
    let labels = queue_labels(&vhost, queue);
    publish_n(&vhost.amqp_url(), queue, 10).await;

    eventually(
        Duration::from_secs(20),
        "10 messages, 0 consumers and status no_consumers",
        async || {
            let metrics = daemon.metrics().await?;
            let messages = find(&metrics, "rabbitwatch_queue_messages", &labels);
            let consumers = find(&metrics, "rabbitwatch_queue_consumers", &labels);
            let status = queue_status(&metrics, &labels);
            (messages == Some(10.0)
                && consumers == Some(0.0)
                && status.as_deref() == Some("no_consumers"))
            .then_some(())
            .ok_or_else(|| {
                format!("messages={messages:?} consumers={consumers:?} status={status:?}")
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_holding_unacked_messages_is_stalled() {
    let vhost = TestVhost::create().await;
    let tuning = Tuning {
        window: "15s",
        ..Tuning::default()
    };
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &tuning)).await;
    let queue = "shipments";
    let labels = queue_labels(&vhost, queue);
    publish_n(&vhost.amqp_url(), queue, 20).await;
    let _stuck_consumer = hold_unacked(&vhost.amqp_url(), queue, 5).await;

    eventually(
        Duration::from_secs(15 + 30),
        "1 consumer holding 5 unacked messages and status stalled",
        async || {
            let metrics = daemon.metrics().await?;
            let consumers = find(&metrics, "rabbitwatch_queue_consumers", &labels);
            let unacked = find(&metrics, "rabbitwatch_queue_messages_unacked", &labels);
            let status = queue_status(&metrics, &labels);
            (consumers == Some(1.0) && unacked == Some(5.0) && status.as_deref() == Some("stalled"))
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "consumers={consumers:?} messages_unacked={unacked:?} status={status:?}"
                    )
                })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_queue_series_disappear_and_redeclare_is_not_negative() {
    let vhost = TestVhost::create().await;
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;
    let queue = "payments";
    let labels = queue_labels(&vhost, queue);
    let (publish_per_second, consume_per_second) = (20, 10);

    // Long enough for the counters to be well above zero, so a re-declared queue's fresh counters
    // would look like a huge negative step to a daemon that missed the reset.
    let publisher = publish_at_rate(&vhost.amqp_url(), queue, publish_per_second).await;
    let consumer = consume_at_rate(&vhost.amqp_url(), queue, consume_per_second).await;
    eventually(
        Duration::from_secs(45),
        "a publish rate and at least 100 published messages on the queue",
        async || {
            let metrics = daemon.metrics().await?;
            let published = find(&metrics, "rabbitwatch_queue_published_total", &labels);
            let rate = find(&metrics, "rabbitwatch_queue_publish_rate", &labels);
            (published.is_some_and(|total| total >= 100.0) && rate.is_some())
                .then_some(())
                .ok_or_else(|| format!("published_total={published:?} publish_rate={rate:?}"))
        },
    )
    .await;
    publisher.stop().await;
    consumer.stop().await;

    delete_queue(&vhost.amqp_url(), queue).await;
    eventually(
        Duration::from_secs(15),
        "every series of the deleted queue to vanish from /metrics",
        async || {
            let metrics = daemon.metrics().await?;
            let left: Vec<&str> = metrics
                .iter()
                .filter(|sample| has_labels(sample, &labels))
                .map(|sample| sample.name.as_str())
                .collect();
            left.is_empty()
                .then_some(())
                .ok_or_else(|| format!("still exported: {left:?}"))
        },
    )
    .await;

    let _publisher = publish_at_rate(&vhost.amqp_url(), queue, publish_per_second).await;
    let _consumer = consume_at_rate(&vhost.amqp_url(), queue, consume_per_second).await;
    let mut rates_seen = 0;
    always_for(
        Duration::from_secs(20),
        "the re-declared queue's rates to stay within [0, 2 × the true rate]",
        async || {
            let metrics = daemon.metrics().await?;
            for (name, true_rate) in [
                ("rabbitwatch_queue_publish_rate", publish_per_second),
                ("rabbitwatch_queue_consume_rate", consume_per_second),
            ] {
                let Some(rate) = find(&metrics, name, &labels) else {
                    continue;
                };
                rates_seen += 1;
                let ceiling = 2.0 * f64::from(true_rate);
                if !(0.0..=ceiling).contains(&rate) {
                    return Err(format!(
                        "{name} = {rate} while the true rate is {true_rate}/s"
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
    assert!(
        rates_seen > 0,
        "the re-declared queue showed no rate within 20 s, so nothing was checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_queues_covered_beyond_page_size() {
    let vhost = TestVhost::create().await;
    let queues: Vec<String> = (0..250).map(|i| format!("bulk.{i:03}")).collect();
    declare_queues(&vhost.amqp_url(), &queues).await;
    let tuning = Tuning {
        page_size: 100, // the daemon's minimum: 250 queues take three pages
        ..Tuning::default()
    };
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &tuning)).await;

    eventually(
        Duration::from_secs(30),
        "rabbitwatch_queue_messages for all 250 queues",
        async || {
            let metrics = daemon.metrics().await?;
            let exported: BTreeSet<&str> = metrics
                .iter()
                .filter(|s| s.name == "rabbitwatch_queue_messages")
                .filter(|s| s.labels.get("vhost").map(String::as_str) == Some(vhost.name()))
                .filter_map(|s| s.labels.get("queue").map(String::as_str))
                .collect();
            let missing: Vec<&str> = queues
                .iter()
                .map(String::as_str)
                .filter(|queue| !exported.contains(queue))
                .collect();
            missing.is_empty().then_some(()).ok_or_else(|| {
                format!(
                    "{} of {} missing, e.g. {:?}",
                    missing.len(),
                    queues.len(),
                    &missing[..missing.len().min(5)]
                )
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_is_reported_while_good_one_keeps_working() {
    let vhost = TestVhost::create().await;
    let queue = "audit";
    publish_n(&vhost.amqp_url(), queue, 3).await;
    let tuning = Tuning::default();
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[
            cluster_yaml("good", management_url(), vhost.name(), &tuning),
            // Port 1: nothing listens, so every connection is refused.
            cluster_yaml("bad", "http://127.0.0.1:1", vhost.name(), &tuning),
        ],
    );
    let daemon = Daemon::start(&config).await;
    let good_queue = [
        ("cluster", "good"),
        ("vhost", vhost.name()),
        ("queue", queue),
    ];

    eventually(
        Duration::from_secs(30),
        "bad down with connect errors, good up with its queue, /readyz 503 naming cluster:bad",
        async || {
            let metrics = daemon.metrics().await?;
            let bad_up = find(&metrics, "rabbitwatch_up", &[("cluster", "bad")]);
            let good_up = find(&metrics, "rabbitwatch_up", &[("cluster", "good")]);
            let connect_errors = find(
                &metrics,
                "rabbitwatch_scrape_errors_total",
                &[("cluster", "bad"), ("reason", "connect")],
            );
            let good_messages = find(&metrics, "rabbitwatch_queue_messages", &good_queue);
            let scraped = format!(
                "up{{bad}}={bad_up:?} up{{good}}={good_up:?} \
                 scrape_errors_total{{bad,connect}}={connect_errors:?} \
                 good queue messages={good_messages:?}"
            );
            if !(bad_up == Some(0.0)
                && good_up == Some(1.0)
                && connect_errors.is_some_and(|errors| errors > 0.0)
                && good_messages.is_some())
            {
                return Err(scraped);
            }

            let (status, readiness) = daemon.get_json("/readyz").await?;
            let check = |name: &str| {
                readiness["checks"]
                    .as_array()
                    .and_then(|checks| checks.iter().find(|check| check["name"] == name))
            };
            let bad = check("cluster:bad");
            let good = check("cluster:good");
            let bad_reported = bad.is_some_and(|bad| {
                bad["ok"] == false && bad["detail"].as_str().is_some_and(|why| !why.is_empty())
            });
            let good_reported = good.is_some_and(|good| good["ok"] == true);
            (status == 503 && readiness["ready"] == false && bad_reported && good_reported)
                .then_some(())
                .ok_or_else(|| format!("{scraped}; /readyz answered {status}: {readiness}"))
        },
    )
    .await;
}

/// The 1-based number of the only line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<usize> = (1..)
        .zip(text.lines())
        .filter(|(_, line)| line.contains(needle))
        .map(|(number, _)| number)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} must be on exactly one line");
    lines[0]
}

#[test]
fn check_reports_every_mistake_with_line_numbers() {
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let broken_yaml = r#"server:
  listen: 127.0.0.1:9488
state:
  path: ./state
clusters:
  - name: local
    url: not-a-url
    username: guest
    password: guest
    poll_interval: 10 parsecs
    timeout: 5s
    page_size: 500
    vhosts: { include: ".*" }
    queues: { include: "([" }
analysis:
  window: 30s
"#;
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, broken_yaml).expect("writing the broken config");
    let broken_path = broken.to_str().expect("a UTF-8 temp path");

    let output = run_cli(&["check", "--config", broken_path], dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "check must exit 1 on a broken config; stderr:\n{stderr}"
    );
    for (mistake, needle) in [
        ("a URL that is not a URL", "url: not-a-url"),
        ("a duration in parsecs", "poll_interval: 10 parsecs"),
        ("a regex that does not compile", r#"include: "([""#),
    ] {
        let line = line_of(broken_yaml, needle);
        let located = regex::Regex::new(&format!(
            r"(?m)^{}:{line}:\d+: \S",
            regex::escape(broken_path)
        ))
        .expect("a valid regex");
        assert!(
            located.is_match(&stderr),
            "check must report {mistake} as `{broken_path}:{line}:COL: message`; stderr:\n{stderr}"
        );
    }

    let valid = dir.path().join("valid.yaml");
    std::fs::write(
        &valid,
        config_for("rw-check", free_port(), &Tuning::default()),
    )
    .expect("writing the valid config");
    let output = run_cli(
        &[
            "check",
            "--config",
            valid.to_str().expect("a UTF-8 temp path"),
        ],
        dir.path(),
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "check must accept a valid config; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_reports_every_typo_and_a_bad_receiver_setting_in_one_run() {
    // Three misspelt keys (one in a flow mapping) and a Slack setting only the receiver's own rules
    // reject: a channel beside a webhook URL. Each is reported at its place, all in one run.
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let yaml = r##"server:
  listen: 127.0.0.1:9488
clusters:
  - name: local
    url: http://127.0.0.1:15672
    username: guest
    password: guest
    timout: 5s
    vhosts: { include: ".*", exlude: "^test" }
analysis:
  windw: 5m
receivers:
  - name: ops
    slack: { webhook_url: "http://127.0.0.1:9/hook", channel: "#ops" }
route: { receiver: ops }
"##;
    let path = dir.path().join("typos.yaml");
    std::fs::write(&path, yaml).expect("writing the config");
    let path = path.to_str().expect("a UTF-8 temp path");
    let output = run_cli(&["check", "--config", path], dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let located: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{path}:")))
        .collect();
    assert_eq!(located.len(), 4, "four located errors:\n{stderr}");
    for (needle, what) in [
        ("timout: 5s", "unknown field `timout`"),
        ("exlude:", "unknown field `exlude`"),
        ("windw: 5m", "unknown field `windw`"),
        (
            "channel: \"#ops\"",
            "channel applies only with bot_token_file",
        ),
    ] {
        let line = line_of(yaml, needle);
        assert!(
            located
                .iter()
                .any(|l| l.starts_with(&format!("{path}:{line}:")) && l.contains(what)),
            "{what} at line {line}:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queue_name_is_escaped_in_metrics() {
    // A quote that would close the label value early, braces and a quoted `x="1"` that would read as an
    // injected label, and backslashes (one before `n`) that an exporter must double. (A real newline
    // cannot be tested here: RabbitMQ strips CR and LF from queue names when they are declared.)
    let queue = r#"evil"\n{x="1"}\\"#;
    let vhost = TestVhost::create().await;
    let labels = queue_labels(&vhost, queue);
    publish_n(&vhost.amqp_url(), queue, 1).await;
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;

    eventually(
        Duration::from_secs(30),
        "the hostile queue name exported exactly, and no injected label",
        async || {
            // `parse_metrics` panics on a malformed exposition, which is the failure this test is after.
            let metrics = parse_metrics(&daemon.metrics_text().await?);
            let injected: Vec<&Sample> = metrics
                .iter()
                .filter(|s| s.labels.contains_key("x"))
                .collect();
            assert!(injected.is_empty(), "a label was injected: {injected:?}");
            find(&metrics, "rabbitwatch_queue_messages", &labels)
                .is_some_and(|messages| messages == 1.0)
                .then_some(())
                .ok_or_else(|| {
                    let seen: Vec<&str> = metrics
                        .iter()
                        .filter(|s| s.name == "rabbitwatch_queue_messages")
                        .filter_map(|s| s.labels.get("queue").map(String::as_str))
                        .collect();
                    format!(
                        "no rabbitwatch_queue_messages = 1 for {queue:?}; queues seen: {seen:?}"
                    )
                })
        },
    )
    .await;
}
