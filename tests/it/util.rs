//! The harness every integration test stands on: a private vhost on the local broker, AMQP traffic at
//! known rates, the daemon as a child process with its logs kept for failures, and a strict parser for
//! the Prometheus text it exposes.
//!
//! Helpers panic on setup failures (a vhost that cannot be created, a broker that refuses a queue): the
//! test could not say anything meaningful past that point. Observations of the daemon return
//! `Result<_, String>` instead, so `eventually` can retry them and report the last reason it saw.

#![allow(dead_code)] // not every test uses every helper

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Which broker the broker-facing tests run against: RabbitMQ 3.10 (the host's, the default) or
/// RabbitMQ 4.0 (`RABBITWATCH_TEST_BROKER=rabbitmq4`, started by `scripts/rabbitmq4`). A parameter of
/// these helpers rather than a copy of each test: every test that reaches the broker through them runs on
/// whichever one the suite was started with.
pub fn on_rabbitmq4() -> bool {
    std::env::var("RABBITWATCH_TEST_BROKER").is_ok_and(|v| v == "rabbitmq4")
}

/// For the tests that run on a private RabbitMQ 3.10 node (tests/it/util_broker.rs): they do not use
/// the suite's broker, so the RabbitMQ 4.0 pass would only run them a second time on 3.10. Says so and
/// returns true there.
pub fn runs_on_private_node_only() -> bool {
    if on_rabbitmq4() {
        eprintln!(
            "skipped in the RabbitMQ 4.0 pass: this test runs on a private RabbitMQ 3.10 node (stop_app, alarms, rates_mode), which the 3.10 pass already covers"
        );
    }
    on_rabbitmq4()
}

/// The test broker's AMQP `host:port`.
pub fn amqp_addr() -> &'static str {
    if on_rabbitmq4() {
        "127.0.0.1:5673"
    } else {
        "127.0.0.1:5672"
    }
}

/// The test broker's stream-protocol `host:port` (the `rabbitmq_stream` plugin).
pub fn stream_addr() -> &'static str {
    if on_rabbitmq4() {
        "127.0.0.1:5553"
    } else {
        "127.0.0.1:5552"
    }
}

/// The test broker's management API base URL.
pub fn management_url() -> &'static str {
    if on_rabbitmq4() {
        "http://127.0.0.1:15673"
    } else {
        "http://127.0.0.1:15672"
    }
}
const USERNAME: &str = "guest";
const PASSWORD: &str = "guest";
/// The name `config_for` gives its one cluster.
pub const CLUSTER: &str = "local";
const POLL_EVERY: Duration = Duration::from_millis(500);

pub fn http_client() -> reqwest::Client {
    // reqwest is built without a crypto provider; the daemon installs ring, so do the tests.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building an HTTP client")
}

pub fn encode(segment: &str) -> String {
    utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string()
}

