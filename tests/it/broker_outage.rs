//! The broker itself stopped and started again (`rabbitmqctl stop_app` / `start_app`), on a private
//! node so the shared broker the rest of the suite uses never goes down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{
    Daemon, Tuning, always_for, cluster_yaml, config_with_clusters, eventually, find, free_port,
    http_client, parse_metrics,
};
use crate::util_broker::PrivateBroker;
use crate::util_slack::{FakeHttp, Recorded};

const HOOK: &str = "/hooks/T000";
const CLUSTER: &str = "private";
const QUEUES: [&str; 2] = ["orders", "invoices"];
const BACKLOG: u64 = 10;
const POLL: Duration = Duration::from_secs(1);

const RULES: &str = r#"groups:
  - name: t
    rules:
      - alert: NoConsumers
        scope: queue
        expr: messages_ready > 5 and consumers == 0
        labels: { severity: warning }
        annotations: { summary: "Nobody consumes {{ queue }}" }
      - alert: ClusterUnreachable
        scope: cluster
        expr: not reachable
        labels: { severity: critical }
"#;

fn alerting(slack: &FakeHttp) -> String {
    format!(
        r#"rules: [rules.yaml]
receivers:
  - name: slack
    slack: {{ webhook_url: "{}" }}
# One message per queue: the test counts them.
route: {{ receiver: slack, group_by: [cluster, vhost, queue, alertname], group_wait: 0s, group_interval: 1s }}
inhibit:
  - {{ source_matchers: ["alertname=ClusterUnreachable"], target_matchers: ["scope=queue"], equal: [cluster] }}
outbox: {{ max_backoff: 2s }}
"#,
        slack.url(HOOK)
    )
}

/// What each delivered message about `needle` was: `state:sequence` from its `Idempotency-Key`
/// (`correlation_id:state:sequence`), with the correlation id.
fn deliveries_about(slack: &FakeHttp, needle: &str) -> Vec<(String, String)> {
    messages_about(slack, needle)
        .iter()
        .map(|m| {
            let key = m.header("idempotency-key").unwrap_or_default();
            let (id, what) = key.split_once(':').unwrap_or((key, ""));
            (id.to_owned(), what.to_owned())
        })
        .collect()
}

fn messages_about(slack: &FakeHttp, needle: &str) -> Vec<Recorded> {
    slack
        .requests_to(HOOK)
        .into_iter()
        .filter(|r| r.accepted() && r.text().contains(needle))
        .collect()
}

/// `alertname → (queue or "", state, correlation_id)` for every alert the API lists.
async fn alerts(daemon: &Daemon) -> Result<Vec<(String, String, String, String)>, String> {
    let (_, body) = daemon.get_json("/api/v1/alerts").await?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    Ok(body["alerts"]
        .as_array()
        .ok_or(format!("no alerts list: {body}"))?
        .iter()
        .map(|a| {
            (
                text(&a["alertname"]),
                text(&a["labels"]["queue"]),
                text(&a["state"]),
                text(&a["correlation_id"]),
            )
        })
        .collect())
}

/// The queue alerts, sorted: (queue, state, correlation id).
async fn queue_incidents(daemon: &Daemon) -> Result<Vec<(String, String, String)>, String> {
    let mut incidents: Vec<_> = alerts(daemon)
        .await?
        .into_iter()
        .filter(|(name, ..)| name == "NoConsumers")
        .map(|(_, queue, state, id)| (queue, state, id))
        .collect();
    incidents.sort();
    Ok(incidents)
}

/// Reads `/metrics` every 250 ms for as long as it lives and notes every queue series that lies:
/// a backlog shown as anything but what is in the queue, a negative or made-up rate, a growth spike.
struct MetricsWatch {
    task: tokio::task::JoinHandle<()>,
    seen: Arc<Mutex<Observed>>,
}

#[derive(Default)]
struct Observed {
    scrapes: u64,
    up_values: Vec<f64>,
    /// `rabbitwatch_cluster_queues_stats_pending` at each read.
    pending_values: Vec<f64>,
    lies: Vec<String>,
}

