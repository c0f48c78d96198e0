//! Scalers (`scalers:`, DESIGN.md §5 "Scaling") on the real broker: the desired consumer count follows
//! the queue's own numbers and is exported and shown with its reason; in shadow mode nothing is sent,
//! in active mode a signed recommendation goes through the outbox to the autoscaler's webhook.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::util::{
    Daemon, TestVhost, Tuning, config_for, consume_at_rate, eventually, find, free_port,
    publish_at_rate, run_cli,
};
use crate::util_slack::{FakeHttp, Lasting, Mode};

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
        last["metrics"]["per_consumer_rate_source"], "configured",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_scaler_posts_a_signed_recommendation_through_the_outbox_and_keeps_its_sequence()
{
    let vhost = TestVhost::create().await;
    let autoscaler = FakeHttp::start().await;
    // The autoscaler is down for its first two attempts: the outbox retries (1 s, 3 s backoff).
    autoscaler.script(
        "/scale",
        &[(Mode::Status(503, "starting up"), Lasting::Times(2))],
        Mode::Ok,
    );
    let tuning = Tuning {
        poll_interval: "1s",
        window: "20s",
        ..Tuning::default()
    };
    let config = config_for(vhost.name(), free_port(), &tuning)
        + &format!(
            r#"receivers:
  - name: autoscaler
    webhook: {{ url: "{url}", hmac_secret_file: ./hmac.txt }}
route: {{ receiver: autoscaler }}
scalers:
  - name: orders-workers
    cluster: local
    vhost: "{vhost}"
    queue: orders
    per_consumer_rate: 10
    target_drain_time: 30s
    max: 20
    receiver: autoscaler
"#,
            url = autoscaler.url("/scale"),
            vhost = vhost.name()
        );
    let mut daemon = Daemon::start_with_files(&config, &[("hmac.txt", "scale-s3cret\n")]).await;
    let amqp = vhost.amqp_url();
    let consumer = consume_at_rate(&amqp, "orders", 10).await;
    let publisher = publish_at_rate(&amqp, "orders", 60).await;

    let delivered = eventually(
        Duration::from_secs(90),
        "the recommendation accepted by the autoscaler",
        async || {
            autoscaler
                .requests_to("/scale")
                .into_iter()
                .find(|r| r.accepted())
                .ok_or_else(|| format!("{} attempts so far", autoscaler.requests().len()))
        },
    )
    .await;
    publisher.stop().await;
    consumer.stop().await;

    let attempts = autoscaler.requests_to("/scale");
    assert!(
        attempts.len() >= 3,
        "two refused attempts, then the delivery: {}",
        attempts.len()
    );
    let key = delivered
        .header("idempotency-key")
        .expect("Idempotency-Key");
    assert!(
        attempts
            .iter()
            .all(|a| a.header("idempotency-key") == Some(key)),
        "every attempt carries the same Idempotency-Key"
    );
    let hex = delivered
        .header("x-rabbitwatch-signature")
        .and_then(|s| s.strip_prefix("sha256="))
        .expect("X-Rabbitwatch-Signature: sha256=<hex>");
    let mut mac = <Hmac<Sha256>>::new_from_slice(b"scale-s3cret").expect("key");
    mac.update(&delivered.body);
    mac.verify_slice(&hex::decode(hex).expect("hex"))
        .expect("the signature matches the body");

    // DESIGN.md §5's payload.
    let body = delivered.json();
    assert_eq!(body["version"], 1, "{body}");
    assert_eq!(body["scaler"], "orders-workers", "{body}");
    assert_eq!(body["vhost"], vhost.name(), "{body}");
    assert_eq!(body["queue"], "orders", "{body}");
    assert_eq!(body["direction"], "up", "{body}");
    assert_eq!(
        (body["min"].as_u64(), body["max"].as_u64()),
        (Some(1), Some(20))
    );
    assert!(
        body["desired"]
            .as_u64()
            .is_some_and(|d| (6..=20).contains(&d)),
        "{body}"
    );
    assert_eq!(body["sequence"], 1, "{body}");
    assert_eq!(body["idempotency_key"], key, "{body}");
    assert_eq!(body["metrics"]["per_consumer_rate"], 10.0, "{body}");
    assert!(
        body["metrics"]["publish_rate"]
            .as_f64()
            .is_some_and(|r| r > 40.0),
        "{body}"
    );
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );

    // The sequence (and the stabilisation history) survive a kill -9: the restarted daemon shows the
    // last recommendation at once, and sends nothing twice.
    daemon.kill9();
    daemon.restart().await;
    let (_, after) = daemon.get_json("/api/v1/scalers").await.expect("scalers");
    let s = scaler(&after, "orders-workers").expect("scaler");
    assert_eq!(s["last_recommendation"]["sequence"], 1, "{s}");
    assert_eq!(s["last_recommendation"]["idempotency_key"], key, "{s}");
    let accepted = autoscaler
        .requests_to("/scale")
        .iter()
        .filter(|r| r.accepted())
        .count();
    assert_eq!(accepted, 1, "delivered once");
}