pub async fn management(
    client: &reqwest::Client,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(), String> {
    let mut request = client
        .request(method.clone(), format!("{}{path}", management_url()))
        .basic_auth(USERNAME, Some(PASSWORD));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err(format!("{method} {path}: {status}: {text}"))
}

// ---------------------------------------------------------------------------------------------------
// A vhost of one's own

/// `GET` on the shared broker's management API, as JSON.
pub async fn management_get(path: &str) -> Result<serde_json::Value, String> {
    let response = http_client()
        .get(format!("{}{path}", management_url()))
        .basic_auth(USERNAME, Some(PASSWORD))
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!("GET {path}: {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("GET {path}: {e}: {text}"))
}

/// A uniquely named vhost that only this test uses; deleted, with everything in it, when dropped.
pub struct TestVhost {
    name: String,
}

impl TestVhost {
    pub async fn create() -> TestVhost {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let vhost = TestVhost {
            name: format!(
                "rw-test-{}-{}-{:08x}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                fastrand::u32(..)
            ),
        };
        let client = http_client();
        let path = encode(&vhost.name);
        management(&client, Method::PUT, &format!("/api/vhosts/{path}"), None)
            .await
            .unwrap_or_else(|e| panic!("creating the test vhost: {e}"));
        let everything = serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"});
        management(
            &client,
            Method::PUT,
            &format!("/api/permissions/{path}/{USERNAME}"),
            Some(everything),
        )
        .await
        .unwrap_or_else(|e| panic!("granting {USERNAME} the test vhost: {e}"));
        vhost
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn amqp_url(&self) -> String {
        format!(
            "amqp://{USERNAME}:{PASSWORD}@{}/{}",
            amqp_addr(),
            encode(&self.name)
        )
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let path = format!("/api/vhosts/{}", encode(&self.name));
        // Drop usually runs on the test's runtime, which must not block on a future; a thread with a
        // runtime of its own may, and joining it keeps the delete from outliving the test.
        let deleted = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("building a runtime: {e}"))?
                .block_on(management(&http_client(), Method::DELETE, &path, None))
        })
        .join();
        match deleted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: leaving vhost {:?} behind: {e}", self.name),
            Err(_) => eprintln!(
                "warning: leaving vhost {:?} behind: delete panicked",
                self.name
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// AMQP traffic

async fn connect(amqp_url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to {amqp_url}: {e}"));
    let channel = connection
        .create_channel()
        .await
        .unwrap_or_else(|e| panic!("opening a channel on {amqp_url}: {e}"));
    (connection, channel)
}

async fn close(connection: &Connection) {
    // Best effort: the broker requeues whatever was unacked either way.
    let _ = connection.close(200, "done".into()).await;
}

/// Declares a plain (non-durable, non-exclusive) queue, as every helper here does, so they agree; a
/// queue named `quorum.*` is declared a quorum queue and one named `stream.*` a stream (durable,
/// `x-queue-type: quorum` or `stream`), so the same helpers drive quorum queues and streams.
async fn declare_on(channel: &Channel, queue: &str) {
    let kind = ["quorum", "stream"]
        .into_iter()
        .find(|k| queue.starts_with(&format!("{k}.")));
    let (options, arguments) = if let Some(kind) = kind {
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        (options, arguments)
    } else {
        (QueueDeclareOptions::default(), FieldTable::default())
    };
    channel
        .queue_declare(queue.into(), options, arguments)
        .await
        .unwrap_or_else(|e| panic!("declaring queue {queue:?}: {e}"));
}

pub async fn declare_queue(amqp_url: &str, queue: &str) {
    declare_queues(amqp_url, &[queue]).await;
}

/// Declares many queues over one channel, one after another.
pub async fn declare_queues(amqp_url: &str, queues: &[impl AsRef<str>]) {
    let (connection, channel) = connect(amqp_url).await;
    for queue in queues {
        declare_on(&channel, queue.as_ref()).await;
    }
    close(&connection).await;
}

pub async fn delete_queue(amqp_url: &str, queue: &str) {
    let (connection, channel) = connect(amqp_url).await;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("deleting queue {queue:?}: {e}"));
    close(&connection).await;
}

/// Declares `queue` and publishes `n` messages to it, returning once the broker confirmed them all.
pub async fn publish_n(amqp_url: &str, queue: &str, n: usize) {
    let (connection, channel) = connect(amqp_url).await;
    declare_on(&channel, queue).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("enabling publisher confirms: {e}"));
    for _ in 0..n {
        publish_on(&channel, queue)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    channel
        .wait_for_confirms()
        .await
        .unwrap_or_else(|e| panic!("waiting for confirms on {queue:?}: {e}"));
    close(&connection).await;
}

/// Declares each of `queues` and publishes `n` messages to each, all over one channel, returning once
/// the broker confirmed them all: many queues filling at about the same moment.
pub async fn publish_n_each(amqp_url: &str, queues: &[impl AsRef<str>], n: usize) {
    let (connection, channel) = connect(amqp_url).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("enabling publisher confirms: {e}"));
    for queue in queues {
        declare_on(&channel, queue.as_ref()).await;
    }
    for queue in queues {
        for _ in 0..n {
            publish_on(&channel, queue.as_ref())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    channel
        .wait_for_confirms()
        .await
        .unwrap_or_else(|e| panic!("waiting for confirms: {e}"));
    close(&connection).await;
}

async fn publish_on(channel: &Channel, queue: &str) -> Result<(), String> {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"rabbitwatch test message",
            BasicProperties::default(),
        )
        .await
        .map(drop)
        .map_err(|e| format!("publishing to {queue:?}: {e}"))
}

/// One tick per message at `per_second`.
fn pacer(per_second: u32) -> tokio::time::Interval {
    let mut pacer = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
    // After a stall, `Burst` would catch up all at once, a spike the daemon rightly reports as a rate far
    // above the one the test means; `Delay` keeps the spacing and loses only the stalled time.
    pacer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    pacer
}

/// Starts consuming `queue` on `channel`; deliveries arrive on the returned receiver. The `Consumer`
/// must be kept alive: dropping it cancels the subscription.
async fn subscribe(
    channel: &Channel,
    queue: &str,
) -> (Consumer, mpsc::UnboundedReceiver<DeliveryResult>) {
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(), // the broker picks the tag
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("consuming from {queue:?}: {e}"));
    let (sender, receiver) = mpsc::unbounded_channel();
    consumer.set_delegate(move |delivery: DeliveryResult| {
        let _ = sender.send(delivery);
        std::future::ready(())
    });
    (consumer, receiver)
}

/// What a delivery stream yields next: a message, or why there are no more.
fn next_message(delivery: Option<DeliveryResult>, queue: &str) -> Result<Option<Delivery>, String> {
    match delivery {
        Some(Ok(Some(delivery))) => Ok(Some(delivery)),
        // The broker cancelled the consumer (its queue was deleted): the traffic simply ends.
        Some(Ok(None)) | None => Ok(None),
        Some(Err(e)) => Err(format!("consuming from {queue:?}: {e}")),
    }
}

/// A background AMQP client. It stops when dropped (its stop channel closes) or on `stop()`, which also
/// waits for it to finish and fails the test if it broke along the way.
pub struct Traffic {
    what: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), String>>,
    count: Arc<AtomicU64>,
}

