//! Scalers (`scalers:`, DESIGN.md §5 "Scaling") on the real broker, in shadow mode: the desired consumer
//! count follows the queue's own numbers, is exported and shown with its reason, and nothing is sent.

use std::time::Duration;

use serde_json::Value;

use crate::util::{
    Daemon, TestVhost, Tuning, config_for, consume_at_rate, eventually, find, free_port,
    publish_at_rate, run_cli,
};
use crate::util_slack::FakeHttp;

fn scaler<'a>(body: &'a Value, name: &str) -> Result<&'a Value, String> {
    body["scalers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .ok_or_else(|| format!("no scaler {name}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_fed_faster_than_drained_gets_a_shadow_scale_up_and_nothing_is_sent() {
    let vhost = TestVhost::create().await;
    let autoscaler = FakeHttp::start().await;
    let tuning = Tuning {
        poll_interval: "1s",
        window: "20s",
        ..Tuning::default()
    };
    let config = config_for(vhost.name(), free_port(), &tuning)
        + &format!(
            r#"receivers:
  - name: autoscaler
    webhook: {{ url: "{url}" }}
route: {{ receiver: autoscaler }}
scalers:
  - name: orders-workers
    cluster: local
    vhost: "{vhost}"
    queue: orders
    per_consumer_rate: 10
    target_drain_time: 30s
    min: 1
    max: 20
    receiver: autoscaler
    mode: shadow
  - name: ghost
    cluster: local
    vhost: "{vhost}"
    queue: not-declared
    per_consumer_rate: 10
    max: 20
    mode: shadow
"#,
            url = autoscaler.url("/scale"),
            vhost = vhost.name()
        );
    let daemon = Daemon::start(&config).await;
    let amqp = vhost.amqp_url();
    let consumer = consume_at_rate(&amqp, "orders", 10).await;
    let publisher = publish_at_rate(&amqp, "orders", 60).await;

    // 60/s in, one consumer at 10/s: at least 60/10 = 6 consumers, more for the backlog.
    let up = eventually(
        Duration::from_secs(60),
        "a scale-up recommendation for orders-workers",
        async || {
            let (_, body) = daemon.get_json("/api/v1/scalers").await?;
            let s = scaler(&body, "orders-workers")?;
            let last = &s["last_recommendation"];
            match last["direction"].as_str() {
                Some("up") => Ok(s.clone()),
                _ => Err(format!("{s}")),
            }
        },
    )
    .await;
    let last = &up["last_recommendation"];
    let desired = last["desired"].as_u64().expect("desired");
    assert!((6..=20).contains(&desired), "{up}");
    // The broker may still list the new consumer as 0 for a statistics interval: 0 or 1, never more.
    assert!(matches!(last["current"].as_u64(), Some(0 | 1)), "{up}");
    assert_eq!(
        last["inputs"]["per_consumer_rate_source"], "configured",
        "{up}"
    );
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("per consumer")),
        "the reason says what drove it: {up}"
    );

    let labels = [("scaler", "orders-workers"), ("queue", "orders")];
    let samples = eventually(
        Duration::from_secs(30),
        "desired >= 6 and the one consumer in /metrics",
        async || {
            let samples = daemon.metrics().await?;
            let desired = find(&samples, "rabbitwatch_scaler_desired_consumers", &labels);
            let current = find(&samples, "rabbitwatch_scaler_current_consumers", &labels);
            match (desired, current) {
                (Some(d), Some(c)) if d >= 6.0 && c == 1.0 => Ok(samples),
                other => Err(format!("(desired, current) = {other:?}")),
            }
        },
    )
    .await;
    let ups = find(
        &samples,
        "rabbitwatch_scaler_recommendations_total",
        &[("scaler", "orders-workers"), ("direction", "up")],
    );
    assert!(ups.is_some_and(|n| n >= 1.0), "{ups:?}");

    // A queue that is not there: held with its reason, and no desired count at all, never a 0.
    let (_, body) = daemon.get_json("/api/v1/scalers").await.expect("scalers");
    let ghost = scaler(&body, "ghost").expect("ghost");
    assert_eq!(
        ghost["last_decision"]["reason"], "queue_not_found",
        "{ghost}"
    );
    assert!(ghost["desired"].is_null(), "{ghost}");
    assert_eq!(
        find(
            &samples,
            "rabbitwatch_scaler_desired_consumers",
            &[("scaler", "ghost")]
        ),
        None
    );

    // `rabbitwatch status` lists the scalers below the queues, each with its decision.
    let config_path = daemon.config_path();
    let config_path = config_path.to_str().expect("utf-8 path").to_owned();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["status", "--config", &config_path], &std::env::temp_dir())
    })
    .await
    .expect("status ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no status row for {name}:\n{stdout}"))
            .to_owned()
    };
    // Right after the recommendation the next cycles hold for the cooldown.
    let workers = row("orders-workers");
    assert!(
        workers.contains("up to") || workers.contains("hold: cooldown"),
        "{stdout}"
    );
    assert!(row("ghost").contains("hold: queue_not_found"), "{stdout}");

    // Shadow mode: the autoscaler's webhook heard nothing.
    assert!(
        autoscaler.requests().is_empty(),
        "shadow mode sends nothing: {:?}",
        autoscaler.requests().len()
    );
    publisher.stop().await;
    consumer.stop().await;
}
