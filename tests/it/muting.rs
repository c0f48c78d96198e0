//! What keeps alerts quiet, and what changes them at run time: silences, inhibition by an
//! unreachable cluster, config reloads, and the refusal to serve the API to the network unguarded.

use std::time::Duration;

use crate::util::{
    Daemon, TestVhost, Tuning, always_for, cluster_yaml, config_for, config_with_clusters,
    eventually, find, free_port, management_url, publish_n, run_cli,
};
use crate::util_proxy::Proxy;
use crate::util_slack::{FakeHttp, Recorded};

const HOOK: &str = "/hooks/T000";

fn rules(threshold: u32) -> String {
    format!(
        r#"groups:
  - name: t
    rules:
      - alert: Backlog
        scope: queue
        expr: messages_ready > {threshold}
        labels: {{ severity: warning }}
        annotations: {{ summary: "Backlog on {{{{ queue }}}}" }}
      - alert: ClusterUnreachable
        scope: cluster
        expr: not reachable
        labels: {{ severity: critical }}
"#
    )
}

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

/// Slack messages received so far that name `needle` (an alert name or a queue).
fn messages_about(slack: &FakeHttp, needle: &str) -> Vec<Recorded> {
    slack
        .requests_to(HOOK)
        .into_iter()
        .filter(|r| r.accepted() && r.text().contains(needle))
        .collect()
}