impl Traffic {
    fn spawn<F>(
        what: String,
        body: impl FnOnce(oneshot::Receiver<()>, Arc<AtomicU64>) -> F,
    ) -> Traffic
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let count = Arc::new(AtomicU64::new(0));
        let body = body(stopped, Arc::clone(&count));
        let label = what.clone();
        let task = tokio::spawn(async move {
            let outcome = body.await;
            if let Err(e) = &outcome {
                // Said at once: a test that waits for rates would otherwise only time out.
                eprintln!("{label} failed: {e}");
            }
            outcome
        });
        Traffic {
            what,
            stop,
            task,
            count,
        }
    }

    /// Messages handled so far: published, acked, or held, depending on the kind of traffic.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops the traffic, waits for its connection to close, and returns how many messages it handled.
    pub async fn stop(self) -> u64 {
        let Traffic {
            what,
            stop,
            task,
            count,
        } = self;
        drop(stop);
        match task.await {
            Ok(Ok(())) => count.load(Ordering::Relaxed),
            Ok(Err(e)) => panic!("{what} failed: {e}"),
            Err(e) => panic!("{what} panicked: {e}"),
        }
    }
}

/// Declares `queue` and publishes to it through the default exchange at a steady `per_second`.
pub async fn publish_at_rate(amqp_url: &str, queue: &str, per_second: u32) -> Traffic {
    let (connection, channel) = connect(amqp_url).await;
    declare_on(&channel, queue).await;
    let queue = queue.to_owned();
    Traffic::spawn(
        format!("publisher to {queue:?} at {per_second}/s"),
        move |mut stopped, published| async move {
            let mut pacer = pacer(per_second);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = pacer.tick() => {}
                }
                publish_on(&channel, &queue).await?;
                published.fetch_add(1, Ordering::Relaxed);
            }
            close(&connection).await;
            Ok(())
        },
    )
}

/// Declares `queue` and consumes from it with prefetch 1, acking at a steady `per_second`.
pub async fn consume_at_rate(amqp_url: &str, queue: &str, per_second: u32) -> Traffic {
    paced_consumer(amqp_url, queue, per_second, false).await
}

