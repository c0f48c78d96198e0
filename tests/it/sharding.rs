//! `--shard i/n`: replicas given the same config split its clusters between them, each cluster
//! watched by exactly one, and `rabbitwatch check --shard` tells an operator the split beforehand.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::util::{
    Daemon, TestVhost, Tuning, cluster_yaml, config_with_clusters, eventually, free_port,
    management_url, publish_n, run_cli,
};

const CLUSTERS: [&str; 4] = ["east", "west", "north", "south"];

/// The clusters a `/metrics` text reports `rabbitwatch_up 1` for, and those it has queue series of.
fn watched(metrics: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let samples = crate::util::parse_metrics(metrics);
    let clusters_of = |name: &str, value: Option<f64>| -> BTreeSet<String> {
        samples
            .iter()
            .filter(|s| s.name == name && value.is_none_or(|v| s.value == v))
            .filter_map(|s| s.labels.get("cluster").cloned())
            .collect()
    };
    (
        clusters_of("rabbitwatch_up", Some(1.0)),
        clusters_of("rabbitwatch_queue_messages", None),
    )
}

/// The clusters `rabbitwatch check --shard` says a shard watches.
fn check_says(config_dir: &std::path::Path, shard: &str) -> BTreeSet<String> {
    let output = run_cli(
        &["check", "--config", "rabbitwatch.yaml", "--shard", shard],
        config_dir,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "check --shard {shard}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("shard {shard} watches: ")))
        .unwrap_or_else(|| panic!("check --shard {shard} printed no split: {stdout}"));
    let (mine, _) = line
        .split_once("; left to other shards:")
        .expect("the split line");
    mine.split(", ")
        .filter(|n| *n != "none")
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_split_the_clusters_between_them() {
    let vhost = TestVhost::create().await;
    publish_n(&vhost.amqp_url(), "orders", 2).await;
    let tuning = Tuning::default();
    let clusters: Vec<String> = CLUSTERS
        .iter()
        .map(|name| cluster_yaml(name, management_url(), vhost.name(), &tuning))
        .collect();
    let shards = ["0/2", "1/2"];
    let mut daemons = Vec::new();
    for shard in shards {
        let config = config_with_clusters(free_port(), &tuning, &clusters);
        daemons.push(Daemon::start_with_env(&config, &[], &[("RABBITWATCH_SHARD", shard)]).await);
    }

    let mut seen = Vec::new();
    for (daemon, shard) in daemons.iter().zip(shards) {
        let expected = check_says(daemon.dir(), shard);
        let got = eventually(
            Duration::from_secs(30),
            &format!("shard {shard} up and exporting queues for exactly {expected:?}"),
            async || {
                let (up, with_queues) = watched(&daemon.metrics_text().await?);
                (up == expected && with_queues == expected)
                    .then(|| up.clone())
                    .ok_or_else(|| format!("up for {up:?}, queue series for {with_queues:?}"))
            },
        )
        .await;
        assert!(!got.is_empty(), "shard {shard} took no cluster");
        seen.push(got);
    }
    assert!(
        seen[0].is_disjoint(&seen[1]),
        "a cluster watched twice: {seen:?}"
    );
    let all: BTreeSet<String> = seen.iter().flatten().cloned().collect();
    let configured: BTreeSet<String> = CLUSTERS.iter().map(|c| c.to_string()).collect();
    assert_eq!(all, configured, "every cluster watched by one shard");
}