fn alert_field(alerts: &serde_json::Value, name: &str, field: &str) -> Option<serde_json::Value> {
    alerts["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["alertname"] == name)
        .map(|a| a[field].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_suppresses_and_expiring_it_lets_the_firing_alert_through() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let config = config_for(vhost.name(), free_port(), &Tuning::default()) + &alerting(&slack);
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", &rules(5))]).await;
    let url = daemon.base_url().to_string();

    let out = run_cli(
        &[
            "silence",
            "add",
            "--url",
            &url,
            "-m",
            "alertname=Backlog",
            "--duration",
            "1h",
            "--comment",
            "maintenance",
        ],
        daemon.dir(),
    );
    assert!(
        out.status.success(),
        "silence add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    publish_n(&vhost.amqp_url(), "orders", 10).await;

    eventually(
        Duration::from_secs(30),
        "the Backlog alert firing and muted",
        async || {
            let (_, alerts) = daemon.get_json("/api/v1/alerts").await?;
            let state = alert_field(&alerts, "Backlog", "state");
            let muted = alert_field(&alerts, "Backlog", "muted");
            (state == Some("firing".into()) && muted == Some(true.into()))
                .then_some(())
                .ok_or(format!("state={state:?} muted={muted:?}"))
        },
    )
    .await;
    always_for(
        Duration::from_secs(4),
        "Slack to hear nothing while silenced",
        async || match messages_about(&slack, "Backlog").len() {
            0 => Ok(()),
            n => Err(format!("{n} message(s) got through the silence")),
        },
    )
    .await;

    let list = run_cli(&["silence", "list", "--url", &url], daemon.dir());
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    let id = listed
        .split_whitespace()
        .next()
        .expect("a silence listed")
        .to_string();
    assert!(
        listed.contains("active") && listed.contains("maintenance"),
        "{listed}"
    );
    let out = run_cli(&["silence", "expire", "--url", &url, &id], daemon.dir());
    assert!(
        out.status.success(),
        "silence expire: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    eventually(
        Duration::from_secs(15),
        "the still-firing alert to reach Slack once the silence ended",
        async || match messages_about(&slack, "Backlog").len() {
            1 => Ok(()),
            n => Err(format!("{n} Backlog message(s)")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_inhibits_its_queue_alerts_and_sends_one_page() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let proxy = Proxy::start(management_url().trim_start_matches("http://")).await;
    let tuning = Tuning::default();
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_yaml("flaky", &proxy.url(), vhost.name(), &tuning)],
    ) + &alerting(&slack);
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", &rules(5))]).await;
    for q in ["q1", "q2", "q3"] {
        publish_n(&vhost.amqp_url(), q, 10).await;
    }
    eventually(
        Duration::from_secs(30),
        "three Backlog messages",
        async || match messages_about(&slack, "Backlog").len() {
            3 => Ok(()),
            n => Err(format!("{n}")),
        },
    )
    .await;

    proxy.set_down(true);
    eventually(
        Duration::from_secs(20),
        "one ClusterUnreachable page and the queue alerts muted",
        async || {
            let pages = messages_about(&slack, "ClusterUnreachable").len();
            let (_, alerts) = daemon.get_json("/api/v1/alerts").await?;
            let muted_queue_alerts = alerts["alerts"].as_array().map_or(0, |a| {
                a.iter()
                    .filter(|a| {
                        a["alertname"] == "Backlog" && a["muted"] == true && a["state"] == "firing"
                    })
                    .count()
            });
            (pages == 1 && muted_queue_alerts == 3)
                .then_some(())
                .ok_or(format!(
                    "pages={pages} muted firing queue alerts={muted_queue_alerts}"
                ))
        },
    )
    .await;
    // No storm: the queue alerts neither resolve nor repeat while the cluster is away.
    always_for(
        Duration::from_secs(4),
        "no queue notification during the outage",
        async || match messages_about(&slack, "Backlog").len() {
            3 => Ok(()),
            n => Err(format!("{n} Backlog messages (3 before the outage)")),
        },
    )
    .await;

    proxy.set_down(false);
    eventually(
        Duration::from_secs(20),
        "ClusterUnreachable resolved, queue alerts firing and unmuted",
        async || {
            let (_, alerts) = daemon.get_json("/api/v1/alerts").await?;
            let unreachable = alert_field(&alerts, "ClusterUnreachable", "state");
            let muted = alerts["alerts"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|a| a["muted"] == true).count());
            (unreachable == Some("resolved".into())
                && muted == 0
                && messages_about(&slack, "ClusterUnreachable").len() == 2)
                .then_some(())
                .ok_or(format!("ClusterUnreachable={unreachable:?} muted={muted}"))
        },
    )
    .await;
    assert_eq!(
        messages_about(&slack, "Backlog").len(),
        3,
        "queue alerts were not re-sent after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_rules_and_a_bad_file_keeps_the_running_config() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let config = config_for(vhost.name(), free_port(), &Tuning::default()) + &alerting(&slack);
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", &rules(100))]).await;
    publish_n(&vhost.amqp_url(), "orders", 10).await;
    eventually(
        Duration::from_secs(20),
        "the queue seen with 10 messages",
        async || {
            let m = daemon.metrics().await?;
            find(
                &m,
                "rabbitwatch_queue_messages_ready",
                &[("queue", "orders")],
            )
            .filter(|v| *v == 10.0)
            .ok_or("not yet".to_string())
        },
    )
    .await;
    assert!(
        messages_about(&slack, "Backlog").is_empty(),
        "10 messages are below the threshold of 100"
    );

    // A broken rule file: the reload is refused with the reason, the old rules keep running.
    std::fs::write(daemon.dir().join("rules.yaml"), "groups: [").expect("writing the broken rules");
    let (status, body) = daemon.post("/-/reload").await.expect("POST /-/reload");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("rules.yaml:1:"),
        "the reason names the file and line: {body}"
    );
    let m = daemon.metrics().await.expect("metrics");
    assert_eq!(
        find(&m, "rabbitwatch_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        find(&m, "rabbitwatch_up", &[]),
        Some(1.0),
        "monitoring goes on"
    );

    // A good one: the new threshold takes effect without a restart.
    std::fs::write(daemon.dir().join("rules.yaml"), rules(5)).expect("writing the new rules");
    let (status, body) = daemon.post("/-/reload").await.expect("POST /-/reload");
    assert_eq!(status, 200, "{body}");
    eventually(
        Duration::from_secs(20),
        "the reloaded rule to fire into Slack",
        async || match messages_about(&slack, "Backlog").len() {
            1 => Ok(()),
            n => Err(format!("{n}")),
        },
    )
    .await;
    let m = daemon.metrics().await.expect("metrics");
    assert_eq!(
        find(&m, "rabbitwatch_config_last_reload_successful", &[]),
        Some(1.0)
    );
}

#[test]
fn serving_beyond_loopback_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_for("any", free_port(), &Tuning::default())
        .replace("listen: 127.0.0.1:", "listen: 0.0.0.0:");
    let path = dir.path().join("rw.yaml");
    std::fs::write(&path, config).expect("writing the config");
    let out = run_cli(
        &["run", "--config", path.to_str().expect("utf-8 path")],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on non-loopback address")
            && stderr.contains("api_token_file"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_bodies_are_refused() {
    let vhost = TestVhost::create().await;
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;
    let huge = format!(
        r#"{{"matchers": ["queue={}"], "duration": "1h"}}"#,
        "x".repeat(100 * 1024)
    );
    let response = crate::util::http_client()
        .post(format!("{}/api/v1/silences", daemon.base_url()))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("POST /api/v1/silences");
    assert_eq!(response.status().as_u16(), 413);
    let (_, silences) = daemon
        .get_json("/api/v1/silences")
        .await
        .expect("GET silences");
    assert_eq!(
        silences["silences"].as_array().map(Vec::len),
        Some(0),
        "nothing was stored"
    );
}
