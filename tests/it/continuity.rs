//! Alert state across restarts: a pending `for` timer survives kill -9 exactly, and the alerts of a
//! cluster that left this daemon (removed from the config) resolve once, saying why, instead of
//! staying firing forever.

use std::time::Duration;

use serde_json::Value;

use crate::util::{
    Daemon, TestVhost, Tuning, always_for, cluster_yaml, config_with_clusters, eventually,
    free_port, management_url, publish_n,
};
use crate::util_slack::FakeHttp;

const HOOK: &str = "/hook";

fn config(port: u16, vhost: &TestVhost, cluster: &str, fake: &FakeHttp) -> String {
    let tuning = Tuning::default();
    config_with_clusters(
        port,
        &tuning,
        &[cluster_yaml(
            cluster,
            management_url(),
            vhost.name(),
            &tuning,
        )],
    ) + &format!(
        "rules: [rules.yaml]\nreceivers:\n  - name: hook\n    webhook: {{ url: \"{}\" }}\nroute: {{ receiver: hook, group_wait: 0s, group_interval: 1s }}\noutbox: {{ max_backoff: 2s }}\n",
        fake.url(HOOK)
    )
}

fn rule(for_: &str) -> String {
    format!(
        "groups:\n  - name: t\n    rules:\n      - alert: Backlog\n        scope: queue\n        expr: messages_ready > 5\n        for: {for_}\n"
    )
}

/// The one `Backlog` alert the API lists, if any.
async fn backlog(daemon: &Daemon) -> Result<Value, String> {
    let (_, body) = daemon.get_json("/api/v1/alerts").await?;
    body["alerts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["alertname"] == "Backlog").cloned())
        .ok_or(format!("no Backlog alert: {body}"))
}

/// (cluster, status, resolved_reason) of every alert the hook was told about.
fn told(fake: &FakeHttp) -> Vec<(String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    fake.requests_to(HOOK)
        .iter()
        .filter(|r| r.accepted())
        .flat_map(|r| {
            r.json()["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|a| {
                    (
                        s(&a["labels"]["cluster"]),
                        s(&a["status"]),
                        s(&a["annotations"]["resolved_reason"]),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_for_timer_survives_kill_9_exactly() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    let cfg = config(free_port(), &vhost, "local", &fake);
    let mut daemon = Daemon::start_with_files(&cfg, &[("rules.yaml", &rule("60s"))]).await;
    publish_n(&vhost.amqp_url(), "orders", 10).await;
    let since = eventually(Duration::from_secs(30), "the alert pending", async || {
        let a = backlog(&daemon).await?;
        (a["state"] == "pending")
            .then(|| a["active_since"].as_i64())
            .flatten()
            .ok_or(format!("{a}"))
    })
    .await;
    // 30 s into the 60 s `for`, the daemon dies without a chance to write anything.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64
    };
    tokio::time::sleep(Duration::from_millis(
        (since + 30_000 - now_ms()).max(0) as u64
    ))
    .await;
    daemon.kill9();
    daemon.restart().await;
    let fired = eventually(Duration::from_secs(60), "the alert firing", async || {
        let a = backlog(&daemon).await?;
        (a["state"] == "firing")
            .then_some(a.clone())
            .ok_or(format!("{a}"))
    })
    .await;
    assert_eq!(
        fired["active_since"].as_i64(),
        Some(since),
        "the incident's start survived: {fired}"
    );
    let after = (fired["fired_at"].as_i64().expect("fired_at") - since) as f64 / 1000.0;
    assert!(
        (59.0..66.0).contains(&after),
        "fired {after:.1} s after it became pending: the `for` timer must neither restart (90 s) nor be skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_of_a_cluster_removed_from_the_config_resolve_once_with_the_reason() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    let port = free_port();
    let mut daemon = Daemon::start_with_files(
        &config(port, &vhost, "old", &fake),
        &[("rules.yaml", &rule("0s"))],
    )
    .await;
    publish_n(&vhost.amqp_url(), "orders", 10).await;
    eventually(
        Duration::from_secs(30),
        "the old cluster's alert sent",
        async || {
            let t = told(&fake);
            t.iter()
                .any(|(c, s, _)| c == "old" && s == "firing")
                .then_some(())
                .ok_or(format!("{t:?}"))
        },
    )
    .await;
    daemon.kill9();
    // The same broker, now under another name: `old` is gone from the config.
    std::fs::write(daemon.config_path(), config(port, &vhost, "new", &fake)).expect("rewriting");
    daemon.restart().await;
    let resolved_old = |t: &[(String, String, String)]| -> Vec<String> {
        t.iter()
            .filter(|(c, s, _)| c == "old" && s == "resolved")
            .map(|(_, _, why)| why.clone())
            .collect()
    };
    eventually(
        Duration::from_secs(30),
        "the old cluster's alert resolved",
        async || {
            let t = told(&fake);
            (!resolved_old(&t).is_empty())
                .then_some(())
                .ok_or(format!("{t:?}"))
        },
    )
    .await;
    always_for(Duration::from_secs(5), "one resolve only", async || {
        let why = resolved_old(&told(&fake));
        (why.len() == 1).then_some(()).ok_or(format!("{why:?}"))
    })
    .await;
    let why = &resolved_old(&told(&fake))[0];
    assert!(
        why.contains("cluster \"old\" is no longer watched by this daemon"),
        "{why}"
    );
    let old = backlog(&daemon).await;
    eventually(
        Duration::from_secs(30),
        "the new cluster's own alert",
        async || {
            let t = told(&fake);
            t.iter()
                .any(|(c, s, _)| c == "new" && s == "firing")
                .then_some(())
                .ok_or(format!("{t:?} {old:?}"))
        },
    )
    .await;
}
