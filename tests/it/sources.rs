//! Sources (docs/sources.md): the management API and the Prometheus
//! plugin feed the same snapshot. On RabbitMQ 4.0 two daemons, one per source, watch the same
//! traffic and must agree; on RabbitMQ 3.10 the plugin has no per-queue counters, so `auto` reads
//! the management API and says why, and `source: prometheus` is depth-only: rates absent, not zero.

use std::time::Duration;

use crate::util::{
    CLUSTER, Daemon, TestVhost, Tuning, cluster_yaml, config_with_clusters, consume_at_rate,
    eventually, find, free_port, management_url, on_rabbitmq4, publish_at_rate, publish_n,
    queue_status,
};

/// Node rabbit4b's AMQP address (rabbit4a's is the suite's `amqp_addr()`).
const NODE_B_AMQP: &str = "127.0.0.1:5674";

/// The two nodes' `rabbitmq_prometheus` listeners (scripts/rabbitmq4).
const PLUGIN_URLS: &str = "[http://127.0.0.1:15694, http://127.0.0.1:15695]";

/// A config watching `vhost` on the suite's broker with `source` and these extra cluster lines.
fn config_with_source(vhost: &str, source: &str, extra: &str) -> String {
    let tuning = Tuning::default();
    let cluster = cluster_yaml(CLUSTER, management_url(), vhost, &tuning);
    // Replace what cluster_yaml may have said about the plugin: this test says it itself.
    let cluster: String = cluster
        .lines()
        .filter(|l| !l.trim_start().starts_with("prometheus:"))
        .map(|l| format!("{l}\n"))
        .collect();
    config_with_clusters(
        free_port(),
        &tuning,
        &[format!("{cluster}    source: {source}\n{extra}")],
    )
}

/// The queue's rate and counter series are absent: unknown, not 0.
fn assert_rates_unknown(metrics: &[crate::util::Sample], labels: &[(&str, &str)]) {
    for rate in [
        "rabbitwatch_queue_publish_rate",
        "rabbitwatch_queue_consume_rate",
        "rabbitwatch_queue_published_total",
    ] {
        assert_eq!(
            find(metrics, rate, labels),
            None,
            "{rate} is unknown, not 0"
        );
    }
}

