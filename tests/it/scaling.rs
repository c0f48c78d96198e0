//! Scalers (`scalers:`, docs/scaling.md) on the real broker: the desired consumer count follows
//! the queue's own numbers and is exported and shown with its reason; in shadow mode nothing is sent,
//! in active mode a signed recommendation goes through the outbox to the autoscaler's webhook.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::util::{
    CLUSTER, Daemon, TestVhost, Tuning, cluster_yaml, config_for, config_with_clusters,
    consume_at_rate, eventually, find, free_port, publish_at_rate, publish_n, run_cli,
};
use crate::util_broker::PrivateBroker;
use crate::util_faults::{Fault as FaultKind, FaultyApi, On};
use crate::util_slack::{FakeHttp, Lasting, Mode};

/// 1 s polls and a 20 s window: scalers decide on a full window within seconds.
const TUNING: Tuning = Tuning {
    poll_interval: "1s",
    window: "20s",
    page_size: 500,
};

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
    let tuning = TUNING;
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
    let tuning = TUNING;
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

    // docs/scaling.md's payload.
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

/// An example program (`examples/NAME.rs`), built by `cargo build --examples` (scripts/test does).
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/it-… → target/<profile>/examples/NAME
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` first (scripts/test does)",
        path.display()
    );
    path
}

/// A child process killed when the test ends, however it ends.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn autoscaler_status(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    let response = client
        .get(format!("{url}/status"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    response.json().await.map_err(|e| e.to_string())
}

/// The queue's ready messages as the daemon last saw them.
async fn ready(daemon: &Daemon, vhost: &str, queue: &str) -> Result<u64, String> {
    let (_, body) = daemon
        .get_json(&format!("/api/v1/queues?vhost={vhost}"))
        .await?;
    body["queues"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["queue"] == queue))
        .and_then(|r| r["messages_ready"].as_u64())
        .ok_or_else(|| format!("no {queue} yet: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_autoscaler_driven_by_rabbitwatch_drains_the_backlog_and_returns_to_min() {
    let vhost = TestVhost::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("hmac.txt");
    std::fs::write(&secret, "loop-s3cret\n").expect("writing the secret");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _autoscaler = Process(
        std::process::Command::new(example("autoscaler"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--amqp", &vhost.amqp_url(), "--queue", "work"])
            .args(["--rate", "10", "--min", "1"])
            .arg("--hmac-secret-file")
            .arg(&secret)
            .spawn()
            .expect("starting the reference autoscaler"),
    );
    let client = crate::util::http_client();
    eventually(
        Duration::from_secs(20),
        "the autoscaler up with 1 consumer",
        async || {
            let s = autoscaler_status(&client, &url).await?;
            (s["consumers"] == 1).then_some(()).ok_or(format!("{s}"))
        },
    )
    .await;

    // It answers like a real one: a body whose signature does not verify is refused, nothing applied.
    let forged = client
        .post(format!("{url}/scale"))
        .header("X-Rabbitwatch-Signature", "sha256=00")
        .body(r#"{"queue":"work","desired":10,"sequence":99}"#)
        .send()
        .await
        .expect("posting a forged recommendation");
    assert_eq!(forged.status().as_u16(), 401);

    let tuning = TUNING;
    let config = config_for(vhost.name(), free_port(), &tuning)
        + &format!(
            r#"receivers:
  - name: autoscaler
    webhook: {{ url: "{url}/scale", hmac_secret_file: "{secret}" }}
route: {{ receiver: autoscaler }}
scalers:
  - name: work-workers
    cluster: local
    vhost: "{vhost}"
    queue: work
    per_consumer_rate: 10
    target_drain_time: 20s
    min: 1
    max: 10
    scale_down_stabilization: 15s
    cooldown: 10s
    receiver: autoscaler
"#,
            secret = secret.display(),
            vhost = vhost.name()
        );
    let daemon = Daemon::start(&config).await;
    let started = std::time::Instant::now();
    let publisher = publish_at_rate(&vhost.amqp_url(), "work", 60).await;

    // 60/s in, 10/s per consumer: rabbitwatch asks for at least 6, the autoscaler starts them.
    eventually(
        Duration::from_secs(60),
        "at least 6 consumers running",
        async || {
            let s = autoscaler_status(&client, &url).await?;
            (s["consumers"].as_u64() >= Some(6))
                .then_some(())
                .ok_or(format!("{s}"))
        },
    )
    .await;
    let scaled_up = started.elapsed();
    // The backlog built up meanwhile drains within target_drain_time + 2 polls + the stabilisation.
    eventually(
        // target_drain_time + 2 polls + scale_down_stabilization.
        Duration::from_secs(20 + 2 + 15),
        "the backlog drained",
        async || {
            let n = ready(&daemon, vhost.name(), "work").await?;
            (n < 60).then_some(()).ok_or(format!("{n} ready"))
        },
    )
    .await;
    let drained = started.elapsed();
    publisher.stop().await;

    // Nothing published: after the window forgets the rate and the stabilisation has passed, back to min.
    eventually(Duration::from_secs(120), "back to 1 consumer", async || {
        let s = autoscaler_status(&client, &url).await?;
        (s["consumers"] == 1).then_some(()).ok_or(format!("{s}"))
    })
    .await;
    let total = started.elapsed();
    let s = autoscaler_status(&client, &url).await.expect("status");
    eprintln!(
        "closed loop: scaled up after {scaled_up:?}, drained after {drained:?}, back to min after {total:?}: {s}"
    );
    // No flapping: a cooldown of 10 s allows at most one recommendation per direction per 10 s, and
    // a loop that settles makes far fewer. Every one was signed right (the forged one is the refusal).
    let calls = s["applied"].as_u64().unwrap_or(0) + s["superseded"].as_u64().unwrap_or(0);
    let bound = 2 * (total.as_secs() / 10 + 1);
    assert!(calls >= 2, "at least one up and one down: {s}");
    assert!(
        calls <= bound,
        "{calls} webhook calls in {total:?} (bound {bound}): {s}"
    );
    assert_eq!(s["refused"], 1, "only the forged request was refused: {s}");

    // A late delivery of an old recommendation (a retry overtaken by newer ones) is not applied.
    let stale = br#"{"queue":"work","desired":9,"sequence":1,"direction":"up"}"#;
    let mut mac = <Hmac<Sha256>>::new_from_slice(b"loop-s3cret").expect("key");
    mac.update(stale);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let answer: Value = client
        .post(format!("{url}/scale"))
        .header("X-Rabbitwatch-Signature", signature)
        .body(stale.to_vec())
        .send()
        .await
        .expect("posting a stale recommendation")
        .json()
        .await
        .expect("a JSON answer");
    assert_eq!(answer["applied"], false, "{answer}");
    let s = autoscaler_status(&client, &url).await.expect("status");
    assert_eq!(
        s["consumers"], 1,
        "the stale recommendation changed nothing: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bursty_queue_its_consumers_absorb_gets_no_recommendation() {
    // 150 messages every 10 s (15/s on average, 150/s for an instant) and two consumers at 10/s each:
    // the backlog comes and goes, the consumers keep up. An instantaneous rate would scale up at
    // every burst; rabbitwatch judges the window and holds.
    // The window holds four bursts: with only two, the regression slope of two steps reads anywhere
    // from a third to all of the mean inflow depending on where the steps fall (seen at 5.4/s of 15/s
    // on a loaded machine), and a scale-down would be the right answer to what it saw.
    let vhost = TestVhost::create().await;
    let tuning = Tuning {
        window: "40s",
        ..TUNING
    };
    let config = config_for(vhost.name(), free_port(), &tuning)
        + &format!(
            r#"scalers:
  - {{ name: bursty, cluster: local, vhost: "{vhost}", queue: bursts, per_consumer_rate: 10, max: 20, scale_down_stabilization: 15s, mode: shadow }}
"#,
            vhost = vhost.name()
        );
    let daemon = Daemon::start(&config).await;
    let amqp = vhost.amqp_url();
    let first = consume_at_rate(&amqp, "bursts", 10).await;
    let second = consume_at_rate(&amqp, "bursts", 10).await;
    let bursts = {
        let amqp = amqp.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                publish_n(&amqp, "bursts", 150).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
    };
    // Until the window is full the scaler holds for insufficient data; then it must keep holding.
    let mut holds = std::collections::BTreeMap::<String, u32>::new();
    let mut max_ready = 0;
    let until = std::time::Instant::now() + Duration::from_secs(85);
    while std::time::Instant::now() < until {
        let (_, body) = daemon.get_json("/api/v1/scalers").await.expect("scalers");
        let s = scaler(&body, "bursty").expect("scaler").clone();
        assert!(
            s["last_recommendation"].is_null(),
            "a burst the consumers absorb must not be scaled for: {s}"
        );
        if let Some(reason) = s["last_decision"]["reason"].as_str() {
            *holds.entry(reason.to_owned()).or_default() += 1;
        }
        if let Ok(n) = ready(&daemon, vhost.name(), "bursts").await {
            max_ready = max_ready.max(n);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bursts.await.expect("bursts");
    first.stop().await;
    second.stop().await;
    // The broker samples depths every 5 s, so the peaks are mostly missed; some backlog is seen.
    assert!(
        max_ready >= 20,
        "the bursts did build a backlog (max {max_ready} ready)"
    );
    assert!(
        holds.get("within_tolerance").is_some_and(|n| *n >= 10),
        "the scaler decided (held within tolerance) once its window was full: {holds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_sends_nothing_until_it_is_back() {
    let vhost = TestVhost::create().await;
    let api = FaultyApi::start().await;
    let autoscaler = FakeHttp::start().await;
    let tuning = TUNING;
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_yaml(CLUSTER, &api.url(), vhost.name(), &tuning)],
    ) + &format!(
        r#"receivers:
  - name: autoscaler
    webhook: {{ url: "{url}" }}
route: {{ receiver: autoscaler }}
scalers:
  - {{ name: w, cluster: local, vhost: "{vhost}", queue: orders, per_consumer_rate: 10, max: 20, cooldown: 1s, receiver: autoscaler }}
"#,
        url = autoscaler.url("/scale"),
        vhost = vhost.name()
    );
    let daemon = Daemon::start(&config).await;
    let amqp = vhost.amqp_url();
    let consumer = consume_at_rate(&amqp, "orders", 10).await;
    let publisher = publish_at_rate(&amqp, "orders", 60).await;
    eventually(
        Duration::from_secs(60),
        "a first recommendation delivered",
        async || {
            (autoscaler
                .requests_to("/scale")
                .iter()
                .any(|r| r.accepted()))
            .then_some(())
            .ok_or("none yet".to_owned())
        },
    )
    .await;

    // The management API goes away while the queue keeps growing: hold, say why, send nothing.
    api.fail(On::path("/api"), FaultKind::Status(503));
    let held = eventually(
        Duration::from_secs(20),
        "a hold for the unreachable cluster",
        async || {
            let (_, body) = daemon.get_json("/api/v1/scalers").await?;
            let s = scaler(&body, "w")?.clone();
            (s["last_decision"]["reason"] == "cluster_unreachable")
                .then_some(s.clone())
                .ok_or(format!("{s}"))
        },
    )
    .await;
    assert!(
        held["desired"].is_null(),
        "no desired count while unknown: {held}"
    );
    // What was recommended before the outage may still be on its way; nothing newer may follow.
    let last_before = held["last_recommendation"]["sequence"]
        .as_u64()
        .expect("a recommendation before the outage");
    let ups_before = held["recommendations_up"].as_u64();
    tokio::time::sleep(Duration::from_secs(8)).await; // a stretch of time, not a condition
    let samples = daemon.metrics().await.expect("metrics");
    assert_eq!(
        find(
            &samples,
            "rabbitwatch_scaler_desired_consumers",
            &[("scaler", "w")]
        ),
        None,
        "the desired gauge is absent, not 0, while the cluster is unreachable"
    );
    let (_, body) = daemon.get_json("/api/v1/scalers").await.expect("scalers");
    let during = scaler(&body, "w").expect("scaler").clone();
    assert_eq!(
        during["last_decision"]["reason"], "cluster_unreachable",
        "{during}"
    );
    assert_eq!(
        during["recommendations_up"].as_u64(),
        ups_before,
        "no recommendation while the cluster was unreachable: {during}"
    );
    let newest_sent = autoscaler
        .requests_to("/scale")
        .iter()
        .filter_map(|r| r.json()["sequence"].as_u64())
        .max();
    assert!(
        newest_sent <= Some(last_before),
        "nothing newer than sequence {last_before} sent while the cluster was unreachable: {newest_sent:?}"
    );

    // Back: figures again, decisions again.
    api.heal();
    eventually(
        Duration::from_secs(30),
        "decisions on fresh figures again",
        async || {
            let (_, body) = daemon.get_json("/api/v1/scalers").await?;
            let s = scaler(&body, "w")?.clone();
            (s["desired"].as_u64().is_some())
                .then_some(())
                .ok_or(format!("{s}"))
        },
    )
    .await;
    publisher.stop().await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_without_message_statistics_holds_with_its_reason() {
    if crate::util::runs_on_private_node_only() {
        return;
    }
    // A node that keeps no message rates (`management.rates_mode = none`): depths only. A scaler that
    // must learn the per-consumer rate has nothing to learn it from: it holds and says so, exports no
    // desired count and sends nothing; never a 0.
    let broker = PrivateBroker::start_with("management.rates_mode = none").await;
    broker.declare_durable_queue("orders").await;
    broker.publish_persistent("orders", 50).await;
    let autoscaler = FakeHttp::start().await;
    let tuning = TUNING;
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_yaml(
            CLUSTER,
            &broker.management_url(),
            "/",
            &tuning,
        )],
    ) + &format!(
        r#"receivers:
  - name: autoscaler
    webhook: {{ url: "{url}" }}
route: {{ receiver: autoscaler }}
scalers:
  - {{ name: learned, cluster: local, vhost: /, queue: orders, max: 20, receiver: autoscaler }}
"#,
        url = autoscaler.url("/scale")
    );
    let daemon = Daemon::start(&config).await;
    let held = eventually(Duration::from_secs(60), "a depth-only hold", async || {
        let (_, body) = daemon.get_json("/api/v1/scalers").await?;
        let s = scaler(&body, "learned")?.clone();
        (s["last_decision"]["reason"] == "depth_only_needs_per_consumer_rate")
            .then_some(s.clone())
            .ok_or(format!("{s}"))
    })
    .await;
    assert!(held["desired"].is_null(), "{held}");
    assert!(
        held["last_decision"]["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "the hold says why in words: {held}"
    );
    let samples = daemon.metrics().await.expect("metrics");
    assert_eq!(
        find(
            &samples,
            "rabbitwatch_scaler_desired_consumers",
            &[("scaler", "learned")]
        ),
        None
    );
    assert!(autoscaler.requests().is_empty(), "nothing sent");
}
