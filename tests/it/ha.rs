//! High availability through Alertmanager (docs/ha.md): two rabbitwatch replicas with the same
//! config forward to a real two-peer Alertmanager cluster; one incident on the real broker is one
//! notification and one resolve at Alertmanager's receiver, whichever replica or peer dies meanwhile.

use std::time::Duration;

use crate::util::{
    Daemon, TestVhost, Tuning, always_for, cluster_yaml, config_with_clusters, delete_queue,
    eventually, free_port, management_url, publish_n,
};
use crate::util_alertmanager::start_cluster;
use crate::util_slack::FakeHttp;

const HOOK: &str = "/am";

/// (status, alertnames) of every notification Alertmanager sent the hook.
fn notifications(fake: &FakeHttp) -> Vec<(String, Vec<String>)> {
    fake.requests_to(HOOK)
        .iter()
        .map(|r| {
            let body = r.json();
            let names = body["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|a| a["labels"]["alertname"].as_str().unwrap_or("?").to_owned())
                .collect();
            (body["status"].as_str().unwrap_or("?").to_owned(), names)
        })
        .collect()
}

fn count(fake: &FakeHttp, status: &str) -> usize {
    notifications(fake)
        .iter()
        .filter(|(s, names)| s == status && names.iter().any(|n| n == "Backlog"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_two_alertmanager_peers_page_once_whoever_dies() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    let mut peers = start_cluster(2, fake.url(HOOK).as_str()).await;
    let urls: Vec<String> = peers.iter().map(|p| format!("\"{}\"", p.url())).collect();
    let tuning = Tuning::default();
    let rules = "groups:\n  - name: t\n    rules:\n      - alert: Backlog\n        scope: queue\n        expr: messages_ready > 5\n        labels: { severity: warning }\n        annotations: { summary: \"{{ queue }} backs up\" }\n";
    // The same config for both replicas but for the port each serves on.
    let config = |port: u16| {
        config_with_clusters(
            port,
            &tuning,
            &[cluster_yaml(
                "local",
                management_url(),
                vhost.name(),
                &tuning,
            )],
        ) + &format!(
            "rules: [rules.yaml]\nreceivers:\n  - name: am\n    alertmanager: {{ urls: [{}], resend_interval: 2s }}\nroute: {{ receiver: am }}\n",
            urls.join(", ")
        )
    };
    let mut a = Daemon::start_with_files(&config(free_port()), &[("rules.yaml", rules)]).await;
    let b = Daemon::start_with_files(&config(free_port()), &[("rules.yaml", rules)]).await;

    publish_n(&vhost.amqp_url(), "orders", 10).await;
    eventually(
        Duration::from_secs(60),
        "one firing notification",
        async || match count(&fake, "firing") {
            0 => Err(format!("notifications: {:?}", notifications(&fake))),
            _ => Ok(()),
        },
    )
    .await;
    // Both replicas fire and re-send every 2 s; Alertmanager's peers dedupe all of it. The peers
    // share what they sent by gossip: a peer killed before its notification log reached the other
    // is Alertmanager's at-least-once case, so the incident first settles as one notification.
    always_for(
        Duration::from_secs(5),
        "one firing notification",
        async || match count(&fake, "firing") {
            1 => Ok(()),
            n => Err(format!("{n}: {:?}", notifications(&fake))),
        },
    )
    .await;
    a.kill9();
    peers[0].kill();
    always_for(
        Duration::from_secs(8),
        "no second notification after a replica and a peer died",
        async || match (count(&fake, "firing"), count(&fake, "resolved")) {
            (1, 0) => Ok(()),
            other => Err(format!("{other:?}: {:?}", notifications(&fake))),
        },
    )
    .await;

    delete_queue(&vhost.amqp_url(), "orders").await;
    eventually(
        Duration::from_secs(60),
        "one resolve",
        async || match count(&fake, "resolved") {
            0 => Err(format!("notifications: {:?}", notifications(&fake))),
            _ => Ok(()),
        },
    )
    .await;
    always_for(Duration::from_secs(5), "nothing more", async || {
        match (count(&fake, "firing"), count(&fake, "resolved")) {
            (1, 1) => Ok(()),
            other => Err(format!("{other:?}: {:?}", notifications(&fake))),
        }
    })
    .await;
    let (_, status) = b.get_json("/api/v1/status").await.expect("status");
    assert!(status["clusters"][0]["up"] == true, "{status}");
}