/// `(source, source_reason, stats_mode)` of the daemon's one cluster, once it has answered.
async fn source_of(daemon: &Daemon) -> (String, Option<String>, String) {
    eventually(
        Duration::from_secs(30),
        "the cluster answered",
        async || {
            let (_, status) = daemon.get_json("/api/v1/status").await?;
            let c = &status["clusters"][0];
            if c["last_success"].is_null() {
                return Err(format!("not yet: {c}"));
            }
            Ok((
                c["source"].as_str().unwrap_or_default().to_owned(),
                c["source_reason"].as_str().map(String::from),
                c["stats_mode"].as_str().unwrap_or_default().to_owned(),
            ))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_reads_the_plugin_on_rabbitmq_4_and_says_why_it_does_not_on_3() {
    let vhost = TestVhost::create().await;
    let extra = if on_rabbitmq4() {
        format!("    prometheus: {{ urls: {PLUGIN_URLS} }}\n")
    } else {
        String::new()
    };
    let daemon = Daemon::start(&config_with_source(vhost.name(), "auto", &extra)).await;
    let (source, reason, mode) = source_of(&daemon).await;
    let metrics = daemon.metrics().await.expect("metrics");
    let one_hot = |s: &str| {
        find(
            &metrics,
            "rabbitwatch_cluster_source",
            &[("cluster", CLUSTER), ("source", s)],
        )
    };
    if on_rabbitmq4() {
        assert_eq!(
            (source.as_str(), reason, mode.as_str()),
            ("prometheus", None, "full")
        );
        assert_eq!(
            (one_hot("prometheus"), one_hot("management")),
            (Some(1.0), Some(0.0))
        );
    } else {
        assert_eq!((source.as_str(), mode.as_str()), ("management", "full"));
        let reason = reason.expect("a reason for not reading the plugin");
        assert!(
            reason.contains("3.10") && reason.contains("no per-queue message counters"),
            "{reason}"
        );
        assert_eq!(
            (one_hot("prometheus"), one_hot("management")),
            (Some(0.0), Some(1.0))
        );
        assert!(
            daemon
                .logs()
                .contains("reading the management API instead of the Prometheus plugin"),
            "the fallback is logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_source_on_rabbitmq_3_shows_depths_and_leaves_rates_unknown() {
    if on_rabbitmq4() {
        eprintln!("skipped in the RabbitMQ 4.0 pass: its plugin lists per-queue counters");
        return;
    }
    let vhost = TestVhost::create().await;
    publish_n(&vhost.amqp_url(), "orders", 40).await;
    // The node's own listener (default: the node name's host, port 15692).
    let daemon = Daemon::start(&config_with_source(vhost.name(), "prometheus", "")).await;
    let (source, _, mode) = source_of(&daemon).await;
    assert_eq!(
        (source.as_str(), mode.as_str()),
        ("prometheus", "depth_only")
    );
    let labels = [
        ("cluster", CLUSTER),
        ("vhost", vhost.name()),
        ("queue", "orders"),
    ];
    let metrics = eventually(Duration::from_secs(30), "orders' 40 messages", async || {
        let m = daemon.metrics().await?;
        match find(&m, "rabbitwatch_queue_messages_ready", &labels) {
            Some(40.0) => Ok(m),
            other => Err(format!("messages_ready {other:?}")),
        }
    })
    .await;
    assert_rates_unknown(&metrics, &labels);
    assert_eq!(
        find(
            &metrics,
            "rabbitwatch_cluster_stats_mode",
            &[("cluster", CLUSTER), ("mode", "depth_only")]
        ),
        Some(1.0)
    );
    assert!(
        daemon
            .logs()
            .contains("no per-queue message counters from the Prometheus plugin"),
        "the depth-only mode is logged with its reason"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_prometheus_source_does_not_read_fails_the_cycle_and_is_named() {
    if !on_rabbitmq4() {
        eprintln!(
            "skipped: needs the two-node RabbitMQ 4.0 cluster (RABBITWATCH_TEST_BROKER=rabbitmq4)"
        );
        return;
    }
    let vhost = TestVhost::create().await;
    let extra = "    prometheus: { urls: [http://127.0.0.1:15694] }\n";
    let daemon = Daemon::start(&config_with_source(vhost.name(), "prometheus", extra)).await;
    let error = eventually(Duration::from_secs(30), "a failed cycle", async || {
        let (_, status) = daemon.get_json("/api/v1/status").await?;
        let c = &status["clusters"][0];
        match c["last_error"]["message"].as_str() {
            Some(m) => Ok((
                c["last_error"]["reason"].clone(),
                m.to_owned(),
                c["up"].clone(),
            )),
            None => Err(format!("no error yet: {c}")),
        }
    })
    .await;
    assert_eq!(error.0, "source");
    assert!(
        error.1.contains("rabbit4b@localhost") && error.1.contains("prometheus.urls"),
        "{}",
        error.1
    );
    assert_eq!(error.2, false);
    let (code, body) = daemon.get("/readyz").await.expect("readyz");
    assert_eq!(code, 503, "{body}");
    let metrics = daemon.metrics().await.expect("metrics");
    assert_eq!(
        find(&metrics, "rabbitwatch_up", &[("cluster", CLUSTER)]),
        Some(0.0)
    );
}

/// Point 3 of issue 15: the same traffic through both nodes of the 4.0 cluster, watched by a
/// management-source daemon and a prometheus-source daemon: rates, growth and status within 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sources_agree_on_rates_growth_and_status_within_5_percent() {
    if !on_rabbitmq4() {
        eprintln!(
            "skipped: needs the two-node RabbitMQ 4.0 cluster (RABBITWATCH_TEST_BROKER=rabbitmq4)"
        );
        return;
    }
    let vhost = TestVhost::create().await;
    let via_a = vhost.amqp_url();
    let via_b = via_a.replace(crate::util::amqp_addr(), NODE_B_AMQP);
    let management = Daemon::start(&config_with_source(vhost.name(), "management", "")).await;
    let plugin = Daemon::start(&config_with_source(
        vhost.name(),
        "prometheus",
        &format!("    prometheus: {{ urls: {PLUGIN_URLS} }}\n"),
    ))
    .await;
    assert_eq!(source_of(&plugin).await.0, "prometheus");
    assert_eq!(source_of(&management).await.0, "management");

    // (queue, publish through, consume through, in/s, out/s)
    let flows = [
        ("quorum.growing", &via_b, Some(&via_a), 30, 20),
        ("classic.steady", &via_a, Some(&via_b), 20, 20),
        ("classic.unconsumed", &via_b, None, 10, 0),
    ];
    let mut traffic = Vec::new();
    for (queue, publish_via, consume_via, publish, consume) in flows {
        traffic.push(publish_at_rate(publish_via, queue, publish).await);
        if let Some(via) = consume_via {
            traffic.push(consume_at_rate(via, queue, consume).await);
        }
    }

    let agree = |a: Option<f64>, b: Option<f64>| match (a, b) {
        // 5% of the larger, and 0.3/s of slack where both are about zero.
        (Some(a), Some(b)) => (a - b).abs() <= 0.05 * a.abs().max(b.abs()) + 0.3,
        _ => false,
    };
    eventually(
        Duration::from_secs(120),
        "both daemons' rates, growth and status within 5% of each other, and the rates the clients drive",
        async || {
            let (m, p) = (management.metrics().await?, plugin.metrics().await?);
            let mut wrong = Vec::new();
            for (queue, _, _, publish, consume) in flows {
                let labels = [("cluster", CLUSTER), ("vhost", vhost.name()), ("queue", queue)];
                for (name, driven) in [
                    ("rabbitwatch_queue_publish_rate", Some(publish)),
                    ("rabbitwatch_queue_consume_rate", Some(consume)),
                    ("rabbitwatch_queue_backlog_growth_rate", None),
                ] {
                    let (a, b) = (find(&m, name, &labels), find(&p, name, &labels));
                    let right = driven.is_none_or(|d| agree(a, Some(f64::from(d))));
                    if !agree(a, b) || !right {
                        wrong.push(format!("{queue} {name}: management {a:?}, prometheus {b:?}, clients {driven:?}"));
                    }
                }
                let (a, b) = (queue_status(&m, &labels), queue_status(&p, &labels));
                if a.is_none() || a != b {
                    wrong.push(format!("{queue} status: management {a:?}, prometheus {b:?}"));
                }
            }
            if wrong.is_empty() { Ok(()) } else { Err(wrong.join("; ")) }
        },
    )
    .await;

    for t in traffic {
        t.stop().await;
    }
}

/// RabbitMQ 4.0 with `management.rates_mode = none` (scripts/rabbitmq4's lone node rabbit4c): channels
/// count nothing per queue, and the plugin lists its counter families with no rows. Read as zeros,
/// every queue would look idle; the prometheus source is depth-only instead (what `auto` picks there:
/// the management API has no rates either), with depths and growth and no rate at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_mode_none_on_rabbitmq_4_leaves_the_prometheus_source_depth_only_not_zero() {
    if !on_rabbitmq4() {
        eprintln!(
            "skipped: needs scripts/rabbitmq4's node rabbit4c (RABBITWATCH_TEST_BROKER=rabbitmq4)"
        );
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq4");
    let out = std::process::Command::new(script)
        .args(["start-node", "rabbit4c"])
        .output()
        .expect("running scripts/rabbitmq4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    const API: &str = "http://127.0.0.1:15675";
    let vhost = format!("rw-rates-none-{}", std::process::id());
    let http = crate::util::http_client();
    let put = async |path: String, body: &str| {
        let r = http
            .put(format!("{API}{path}"))
            .basic_auth("guest", Some("guest"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("rabbit4c's management API");
        assert!(r.status().is_success(), "PUT {path}: {}", r.status());
    };
    put(format!("/api/vhosts/{vhost}"), "{}").await;
    put(
        format!("/api/permissions/{vhost}/guest"),
        r#"{"configure":".*","write":".*","read":".*"}"#,
    )
    .await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:5675/{vhost}");
    let publisher = publish_at_rate(&amqp, "orders", 10).await;

    let include = format!("^{}$", regex::escape(&vhost));
    let config = format!(
        "server:\n  listen: 127.0.0.1:{}\nstate:\n  path: ./state\nclusters:\n  - name: {CLUSTER}\n    url: {API}\n    username: guest\n    password: guest\n    poll_interval: 1s\n    vhosts: {{ include: '{include}' }}\n    prometheus: {{ urls: [http://127.0.0.1:15696] }}\nanalysis:\n  window: 30s\n",
        free_port()
    );
    let daemon = Daemon::start(&config).await;
    let (source, reason, mode) = source_of(&daemon).await;
    assert_eq!(
        (source.as_str(), reason, mode.as_str()),
        ("prometheus", None, "depth_only")
    );
    let labels = [
        ("cluster", CLUSTER),
        ("vhost", vhost.as_str()),
        ("queue", "orders"),
    ];
    let metrics = eventually(
        Duration::from_secs(45),
        "orders' backlog seen growing",
        async || {
            let m = daemon.metrics().await?;
            let growth = find(&m, "rabbitwatch_queue_backlog_growth_rate", &labels);
            match growth {
                Some(g) if g > 5.0 => Ok(m),
                other => Err(format!("growth {other:?}")),
            }
        },
    )
    .await;
    assert_rates_unknown(&metrics, &labels);
    publisher.stop().await;
    let _ = http
        .delete(format!("{API}/api/vhosts/{vhost}"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await;
}
