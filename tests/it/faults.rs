//! Fault injection: what a user notices when the management API is slow, resets connections, sends
//! broken JSON or a 500 on one page, when the SMTP server is away for a while, and when the daemon is
//! killed between sending a notification and recording it.
//!
//! The management-API faults come from `FaultyApi`, an HTTP-level proxy in front of the real broker
//! (see `util_faults`), switched per path and query. Every test owns a vhost and a daemon polling
//! every 1 s with `page_size: 100`, so a vhost of 150 queues is listed in two pages. The daemon keeps
//! the last good view for 3 poll intervals (+1 s) after its last success (`ClusterView::is_fresh`):
//! a brief failure leaves no gap, a longer one withdraws the queue series on purpose. What must never
//! happen is a *partial* view, or an alert resolving because the daemon could not see its queue.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::util::{
    CLUSTER, Daemon, TestVhost, Tuning, always_for, cluster_yaml, config_for, config_with_clusters,
    declare_queue, declare_queues, eventually, find, free_port, has_labels, publish_n,
    publish_n_each,
};
use crate::util_faults::{Fault, FaultyApi, On, SlowHook};
use crate::util_slack::{FakeHttp, Recorded};
use crate::util_smtp::SmtpSink;

const HOOK: &str = "/hooks/T000";

/// 150 queues, listed 100 a page: page 1 holds `q000`..`q099`, page 2 `q100`..`q149` (`sort=name`).
const QUEUES: usize = 150;
const PAGE_SIZE: u32 = 100;

fn tuning() -> Tuning {
    Tuning {
        poll_interval: "1s",
        window: "30s",
        page_size: PAGE_SIZE,
    }
}

/// A config watching `vhost` through `api` as cluster `local`, giving up on a request after `timeout`.
fn config_via(api: &FaultyApi, vhost: &TestVhost, timeout: &str) -> String {
    let tuning = tuning();
    let cluster = cluster_yaml(CLUSTER, &api.url(), vhost.name(), &tuning);
    assert!(cluster.contains("timeout: 5s"), "{cluster}");
    let cluster = cluster.replace("timeout: 5s", &format!("timeout: {timeout}"));
    config_with_clusters(free_port(), &tuning, &[cluster])
}

/// One queue rule, `Backlog`, firing at once when more than 5 messages are ready.
const RULES: &str = r#"groups:
  - name: t
    rules:
      - alert: Backlog
        scope: queue
        expr: messages_ready > 5
        labels: { severity: warning }
        annotations: { summary: "Backlog on {{ queue }}" }
"#;

/// Alerts to a Slack incoming webhook at `hook`, one message per queue.
fn slack_alerting(hook: &str) -> String {
    format!(
        r#"rules: [rules.yaml]
receivers:
  - name: slack
    slack: {{ webhook_url: "{hook}" }}
# One message per queue: the test counts them.
route: {{ receiver: slack, group_by: [cluster, vhost, queue, alertname], group_wait: 0s, group_interval: 1s }}
outbox: {{ max_backoff: 2s }}
"#
    )
}

// ---------------------------------------------------------------------------------------------------
// Observing

/// What `/metrics` says about the cluster and the vhost's queues.
#[derive(Debug)]
struct Seen {
    up: Option<f64>,
    errors: BTreeMap<String, f64>,
    /// Seconds since the last successful scrape, by the test's clock.
    age: Option<f64>,
    /// Queues with a `rabbitwatch_queue_messages_ready` series.
    queues: usize,
    /// Queues with a `rabbitwatch_queue_publish_rate` series.
    with_rates: usize,
}