impl MetricsWatch {
    fn start(base_url: &str) -> MetricsWatch {
        let url = format!("{base_url}/metrics");
        let seen = Arc::new(Mutex::new(Observed::default()));
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let client = http_client();
            let started = Instant::now();
            loop {
                if let Ok(response) = client.get(&url).send().await
                    && let Ok(text) = response.text().await
                {
                    let samples = parse_metrics(&text);
                    let mut seen = record.lock().unwrap();
                    seen.scrapes += 1;
                    let at = started.elapsed().as_secs_f64();
                    if let Some(up) = find(&samples, "rabbitwatch_up", &[("cluster", CLUSTER)]) {
                        seen.up_values.push(up);
                    }
                    let pending = "rabbitwatch_cluster_queues_stats_pending";
                    if let Some(n) = find(&samples, pending, &[("cluster", CLUSTER)]) {
                        seen.pending_values.push(n);
                    }
                    for queue in QUEUES {
                        let labels = [("cluster", CLUSTER), ("queue", queue)];
                        let value = |name| find(&samples, name, &labels);
                        for name in [
                            "rabbitwatch_queue_messages_ready",
                            "rabbitwatch_queue_messages",
                        ] {
                            if let Some(v) = value(name).filter(|v| *v != BACKLOG as f64) {
                                seen.lies.push(format!("{at:.1}s: {name}{{{queue}}} = {v}"));
                            }
                        }
                        for name in [
                            "rabbitwatch_queue_publish_rate",
                            "rabbitwatch_queue_consume_rate",
                            "rabbitwatch_queue_deliver_rate",
                        ] {
                            // Nothing is published or consumed during the test.
                            if let Some(v) = value(name).filter(|v| !(0.0..=0.1).contains(v)) {
                                seen.lies.push(format!("{at:.1}s: {name}{{{queue}}} = {v}"));
                            }
                        }
                        let growth = "rabbitwatch_queue_backlog_growth_rate";
                        if let Some(v) = value(growth).filter(|v| v.abs() > 0.1) {
                            seen.lies
                                .push(format!("{at:.1}s: {growth}{{{queue}}} = {v}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        MetricsWatch { task, seen }
    }

    fn stop(self) -> Observed {
        self.task.abort();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_app_pages_once_and_after_start_app_the_queue_incidents_carry_on() {
    if crate::util::runs_on_private_node_only() {
        return;
    }
    let test_started = Instant::now();
    let broker = PrivateBroker::start().await;
    eprintln!(
        "private broker {} booted in {:.1}s, RSS {:.0} MB",
        broker.node(),
        broker.boot_time().as_secs_f64(),
        broker.rss_bytes().unwrap_or(0) as f64 / 1e6
    );
    for queue in QUEUES {
        broker.declare_durable_queue(queue).await;
        broker.publish_persistent(queue, BACKLOG as usize).await;
    }
    // The broker's statistics lag by up to 5 s; start watching once they show the backlog, so the
    // daemon's first rates are steady ones.
    eventually(
        Duration::from_secs(20),
        "the broker's statistics to show the backlog",
        async || {
            for queue in QUEUES {
                let q = broker.queue(queue).await?;
                if q["messages_ready"] != BACKLOG || q["message_stats"]["publish"] != BACKLOG {
                    return Err(format!("{queue}: {q}"));
                }
            }
            Ok(())
        },
    )
    .await;

    let slack = FakeHttp::start().await;
    let tuning = Tuning {
        poll_interval: "1s",
        ..Tuning::default()
    };
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_yaml(
            CLUSTER,
            &broker.management_url(),
            "/",
            &tuning,
        )],
    ) + &alerting(&slack);
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", RULES)]).await;
    eventually(
        Duration::from_secs(30),
        "both queues' NoConsumers alerts in Slack",
        async || match messages_about(&slack, "NoConsumers").len() {
            2 => Ok(()),
            n => Err(format!("{n} NoConsumers message(s)")),
        },
    )
    .await;
    let incidents = queue_incidents(&daemon).await.expect("GET /api/v1/alerts");
    assert_eq!(
        incidents.iter().map(|i| i.1.as_str()).collect::<Vec<_>>(),
        ["firing", "firing"],
        "{incidents:?}"
    );
    let watch = MetricsWatch::start(daemon.base_url());

    // stop_app: the API goes away about a second in; the command returns some seconds later.
    let ((), api_gone_at) = tokio::join!(
        broker.stop_app(),
        broker.wait_until_management_fails(Duration::from_secs(60))
    );
    let page = eventually(
        Duration::from_secs(20),
        "one ClusterUnreachable page",
        async || match messages_about(&slack, "ClusterUnreachable").as_slice() {
            [page] => Ok(page.clone()),
            other => Err(format!("{} pages", other.len())),
        },
    )
    .await;
    let time_to_page = page.at.saturating_duration_since(api_gone_at);
    eprintln!(
        "ClusterUnreachable reached Slack {:.2}s after the API went away",
        time_to_page.as_secs_f64()
    );
    // Two polls, plus a second for evaluation and delivery on a busy machine.
    assert!(
        time_to_page <= 2 * POLL + Duration::from_secs(1),
        "the page took {time_to_page:?}"
    );
    let (status, ready) = daemon.get_json("/readyz").await.expect("GET /readyz");
    assert_eq!(status, 503, "{ready}");
    let check = ready["checks"]
        .as_array()
        .and_then(|checks| {
            checks
                .iter()
                .find(|c| c["name"] == format!("cluster:{CLUSTER}"))
        })
        .unwrap_or_else(|| panic!("/readyz names the cluster: {ready}"));
    assert_eq!(check["ok"], false, "{ready}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("connect"),
        "/readyz says why: {ready}"
    );
    let metrics = daemon.metrics().await.expect("GET /metrics");
    assert_eq!(
        find(&metrics, "rabbitwatch_up", &[("cluster", CLUSTER)]),
        Some(0.0)
    );
    always_for(
        2 * POLL,
        "the queue incidents frozen while the broker is stopped",
        async || {
            let now = queue_incidents(&daemon).await?;
            let quiet = messages_about(&slack, "NoConsumers").len() == 2;
            (now == incidents && quiet)
                .then_some(())
                .ok_or(format!("{now:?}, quiet in Slack: {quiet}"))
        },
    )
    .await;

    // start_app: for a few seconds the API lists the queues without their counts.
    broker.start_app().await;
    eventually(
        Duration::from_secs(30),
        "ClusterUnreachable resolved in Slack, /readyz 200",
        async || {
            let pages = deliveries_about(&slack, "ClusterUnreachable");
            let (status, ready) = daemon.get("/readyz").await?;
            (pages.len() == 2 && status == 200)
                .then_some(())
                .ok_or(format!(
                    "ClusterUnreachable: {pages:?}; /readyz {status} {ready}"
                ))
        },
    )
    .await;
    let pages = deliveries_about(&slack, "ClusterUnreachable");
    assert_eq!(pages[0].0, pages[1].0, "one incident: {pages:?}");
    assert_eq!(
        [pages[0].1.as_str(), pages[1].1.as_str()],
        ["firing:1", "resolved:2"],
        "one page, then its resolve"
    );
    eventually(
        Duration::from_secs(30),
        "the broker's statistics back",
        async || {
            for queue in QUEUES {
                let q = broker.queue(queue).await?;
                if q["messages_ready"] != BACKLOG {
                    return Err(format!("{queue}: {q}"));
                }
            }
            Ok(())
        },
    )
    .await;
    // A few polls on real numbers again: the incidents carry on, nothing re-fires or resolves.
    always_for(
        3 * POLL,
        "the same queue incidents firing, nothing new in Slack",
        async || {
            let now = queue_incidents(&daemon).await?;
            let quiet = messages_about(&slack, "NoConsumers").len() == 2;
            (now == incidents && quiet).then_some(()).ok_or(format!(
                "{now:?} (before: {incidents:?}), quiet in Slack: {quiet}"
            ))
        },
    )
    .await;

    let observed = watch.stop();
    assert!(
        observed.lies.is_empty(),
        "/metrics misreported the queues:\n{}",
        observed.lies.join("\n")
    );
    assert!(
        observed.up_values.contains(&0.0) && observed.up_values.last() == Some(&1.0),
        "rabbitwatch_up went to 0 and back to 1: {:?}",
        observed.up_values
    );
    assert_eq!(
        observed.pending_values.last(),
        Some(&0.0),
        "no queue left stats-pending once the broker has its numbers: {:?}",
        observed.pending_values
    );
    eprintln!(
        "{} /metrics reads, test took {:.1}s, at most {} queue(s) seen stats-pending",
        observed.scrapes,
        test_started.elapsed().as_secs_f64(),
        observed.pending_values.iter().copied().fold(0.0, f64::max)
    );
}