/// A consumer with prefetch 1 that settles one delivery per tick at `per_second`: acks it, or rejects
/// it with `requeue` (the broker redelivers it). Counts the deliveries settled.
async fn paced_consumer(amqp_url: &str, queue: &str, per_second: u32, requeue: bool) -> Traffic {
    let (connection, channel) = connect(amqp_url).await;
    declare_on(&channel, queue).await;
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap_or_else(|e| panic!("setting prefetch 1: {e}"));
    let (consumer, mut deliveries) = subscribe(&channel, queue).await;
    let queue = queue.to_owned();
    let what = if requeue { "requeueing from" } else { "of" };
    Traffic::spawn(
        format!("consumer {what} {queue:?} at {per_second}/s"),
        move |mut stopped, settled| async move {
            let _subscription = consumer;
            let mut pacer = pacer(per_second);
            loop {
                let delivery = tokio::select! {
                    _ = &mut stopped => break,
                    delivery = deliveries.recv() => delivery,
                };
                let Some(delivery) = next_message(delivery, &queue)? else {
                    break;
                };
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = pacer.tick() => {}
                }
                if requeue {
                    delivery
                        .reject(lapin::options::BasicRejectOptions { requeue: true })
                        .await
                        .map_err(|e| format!("rejecting on {queue:?}: {e}"))?;
                } else {
                    delivery
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(|e| format!("acking on {queue:?}: {e}"))?;
                }
                settled.fetch_add(1, Ordering::Relaxed);
            }
            close(&connection).await;
            Ok(())
        },
    )
}

/// Declares `queue` and attaches a consumer with `prefetch` that receives messages and never acks them
/// while the handle lives: a stuck consumer. The broker requeues them when the handle stops.
pub async fn hold_unacked(amqp_url: &str, queue: &str, prefetch: u16) -> Traffic {
    let (connection, channel) = connect(amqp_url).await;
    declare_on(&channel, queue).await;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap_or_else(|e| panic!("setting prefetch {prefetch}: {e}"));
    let (consumer, mut deliveries) = subscribe(&channel, queue).await;
    let queue = queue.to_owned();
    Traffic::spawn(
        format!("consumer holding {prefetch} unacked on {queue:?}"),
        move |mut stopped, held_count| async move {
            let _subscription = consumer;
            let mut held = Vec::new();
            loop {
                let delivery = tokio::select! {
                    _ = &mut stopped => break,
                    delivery = deliveries.recv() => delivery,
                };
                let Some(delivery) = next_message(delivery, &queue)? else {
                    break;
                };
                held.push(delivery);
                held_count.fetch_add(1, Ordering::Relaxed);
            }
            close(&connection).await;
            drop(held);
            Ok(())
        },
    )
}

/// One connection with a consumer on each of `queues` (declared if absent), each holding up to
/// `prefetch` messages unacked: the worker fleet of one deployment. `crash` takes them all away at
/// once, as a deployment that dies does; the broker requeues what they held.
pub struct Fleet {
    connection: Connection,
    _consumers: Vec<Consumer>,
}

pub async fn consumers_on_each(amqp_url: &str, queues: &[impl AsRef<str>], prefetch: u16) -> Fleet {
    let (connection, channel) = connect(amqp_url).await;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap_or_else(|e| panic!("setting prefetch {prefetch}: {e}"));
    let mut consumers = Vec::new();
    for queue in queues {
        declare_on(&channel, queue.as_ref()).await;
        let consumer = channel
            .basic_consume(
                queue.as_ref().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("consuming from {:?}: {e}", queue.as_ref()));
        // Deliveries are received and never acked: the broker sends `prefetch` and waits.
        consumer.set_delegate(|_: DeliveryResult| std::future::ready(()));
        consumers.push(consumer);
    }
    Fleet {
        connection,
        _consumers: consumers,
    }
}

impl Fleet {
    /// Every consumer gone in one go (the connection closes), their messages back to ready.
    pub async fn crash(self) {
        close(&self.connection).await;
    }
}