impl Seen {
    fn errors(&self, reason: &str) -> f64 {
        self.errors.get(reason).copied().unwrap_or(0.0)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

async fn seen(daemon: &Daemon, vhost: &TestVhost) -> Result<Seen, String> {
    let samples = daemon.metrics().await?;
    let at = unix_now();
    let cluster = [("cluster", CLUSTER)];
    let count = |name: &str| {
        samples
            .iter()
            .filter(|s| s.name == name && has_labels(s, &[("vhost", vhost.name())]))
            .count()
    };
    Ok(Seen {
        up: find(&samples, "rabbitwatch_up", &cluster),
        errors: samples
            .iter()
            .filter(|s| s.name == "rabbitwatch_scrape_errors_total" && has_labels(s, &cluster))
            .map(|s| (s.labels["reason"].clone(), s.value))
            .collect(),
        age: find(
            &samples,
            "rabbitwatch_last_scrape_timestamp_seconds",
            &cluster,
        )
        .map(|t| at - t),
        queues: count("rabbitwatch_queue_messages_ready"),
        with_rates: count("rabbitwatch_queue_publish_rate"),
    })
}

/// Up, with exactly `queues` queues exported.
async fn healthy_with(daemon: &Daemon, vhost: &TestVhost, queues: usize) -> Result<Seen, String> {
    let seen = seen(daemon, vhost).await?;
    if seen.up == Some(1.0) && seen.queues == queues {
        Ok(seen)
    } else {
        Err(format!("{seen:?}"))
    }
}

/// The part of a `/readyz` answer about the cluster: status code, `ok`, `detail`.
async fn readiness(daemon: &Daemon) -> Result<(u16, bool, String), String> {
    let (status, body) = daemon.get_json("/readyz").await?;
    let check = body["checks"]
        .as_array()
        .and_then(|checks| {
            checks
                .iter()
                .find(|c| c["name"] == format!("cluster:{CLUSTER}").as_str())
        })
        .ok_or_else(|| format!("/readyz names no cluster:{CLUSTER}: {body}"))?;
    Ok((
        status,
        check["ok"] == true,
        check["detail"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// The state (`firing`/`resolved`) in a notification's `Idempotency-Key: <id>:<state>:<sequence>`.
fn key_state(request: &Recorded) -> String {
    let key = request.header("idempotency-key").unwrap_or_default();
    key.rsplit(':').nth(1).unwrap_or_default().to_owned()
}

/// The messages Slack accepted; fails at once on any resolve or on more than `n` messages, and
/// says how many of `n` arrived so far otherwise.
fn slack_messages(slack: &FakeHttp, n: usize) -> Result<Vec<Recorded>, String> {
    let got: Vec<Recorded> = slack
        .requests_to(HOOK)
        .into_iter()
        .filter(Recorded::accepted)
        .collect();
    let resolved: Vec<String> = got
        .iter()
        .filter(|r| key_state(r) != "firing")
        .map(Recorded::text)
        .collect();
    assert!(
        resolved.is_empty(),
        "a queue alert resolved (or something other than a firing message was sent): {resolved:#?}"
    );
    assert!(
        got.len() <= n,
        "expected {n} Slack message(s), got {}: {:#?}",
        got.len(),
        got.iter().map(Recorded::text).collect::<Vec<_>>()
    );
    if got.len() == n {
        Ok(got)
    } else {
        Err(format!("{} of {n} Slack message(s) so far", got.len()))
    }
}

/// The `Backlog` alerts the API shows firing, by queue, with their correlation ids.
async fn firing_backlogs(daemon: &Daemon) -> Result<BTreeMap<String, String>, String> {
    let (status, body) = daemon.get_json("/api/v1/alerts").await?;
    if status != 200 {
        return Err(format!("/api/v1/alerts answered {status}: {body}"));
    }
    let alerts = body["alerts"]
        .as_array()
        .ok_or_else(|| format!("no alerts list: {body}"))?;
    Ok(alerts
        .iter()
        .filter(|a| a["alertname"] == "Backlog" && a["state"] == "firing")
        .map(|a| {
            (
                a["labels"]["queue"].as_str().unwrap_or_default().to_owned(),
                a["correlation_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

fn queue_names() -> Vec<String> {
    (0..QUEUES).map(|i| format!("q{i:03}")).collect()
}

// ---------------------------------------------------------------------------------------------------
// The management API misbehaving

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_management_api_fails_the_cycle_with_reason_timeout() {
    let vhost = TestVhost::create().await;
    declare_queue(&vhost.amqp_url(), "orders").await;
    let api = FaultyApi::start().await;
    let daemon = Daemon::start(&config_via(&api, &vhost, "1s")).await;
    eventually(Duration::from_secs(20), "the queue scraped", async || {
        healthy_with(&daemon, &vhost, 1).await
    })
    .await;

    let queues = On::path("/api/queues");
    api.fail(queues.clone(), Fault::Delay(Duration::from_secs(3)));
    let fault_from = Instant::now();
    let down = eventually(
        Duration::from_secs(15),
        "up 0 with a timeout counted",
        async || {
            let seen = seen(&daemon, &vhost).await?;
            if seen.up == Some(0.0) && seen.errors("timeout") > 0.0 {
                Ok(seen)
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        down.errors.keys().collect::<Vec<_>>(),
        ["timeout"],
        "a slow answer is a timeout, nothing else: {down:?}"
    );
    let (_, _, detail) = eventually(
        Duration::from_secs(10),
        "/readyz 503 naming the cluster and the timeout",
        async || {
            let (status, ok, detail) = readiness(&daemon).await?;
            // The daemon gave up after its own 1 s, it did not wait out the 3 s answer.
            (status == 503
                && !ok
                && detail.starts_with("timeout:")
                && detail.contains("timed out after 1s"))
            .then_some((status, ok, detail.clone()))
            .ok_or(format!("{status} ok={ok} {detail:?}"))
        },
    )
    .await;
    assert!(detail.contains("/api/queues"), "{detail}");

    // Liveness is not readiness: the loop keeps cycling (each cycle ends after the 1 s timeout).
    always_for(
        Duration::from_secs(4),
        "/healthz 200 while the API is slow",
        async || match daemon.get("/healthz").await? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status}: {body}")),
        },
    )
    .await;
    // And it keeps failing each cycle by its own deadline. How many cycles fit in those 4 s depends
    // on what else a cycle reads (on RabbitMQ 4.0 the plugin's metrics, slow on a busy machine):
    // wait for the count, do not assume it.
    eventually(
        Duration::from_secs(20),
        "the loop went on polling: 3 timeouts or more",
        async || {
            let timeouts = seen(&daemon, &vhost).await?.errors("timeout");
            (timeouts >= 3.0)
                .then_some(())
                .ok_or(format!("{timeouts} timeouts"))
        },
    )
    .await;
    assert!(
        api.count(
            &queues,
            Some(Fault::Delay(Duration::from_secs(3))),
            fault_from
        ) >= 3,
        "the fault was exercised"
    );

    api.heal();
    eventually(Duration::from_secs(15), "up 1 again", async || {
        healthy_with(&daemon, &vhost, 1).await
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "/readyz 200 again",
        async || match readiness(&daemon).await? {
            (200, true, _) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_fail_the_cycle_without_losing_queues() {
    let vhost = TestVhost::create().await;
    publish_n(&vhost.amqp_url(), "orders", 10).await;
    let slack = FakeHttp::start().await;
    let api = FaultyApi::start().await;
    let config = config_via(&api, &vhost, "5s") + &slack_alerting(slack.url(HOOK).as_str());
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", RULES)]).await;
    let firing = eventually(Duration::from_secs(30), "one firing message", async || {
        slack_messages(&slack, 1)
    })
    .await
    .remove(0);
    assert!(firing.text().contains("orders"), "{}", firing.text());
    let before = firing_backlogs(&daemon).await.expect("alerts");
    assert_eq!(before.keys().collect::<Vec<_>>(), ["orders"]);

    let queues = On::path("/api/queues");
    api.fail(queues.clone(), Fault::Reset);
    let fault_from = Instant::now();
    // `ScrapeError::reason`: a connection that dies before an answer is `connect` (src/scrape.rs:
    // neither a timeout, nor a body or decode error).
    let down = eventually(
        Duration::from_secs(10),
        "up 0, reason connect, and the queue still exported (the last good view is kept for 3 polls)",
        async || {
            let seen = seen(&daemon, &vhost).await?;
            assert!(
                seen.queues == 1 || seen.age.is_none_or(|age| age >= 3.5),
                "the queue left /metrics while the last success was recent: {seen:?}"
            );
            if seen.up == Some(0.0) && seen.errors("connect") > 0.0 && seen.queues == 1 {
                Ok(seen)
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        down.errors.keys().collect::<Vec<_>>(),
        ["connect"],
        "{down:?}"
    );
    let (_, ok, detail) = readiness(&daemon).await.expect("/readyz");
    assert!(!ok && detail.starts_with("connect:"), "{detail}");

    // After 3 polls without success the series are withdrawn, on purpose; the alert stays firing.
    eventually(
        Duration::from_secs(10),
        "the stale queue series withdrawn",
        async || {
            let seen = seen(&daemon, &vhost).await?;
            (seen.queues == 0 && seen.errors("connect") >= 3.0)
                .then_some(())
                .ok_or(format!("{seen:?}"))
        },
    )
    .await;
    always_for(
        Duration::from_secs(3),
        "the alert firing, unchanged, and no further Slack message during the outage",
        async || {
            slack_messages(&slack, 1)?;
            let now = firing_backlogs(&daemon).await?;
            (now == before)
                .then_some(())
                .ok_or(format!("firing Backlog alerts {now:?}, before {before:?}"))
        },
    )
    .await;
    assert!(api.count(&queues, Some(Fault::Reset), fault_from) >= 3);

    api.heal();
    let back = eventually(Duration::from_secs(15), "the queue back", async || {
        healthy_with(&daemon, &vhost, 1).await
    })
    .await;
    assert!(back.errors("connect") >= 3.0, "{back:?}");
    always_for(
        Duration::from_secs(4),
        "no resolve and no repeat after recovery",
        async || {
            slack_messages(&slack, 1)?;
            let now = firing_backlogs(&daemon).await?;
            (now == before)
                .then_some(())
                .ok_or(format!("firing Backlog alerts {now:?}, before {before:?}"))
        },
    )
    .await;
}

/// The vhost's queues in `/metrics` are all there or (once stale) all gone; while the last success
/// is recent they are all there.
fn all_or_none(seen: &Seen) -> Result<(), String> {
    if seen.queues != 0 && seen.queues != QUEUES {
        return Err(format!("a partial view: {seen:?}"));
    }
    // Fresh means within 3 polls + 1 s of the last success; the test's clock reads later than the
    // daemon's render, so 3.5 s by the test's clock is still fresh for the daemon.
    if seen.age.is_some_and(|age| age < 3.5) && seen.queues != QUEUES {
        return Err(format!("fresh data without all the queues: {seen:?}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_or_garbled_json_is_a_decode_error_not_vanished_queues() {
    let vhost = TestVhost::create().await;
    let names = queue_names();
    declare_queues(&vhost.amqp_url(), &names).await;
    // Backlogs on both pages: a daemon that took a partial listing for the truth would resolve them.
    let backlogged = ["q000", "q042", "q120", "q149"];
    publish_n_each(&vhost.amqp_url(), &backlogged, 10).await;
    let slack = FakeHttp::start().await;
    let api = FaultyApi::start().await;
    let config = config_via(&api, &vhost, "5s") + &slack_alerting(slack.url(HOOK).as_str());
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", RULES)]).await;

    eventually(
        Duration::from_secs(40),
        "four firing messages",
        async || slack_messages(&slack, backlogged.len()),
    )
    .await;
    let before = firing_backlogs(&daemon).await.expect("alerts");
    assert_eq!(before.keys().collect::<Vec<_>>(), backlogged);
    eventually(
        Duration::from_secs(10),
        "every queue with a rate",
        async || {
            let seen = healthy_with(&daemon, &vhost, QUEUES).await?;
            (seen.with_rates == QUEUES)
                .then_some(())
                .ok_or(format!("{seen:?}"))
        },
    )
    .await;
    let unchanged = async || {
        slack_messages(&slack, backlogged.len())?;
        let now = firing_backlogs(&daemon).await?;
        if now != before {
            return Err(format!("firing Backlog alerts {now:?}, before {before:?}"));
        }
        all_or_none(&seen(&daemon, &vhost).await?)
    };

    // Page 2 cut off mid-body: the first page alone must not pass for the whole vhost.
    let page1 = On::path("/api/queues").query("page", "1");
    let page2 = On::path("/api/queues").query("page", "2");
    api.fail(page2.clone(), Fault::Truncate);
    let truncated_from = Instant::now();
    let decode_errors = eventually(
        Duration::from_secs(10),
        "up 0 with a decode error",
        async || {
            let seen = seen(&daemon, &vhost).await?;
            all_or_none(&seen).unwrap_or_else(|e| panic!("{e}"));
            (seen.up == Some(0.0) && seen.errors("decode") > 0.0)
                .then(|| seen.errors("decode"))
                .ok_or(format!("{seen:?}"))
        },
    )
    .await;
    always_for(
        Duration::from_secs(5),
        "all or none of the queues, and no alert resolving, while page 2 is truncated",
        &unchanged,
    )
    .await;
    assert!(api.count(&page2, Some(Fault::Truncate), truncated_from) >= 3);
    assert!(
        api.count(&page1, None, truncated_from) >= 3,
        "page 1 was served intact"
    );

    // Then page 1 garbled, page 2 intact: the second page alone must not pass either.
    api.fail(page1.clone(), Fault::Garble);
    let garbled_from = Instant::now();
    eventually(
        Duration::from_secs(10),
        "more decode errors from the garbled page",
        async || {
            let seen = seen(&daemon, &vhost).await?;
            all_or_none(&seen).unwrap_or_else(|e| panic!("{e}"));
            (api.count(&page1, Some(Fault::Garble), garbled_from) > 0
                && seen.errors("decode") > decode_errors)
                .then_some(())
                .ok_or(format!("{seen:?}"))
        },
    )
    .await;
    always_for(
        Duration::from_secs(3),
        "all or none of the queues, and no alert resolving, while page 1 is garbled",
        &unchanged,
    )
    .await;
    let seen_now = seen(&daemon, &vhost).await.expect("metrics");
    assert_eq!(
        seen_now.errors.keys().collect::<Vec<_>>(),
        ["decode"],
        "{seen_now:?}"
    );

    // One good cycle, and only one (the garbling resumes after it): rates right away prove the
    // windows were kept, since a forgotten window needs two samples before it has a rate.
    let one_good = SystemTime::now();
    let one_good_at = Instant::now();
    api.let_through(1);
    let seen_once = eventually(
        Duration::from_secs(10),
        "all queues, with rates, after a single good cycle",
        async || {
            let seen = seen(&daemon, &vhost).await?;
            let since = one_good.elapsed().map_or(0.0, |d| d.as_secs_f64());
            all_or_none(&seen).unwrap_or_else(|e| panic!("{e}"));
            let fresh_since = seen.age.is_some_and(|age| age < since);
            if fresh_since && seen.queues == QUEUES {
                Ok(seen)
            } else {
                Err(format!("no success since the pass yet: {seen:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        api.count(&page1, None, one_good_at),
        1,
        "exactly one intact listing since"
    );
    assert_eq!(
        seen_once.with_rates, QUEUES,
        "rates after one good cycle: the windows survived the failures: {seen_once:?}"
    );

    api.heal();
    let back = eventually(Duration::from_secs(15), "all queues back", async || {
        healthy_with(&daemon, &vhost, QUEUES).await
    })
    .await;
    assert_eq!(back.with_rates, QUEUES, "{back:?}");
    always_for(
        Duration::from_secs(3),
        "no alert resolving after recovery",
        &unchanged,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_on_one_page_fails_the_whole_cycle() {
    let vhost = TestVhost::create().await;
    declare_queues(&vhost.amqp_url(), &queue_names()).await;
    let api = FaultyApi::start().await;
    let daemon = Daemon::start(&config_via(&api, &vhost, "5s")).await;
    let listing = async || -> Result<usize, String> {
        let path = format!("/api/v1/queues?cluster={CLUSTER}");
        match daemon.get_json(&path).await? {
            (200, body) => body["queues"]
                .as_array()
                .map(|q| q.iter().filter(|q| q["vhost"] == vhost.name()).count())
                .ok_or(format!("no queues list: {body}")),
            (status, body) => Err(format!("{path} answered {status}: {body}")),
        }
    };
    eventually(
        Duration::from_secs(20),
        "all 150 queues listed",
        async || match listing().await? {
            QUEUES => Ok(()),
            n => Err(format!("{n} listed")),
        },
    )
    .await;

    let page2 = On::path("/api/queues").query("page", "2");
    api.fail(page2.clone(), Fault::Status(500));
    let fault_from = Instant::now();
    let (mut full_while_down, mut empty_while_down) = (0, 0);
    always_for(
        Duration::from_secs(8),
        "the listing all or nothing while page 2 answers 500",
        async || {
            let n = listing().await?;
            let seen = seen(&daemon, &vhost).await?;
            if n != 0 && n != QUEUES {
                return Err(format!(
                    "/api/v1/queues lists {n} of {QUEUES} queues; {seen:?}"
                ));
            }
            all_or_none(&seen)?;
            if seen.up == Some(0.0) {
                if n == QUEUES {
                    full_while_down += 1;
                } else {
                    empty_while_down += 1;
                }
            }
            Ok(())
        },
    )
    .await;
    // Both halves of the behaviour were seen: the last good listing kept at first, then withdrawn.
    assert!(
        full_while_down > 0 && empty_while_down > 0,
        "{full_while_down} full and {empty_while_down} empty listings while down"
    );
    let down = seen(&daemon, &vhost).await.expect("metrics");
    assert_eq!(down.up, Some(0.0));
    assert_eq!(
        down.errors.keys().collect::<Vec<_>>(),
        ["http_5xx"],
        "{down:?}"
    );
    assert!(down.errors("http_5xx") >= 3.0, "{down:?}");
    let (_, ok, detail) = readiness(&daemon).await.expect("/readyz");
    assert!(
        !ok && detail.starts_with("http_5xx:")
            && detail.contains("page=2")
            && detail.contains("500"),
        "{detail}"
    );
    assert!(api.count(&page2, Some(Fault::Status(500)), fault_from) >= 3);

    api.heal();
    eventually(
        Duration::from_secs(15),
        "all 150 queues listed again",
        async || match listing().await? {
            QUEUES => Ok(()),
            n => Err(format!("{n} listed")),
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------------
// Receivers misbehaving, the daemon dying

async fn notifications(daemon: &Daemon, receiver: &str, outcome: &str) -> Result<f64, String> {
    find(
        &daemon.metrics().await?,
        "rabbitwatch_notifications_total",
        &[("receiver", receiver), ("outcome", outcome)],
    )
    .ok_or_else(|| format!("no rabbitwatch_notifications_total for {receiver}/{outcome}"))
}

async fn gauge(daemon: &Daemon, name: &str) -> Result<f64, String> {
    find(&daemon.metrics().await?, name, &[]).ok_or_else(|| format!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_for_a_while_then_delivered() {
    let vhost = TestVhost::create().await;
    publish_n(&vhost.amqp_url(), "orders", 10).await;
    // Nothing listens here yet: every attempt is refused, a transient failure.
    let smtp_port = free_port();
    let config = config_for(vhost.name(), free_port(), &Tuning::default())
        + &format!(
            r#"rules: [rules.yaml]
receivers:
  - name: mail
    email: {{ smtp_url: "smtp://127.0.0.1:{smtp_port}", from: "rw@example.com", to: ["oncall@example.com"] }}
route: {{ receiver: mail, group_wait: 0s, group_interval: 1s }}
outbox: {{ max_backoff: 5s, max_attempts: 30 }}
"#
        );
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", RULES)]).await;

    eventually(
        Duration::from_secs(30),
        "a failed attempt to mail",
        async || match notifications(&daemon, "mail", "retried").await? {
            n if n > 0.0 => Ok(()),
            _ => Err("no retry yet".to_owned()),
        },
    )
    .await;
    // A minute's outage: with the backoff capped at 5 s, a dozen attempts at the cap (max_attempts is
    // raised to 30 to match: the default 12 is sized for the default 5 min cap, ~36 min of retrying), none
    // of which may dead-letter the mail.
    let outage_from = Instant::now();
    always_for(
        Duration::from_secs(60),
        "the mail pending and retried, never dead-lettered, while the SMTP server is away",
        async || {
            let (pending, dead) = (
                gauge(&daemon, "rabbitwatch_outbox_pending").await?,
                gauge(&daemon, "rabbitwatch_dead_letters").await?,
            );
            (pending == 1.0 && dead == 0.0)
                .then_some(())
                .ok_or(format!("outbox_pending {pending}, dead_letters {dead}"))
        },
    )
    .await;
    let retried = notifications(&daemon, "mail", "retried")
        .await
        .expect("metrics");
    assert!(
        retried >= 10.0,
        "1 s, 3 s, 5 s, 5 s… within {:?}: {retried} retries",
        outage_from.elapsed()
    );

    let smtp = SmtpSink::start_on(smtp_port).await;
    let mail = eventually(
        Duration::from_secs(15),
        "the mail delivered once the server is up",
        async || match smtp.messages().as_slice() {
            [mail] => Ok(mail.clone()),
            [] => Err("no mail yet".to_owned()),
            more => panic!("{} mails: {more:#?}", more.len()),
        },
    )
    .await;
    assert!(mail.body().contains("orders"), "{}", mail.body());
    assert_eq!(mail.to, ["oncall@example.com"]);
    always_for(
        Duration::from_secs(4),
        "exactly one mail",
        async || match smtp.messages().len() {
            1 => Ok(()),
            n => Err(format!("{n} mails")),
        },
    )
    .await;
    assert_eq!(
        notifications(&daemon, "mail", "delivered").await.ok(),
        Some(1.0)
    );
    assert_eq!(
        gauge(&daemon, "rabbitwatch_outbox_pending").await.ok(),
        Some(0.0)
    );
    assert_eq!(
        gauge(&daemon, "rabbitwatch_dead_letters").await.ok(),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_send_before_record_duplicates_only_with_the_same_idempotency_key() {
    let vhost = TestVhost::create().await;
    publish_n(&vhost.amqp_url(), "orders", 10).await;
    // Accepts at once (records the message) but says so only 3 s later: a crash in between leaves
    // the daemon not knowing it was delivered.
    let hook = SlowHook::start(Duration::from_secs(3)).await;
    let config = config_for(vhost.name(), free_port(), &Tuning::default())
        + &slack_alerting(&hook.url(HOOK));
    let mut daemon = Daemon::start_with_files(&config, &[("rules.yaml", RULES)]).await;

    eventually(
        Duration::from_secs(30),
        "the firing message to reach the hook",
        async || match hook.received().len() {
            0 => Err("nothing yet".to_owned()),
            _ => Ok(()),
        },
    )
    .await;
    assert_eq!(hook.answered(), 0, "killed while the request was in flight");
    daemon.kill9();
    let first = hook.received();
    assert_eq!(first.len(), 1, "one request before the crash");

    daemon.restart().await;
    eventually(
        Duration::from_secs(20),
        "the message sent again after the restart",
        async || match hook.received().len() {
            1 => Err("not yet".to_owned()),
            _ => Ok(()),
        },
    )
    .await;
    // Long enough for the second answer (3 s) and anything the daemon would send after it.
    always_for(
        Duration::from_secs(6),
        "no third request",
        async || match hook.received().len() {
            2 => Ok(()),
            n => Err(format!("{n} requests: {:#?}", hook.received())),
        },
    )
    .await;
    let requests = hook.received();
    let keys: Vec<Option<&str>> = requests
        .iter()
        .map(|r| r.header("idempotency-key"))
        .collect();
    assert!(
        keys[0].is_some_and(|k| k.contains(":firing:")),
        "an Idempotency-Key on the first request: {keys:?}"
    );
    assert_eq!(
        keys[0], keys[1],
        "the duplicate carries the same Idempotency-Key, so the receiver can drop it"
    );
    assert_eq!(requests[0].path, HOOK);
    assert!(
        requests[1].text().contains("orders"),
        "{}",
        requests[1].text()
    );
    eventually(
        Duration::from_secs(5),
        "the redelivery recorded",
        async || {
            let delivered = notifications(&daemon, "slack", "delivered").await?;
            let pending = gauge(&daemon, "rabbitwatch_outbox_pending").await?;
            (delivered == 1.0 && pending == 0.0)
                .then_some(())
                .ok_or(format!("delivered {delivered}, outbox_pending {pending}"))
        },
    )
    .await;
}