/// Purges each of `queues` over one channel.
pub async fn purge_each(amqp_url: &str, queues: &[impl AsRef<str>]) {
    let (connection, channel) = connect(amqp_url).await;
    for queue in queues {
        channel
            .queue_purge(queue.as_ref().into(), Default::default())
            .await
            .unwrap_or_else(|e| panic!("purging {:?}: {e}", queue.as_ref()));
    }
    close(&connection).await;
}

// ---------------------------------------------------------------------------------------------------
// The daemon

/// Knobs of the generated config; the defaults are what most tests want.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub poll_interval: &'static str,
    pub window: &'static str,
    pub page_size: u32,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            poll_interval: "1s",
            window: "30s",
            page_size: 500,
        }
    }
}

/// A config watching exactly `vhost` on the local broker as cluster `local` (`CLUSTER`), serving on
/// `port`. The state path is relative: `Daemon::start` runs the daemon inside its own temp dir.
pub fn config_for(vhost: &str, port: u16, tuning: &Tuning) -> String {
    config_with_clusters(
        port,
        tuning,
        &[cluster_yaml(CLUSTER, management_url(), vhost, tuning)],
    )
}

/// A config with the given entries (from `cluster_yaml`) under `clusters:`.
pub fn config_with_clusters(port: u16, tuning: &Tuning, clusters: &[String]) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:{port}\nstate:\n  path: ./state\nclusters:\n{}analysis:\n  window: {}\n",
        clusters.concat(),
        tuning.window
    )
}

/// One `clusters:` entry watching only `vhost` (matched exactly) at `url`.
pub fn cluster_yaml(name: &str, url: &str, vhost: &str, tuning: &Tuning) -> String {
    // Single-quoted YAML: the escaped regex is full of backslashes, which double quotes would interpret.
    let include = format!("^{}$", regex::escape(vhost)).replace('\'', "''");
    // In the RabbitMQ 4.0 pass, a cluster read straight from the broker (not through a test's
    // proxy) is told where both nodes' Prometheus plugins listen, so `source: auto` reads them: the
    // 3.10 pass covers the management source, the 4.0 pass the prometheus source.
    let plugin = if on_rabbitmq4() && RABBITMQ4_MANAGEMENT_URLS.contains(&url) {
        "    prometheus: { urls: [http://127.0.0.1:15694, http://127.0.0.1:15695] }\n"
    } else {
        ""
    };
    format!(
        "  - name: {name}\n    url: {url}\n    username: {USERNAME}\n    password: {PASSWORD}\n    poll_interval: {}\n    timeout: 5s\n    page_size: {}\n    vhosts: {{ include: '{include}' }}\n{plugin}",
        tuning.poll_interval, tuning.page_size
    )
}

/// The management APIs of scripts/rabbitmq4's two nodes.
const RABBITMQ4_MANAGEMENT_URLS: [&str; 2] = ["http://127.0.0.1:15673", "http://127.0.0.1:15674"];

/// A rule file's text with every rule's `for:` set to `d` (`5s`): a test shows the incident firing
/// within seconds instead of waiting out the shipped `for`.
pub fn with_short_for(rules: &str, d: &str) -> String {
    let re = regex::Regex::new(r"(?m)^(\s+)for: \S+$").expect("a regex");
    re.replace_all(rules, format!("${{1}}for: {d}"))
        .into_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("finding a free port")
        .port()
}

/// The daemon binary, running `run --config` on a config of the test's making, in a temp dir that also
/// holds its state and its stdout/stderr. Killed when dropped; when a test fails, the tail of its logs is
/// printed and the temp dir is kept for inspection.
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    base_url: String,
    http: reqwest::Client,
    /// Extra environment variables (e.g. `RABBITWATCH_FAULT`), kept for restarts.
    env: Vec<(String, String)>,
}

const LOG_FILES: [&str; 2] = ["stdout.log", "stderr.log"];
const CONFIG_FILE: &str = "rabbitwatch.yaml";

/// `rabbitwatch run` on the config in `dir`, inside `dir`, its output appended to the log files there.
fn spawn_daemon(dir: &Path, env: &[(String, String)]) -> Child {
    let log = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .expect("opening a log file")
    };
    Command::new(env!("CARGO_BIN_EXE_rabbitwatch"))
        .arg("run")
        .arg("--config")
        .arg(dir.join(CONFIG_FILE))
        .current_dir(dir)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,rabbitwatch=debug".to_owned()),
        )
        .env("NO_COLOR", "1") // the logs are read as plain text
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log(LOG_FILES[0]))
        .stderr(log(LOG_FILES[1]))
        .spawn()
        .expect("spawning the daemon")
}

impl Daemon {
    /// Starts the daemon and returns once `/healthz` answers 200.
    pub async fn start(config_yaml: &str) -> Daemon {
        Daemon::start_with_files(config_yaml, &[]).await
    }

    /// Like `start`, with `files` (name, contents) written beside the config first: rule files,
    /// secrets, anything the config names by a relative path.
    pub async fn start_with_files(config_yaml: &str, files: &[(&str, &str)]) -> Daemon {
        Daemon::start_with_env(config_yaml, files, &[]).await
    }

    /// Like `start_with_files`, with extra environment variables for the daemon.
    pub async fn start_with_env(
        config_yaml: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut daemon = Daemon::spawn_with_env(config_yaml, files, env);
        daemon.wait_until_healthy(Duration::from_secs(60)).await;
        daemon
    }

    /// The temp dir holding the config, the files written beside it, the state and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL, as a crash or the OOM killer would: no shutdown code runs, nothing is flushed.
    /// Returns once the process is gone.
    pub fn kill9(&mut self) {
        // On Unix `Child::kill` is SIGKILL.
        self.child.kill().expect("sending SIGKILL to the daemon");
        self.child.wait().expect("reaping the daemon");
    }

    /// Starts the daemon again on the same config and state dir after it stopped (e.g. `kill9`),
    /// and returns once `/healthz` answers 200. Its logs are appended to the first run's.
    pub async fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "restart needs the daemon stopped first"
        );
        self.child = spawn_daemon(self.dir.path(), &self.env);
        self.wait_until_healthy(Duration::from_secs(60)).await;
    }

    async fn wait_until_healthy(&mut self, within: Duration) {
        let give_up = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the daemon exited ({status}) before /healthz answered");
            }
            let last = match self.get("/healthz").await {
                Ok((200, _)) => return,
                Ok((status, body)) => format!("{status}: {body}"),
                Err(e) => e,
            };
            assert!(
                Instant::now() < give_up,
                "/healthz did not answer 200 within {within:?}; last: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `within` for the daemon to exit by itself and returns its exit status; panics
    /// if it is still running then.
    pub async fn wait_for_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let give_up = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the daemon") {
                return status;
            }
            assert!(
                Instant::now() < give_up,
                "the daemon was still running after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything the daemon logged so far (stderr).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG_FILES[1])).unwrap_or_default()
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The running daemon's process id (for reading `/proc/<pid>` beside what it reports).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET `path`, returning the status code and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        self.request(reqwest::Method::GET, path).await
    }

    /// POST to `path` without a body, returning the status code and body.
    pub async fn post(&self, path: &str) -> Result<(u16, String), String> {
        self.request(reqwest::Method::POST, path).await
    }

    async fn request(&self, method: reqwest::Method, path: &str) -> Result<(u16, String), String> {
        let url = format!("{}{path}", self.base_url);
        let response = self
            .http
            .request(method.clone(), &url)
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        Ok((status, body))
    }

    /// GET `path` and parse the body as JSON, whatever the status.
    pub async fn get_json(&self, path: &str) -> Result<(u16, serde_json::Value), String> {
        let (status, body) = self.get(path).await?;
        let json = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path} answered {status} with non-JSON ({e}): {body}"))?;
        Ok((status, json))
    }

    pub async fn metrics_text(&self) -> Result<String, String> {
        match self.get("/metrics").await? {
            (200, body) => Ok(body),
            (status, body) => Err(format!("/metrics answered {status}: {body}")),
        }
    }

    /// `/metrics`, parsed; panics if the exposition is malformed.
    pub async fn metrics(&self) -> Result<Vec<Sample>, String> {
        Ok(parse_metrics(&self.metrics_text().await?))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("daemon files kept in {}", self.dir.path().display());
            for name in LOG_FILES {
                eprintln!("----- daemon {name}, last 100 lines -----");
                eprintln!("{}", tail(&self.dir.path().join(name), 100));
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Runs the daemon binary to completion with `args`, in `dir`.
pub fn run_cli(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rabbitwatch"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running the rabbitwatch binary")
}

// ---------------------------------------------------------------------------------------------------
// Waiting

/// Polls `check` every 500 ms until it returns `Ok`, and returns that value; after `deadline`, panics
/// naming `what` was awaited and the last reason `check` gave.
pub async fn eventually<T>(
    deadline: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let give_up = Instant::now() + deadline;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(reason) => reason,
        };
        assert!(
            Instant::now() < give_up,
            "waited {deadline:?} for {what}; last observation: {last}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls `check` every 500 ms for `period`, and panics, naming `what` must hold, the first time it
/// returns `Err`.
pub async fn always_for(
    period: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        if let Err(reason) = check().await {
            panic!("expected {what} throughout {period:?}, but: {reason}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

// ---------------------------------------------------------------------------------------------------
// Prometheus text format

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition (0.0.4, and the OpenMetrics subset a daemon would emit) into
/// samples. Strict on purpose: a malformed line panics with its number and text, since a broken
/// exposition is a failure in itself, not something to wait out.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(index, line)| {
            parse_sample(line).unwrap_or_else(|e| {
                panic!("/metrics line {} is malformed ({e}): {line:?}", index + 1)
            })
        })
        .collect()
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or("no value after the metric name")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(after_brace) => parse_labels(after_brace)?,
        None => (BTreeMap::new(), &line[name_end..]),
    };
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<f64>()
            .map_err(|_| format!("invalid timestamp {timestamp:?}"))?;
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the value"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `name="value",...}` (the opening brace already consumed) and returns the text after `}`.
fn parse_labels(mut rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let equals = rest.find('=').ok_or("label without '='")?;
        let name = rest[..equals].trim();
        if !is_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        rest = rest[equals + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("value of label {name:?} is not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let closing_quote = loop {
            match chars.next() {
                None => return Err(format!("value of label {name:?} is unterminated")),
                Some((at, '"')) => break at,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => {
                        return Err(format!(
                            "invalid escape \\{:?} in label {name:?}",
                            other.map(|(_, c)| c)
                        ));
                    }
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name:?} appears twice"));
        }
        rest = rest[closing_quote + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name:?}"));
        }
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse()
            .map_err(|_| format!("invalid sample value {text:?}")),
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The value of the first sample called `name` whose labels include all of `labels`.
/// Whether `observed` is within `tolerance` (a fraction) of `expected`.
pub fn near(observed: f64, expected: f64, tolerance: f64) -> bool {
    (observed - expected).abs() <= expected * tolerance
}

pub fn find(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| sample.name == name && has_labels(sample, labels))
        .map(|sample| sample.value)
}

pub fn has_labels(sample: &Sample, labels: &[(&str, &str)]) -> bool {
    labels
        .iter()
        .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
}

/// The status whose `rabbitwatch_queue_status` series is 1 for the series matching `labels`, if any.
/// Panics if more than one is: a queue has exactly one status at a time.
pub fn queue_status(samples: &[Sample], labels: &[(&str, &str)]) -> Option<String> {
    let current: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "rabbitwatch_queue_status" && s.value == 1.0 && has_labels(s, labels))
        .filter_map(|s| s.labels.get("status").map(String::as_str))
        .collect();
    assert!(
        current.len() <= 1,
        "{labels:?} has several statuses at 1: {current:?}"
    );
    current.first().map(|status| (*status).to_owned())
}

// The parser is tested too: `hostile_queue_name_is_escaped_in_metrics` trusts it to reject a broken exposition.
mod parser_tests {
    use super::*;

    #[test]
    fn parses_escaped_label_values_special_values_and_timestamps() {
        let text = "# HELP m help\n# TYPE m gauge\n\
                    m{a=\"x\\\\y\",b=\"say \\\"hi\\\"\\nbye\",} 1.5 1700000000000\n\
                    m_total 3\nm{a=\"inf\"} +Inf\nm{a=\"ninf\"} -Inf\nm{a=\"nan\"} NaN\n# EOF\n";
        let samples = parse_metrics(text);
        assert_eq!(samples.len(), 5);
        assert_eq!(samples[0].labels["a"], "x\\y");
        assert_eq!(samples[0].labels["b"], "say \"hi\"\nbye");
        assert_eq!(samples[0].value, 1.5);
        assert_eq!(find(&samples, "m_total", &[]), Some(3.0));
        assert_eq!(find(&samples, "m", &[("a", "inf")]), Some(f64::INFINITY));
        assert_eq!(
            find(&samples, "m", &[("a", "ninf")]),
            Some(f64::NEG_INFINITY)
        );
        assert!(find(&samples, "m", &[("a", "nan")]).is_some_and(f64::is_nan));
    }

    #[test]
    #[should_panic(expected = "malformed")]
    fn rejects_a_label_value_broken_by_a_raw_newline() {
        parse_metrics("m{queue=\"evil\n{x=\"1\"} 1\n");
    }

    #[test]
    #[should_panic(expected = "malformed")]
    fn rejects_an_unknown_escape() {
        parse_metrics("m{queue=\"a\\tb\"} 1\n");
    }
}

// ---------------------------------------------------------------------------------------------------
// More traffic, and more ways to reach the daemon

/// Declares `queue` and consumes from it with prefetch 1, rejecting every delivery with `requeue` at
/// a steady `per_second`: a consumer that cannot handle its messages and puts them straight back, so
/// the broker redelivers them (a hot requeue loop). Counts the rejections.
pub async fn requeue_at_rate(amqp_url: &str, queue: &str, per_second: u32) -> Traffic {
    paced_consumer(amqp_url, queue, per_second, true).await
}

impl Daemon {
    /// The config file the daemon runs on (`run --config` this path); rewriting it and sending
    /// `SIGHUP` is how an operator changes rules without a restart.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join(CONFIG_FILE)
    }

    /// Sends `signal` (e.g. `"HUP"`) to the daemon with kill(1), as an operator or a supervisor's
    /// reload hook would.
    pub fn send_signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill -{signal}: {e}"));
        assert!(status.success(), "kill -{signal} failed: {status}");
    }
}

impl Daemon {
    /// Like `start_with_files`, but returns as soon as the process is spawned, without waiting for
    /// `/healthz`: for tests about what the daemon does while it is still starting. `until_healthy`
    /// then waits for it.
    pub fn spawn_with_files(config_yaml: &str, files: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_with_env(config_yaml, files, &[])
    }

    /// Writes the config and `files` into a temp dir of their own and spawns the daemon there.
    fn spawn_with_env(config_yaml: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Daemon {
        let listen = regex::Regex::new(r"(?m)^\s+listen:\s*(\S+)\s*$")
            .expect("a valid regex")
            .captures(config_yaml)
            .map(|found| found[1].to_owned())
            .expect("the config sets server.listen");
        let dir = tempfile::Builder::new()
            .prefix("rabbitwatch-it-")
            .tempdir()
            .expect("creating the daemon's temp dir");
        std::fs::write(dir.path().join(CONFIG_FILE), config_yaml).expect("writing the config");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents)
                .unwrap_or_else(|e| panic!("writing {name} beside the config: {e}"));
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = spawn_daemon(dir.path(), &env);
        Daemon {
            child,
            dir,
            base_url: format!("http://{listen}"),
            http: http_client(),
            env,
        }
    }

    /// Waits up to `within` for `/healthz` to answer 200; panics if the daemon exits first.
    pub async fn until_healthy(&mut self, within: Duration) {
        self.wait_until_healthy(within).await;
    }
}
