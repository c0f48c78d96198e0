//! The incident benchmark (issue "Signal quality"): real-broker incidents and healthy look-alikes, each in
//! a vhost of its own, watched by one rabbitwatch daemon with the default config and the default rule
//! pack, its notifications written by a `log` receiver. Prints, per scenario, what paged and how long
//! after the incident began, then recall, false pages and time to page overall.
//!
//! ```text
//! scripts/incidents                      # builds, runs (~9 minutes), prints the table
//! cargo run --example incidents -- --daemon target/debug/rabbitwatch [--observe 420] [--warmup 90]
//! ```
//!
//! Every scenario runs healthy traffic for `--warmup` seconds, then its incident (or, for a look-alike,
//! its healthy-but-alarming pattern) begins at the same instant for all, and the daemon is watched for
//! `--observe` seconds more. Time to page is from that instant to the first firing notification naming
//! the scenario's vhost. Needs the local RabbitMQ (guest/guest, AMQP 5672, management 15672).
//!
//! One incident, publishers blocked by a memory alarm, would block every scenario on the shared broker,
//! so it runs on a RabbitMQ node of the benchmark's own (the installed package run under another node
//! name, on free ports, in a temp dir), which the daemon watches as a second cluster with a canary.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

const MANAGEMENT: &str = "http://127.0.0.1:15672";
const AMQP: &str = "127.0.0.1:5672";
/// The daemon's name for the private node; its scenario's pages are the ones naming this cluster
/// (a node alarm names a node, not a vhost).
const PRIVATE_CLUSTER: &str = "private";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Incident,
    LookAlike,
}

/// Where a scenario runs: a vhost of its own on the shared broker, or the default vhost of the private
/// node (for an incident that would hit every vhost of its node).
#[derive(Clone, Copy, PartialEq)]
enum Broker {
    Shared,
    Private,
}

struct Scenario {
    name: &'static str,
    kind: Kind,
    broker: Broker,
    /// Alerts that are the right page for this incident (empty for look-alikes).
    right: &'static [&'static str],
    what: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "backlog-growing",
        kind: Kind::Incident,
        broker: Broker::Shared,
        right: &["QueueBacklogGrowing", "QueueDrainTooSlow"],
        what: "publishers go from 20/s to 40/s, consumers stay at 20/s",
    },
    Scenario {
        name: "consumers-gone",
        kind: Kind::Incident,
        broker: Broker::Shared,
        right: &["QueueNoConsumers", "QueueBacklogGrowing"],
        what: "20/s in and out, then every consumer goes away; publishing goes on",
    },
    Scenario {
        name: "stuck-consumer",
        kind: Kind::Incident,
        broker: Broker::Shared,
        right: &["QueueConsumersStalled", "QueueBacklogGrowing"],
        what: "the consumer stops acking and holds its prefetch of 50; 10/s keep arriving",
    },
    Scenario {
        name: "requeue-loop",
        kind: Kind::Incident,
        broker: Broker::Shared,
        right: &["QueueHotRequeueLoop"],
        what: "the consumer starts rejecting with requeue at 50/s instead of acking (10/s in)",
    },
    Scenario {
        name: "dlq-filling",
        kind: Kind::Incident,
        broker: Broker::Shared,
        right: &["DeadLetterQueueReceiving"],
        what: "the consumer starts rejecting without requeue: orders.failed (a dead-letter target, no 'dlq' in its name) fills at 10/s",
    },
    Scenario {
        name: "slow-consumer-slo",
        kind: Kind::Incident,
        broker: Broker::Shared,
        right: &["QueueDrainTooSlow", "QueueBacklogGrowing"],
        what: "10,000 messages land on a queue draining at 2/s net (22/s out, 20/s in): an hour and more to drain",
    },
    Scenario {
        name: "publishers-blocked",
        kind: Kind::Incident,
        broker: Broker::Private,
        right: &["NodeMemoryAlarm", "CanaryFailing"],
        what: "20/s in and out on a node of its own, then a memory alarm (`set_vm_memory_high_watermark 0`) blocks every publisher: nothing arrives",
    },
    Scenario {
        name: "steady",
        kind: Kind::LookAlike,
        broker: Broker::Shared,
        right: &[],
        what: "20/s in and out throughout",
    },
    Scenario {
        name: "bursty-absorbed",
        kind: Kind::LookAlike,
        broker: Broker::Shared,
        right: &[],
        what: "bursts of 300 every 20 s into a 30/s consumer",
    },
    Scenario {
        name: "idle",
        kind: Kind::LookAlike,
        broker: Broker::Shared,
        right: &[],
        what: "empty queues, one with an idle consumer",
    },
    Scenario {
        name: "deploy-restart",
        kind: Kind::LookAlike,
        broker: Broker::Shared,
        right: &[],
        what: "20/s; consumers gone for 20 s (a deploy), then back at 40/s until drained",
    },
    Scenario {
        name: "batch-job",
        kind: Kind::LookAlike,
        broker: Broker::Shared,
        right: &[],
        what: "3,000 messages at once every 3 minutes into a 50/s consumer",
    },
];

struct Args {
    daemon: String,
    warmup: u64,
    observe: u64,
    rules: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        daemon: "target/debug/rabbitwatch".into(),
        warmup: 90,
        observe: 420,
        rules: format!("{}/rules/*.yaml", env!("CARGO_MANIFEST_DIR")),
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let secs = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: seconds, not {v:?}"))
        };
        match flag.as_str() {
            "--daemon" => a.daemon = value,
            "--warmup" => a.warmup = secs(&value)?,
            "--observe" => a.observe = secs(&value)?,
            "--rules" => a.rules = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn management(method: reqwest::Method, path: &str, body: Option<serde_json::Value>) {
    let mut r = reqwest::Client::new()
        .request(method.clone(), format!("{MANAGEMENT}{path}"))
        .basic_auth("guest", Some("guest"));
    if let Some(b) = body {
        r = r.json(&b);
    }
    match r.send().await {
        Ok(resp) if resp.status().is_success() => {}
        Ok(resp) => eprintln!("{method} {path}: {}", resp.status()),
        Err(e) => eprintln!("{method} {path}: {e}"),
    }
}

/// The AMQP URL of `vhost` on the broker at `host_port`.
fn amqp_url(host_port: &str, vhost: &str) -> String {
    format!("amqp://guest:guest@{host_port}/{}", encode(vhost))
}

async fn channel(url: &str) -> (Connection, Channel) {
    let c = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    let ch = c.create_channel().await.expect("a channel");
    (c, ch)
}

/// Closes its connection when dropped.
struct ClosedOnDrop(Option<Connection>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            tokio::spawn(async move {
                let _ = conn.close(200, "consumer stopped".into()).await;
            });
        }
    }
}

async fn declare(ch: &Channel, queue: &str, args: FieldTable) {
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap_or_else(|e| panic!("declaring {queue}: {e}"));
}

fn pacer(per_second: u32) -> tokio::time::Interval {
    let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second.max(1))));
    t.set_missed_tick_behavior(MissedTickBehavior::Burst);
    t
}

/// Publishes to `queue` at `per_second` until aborted.
fn publish(ch: Channel, queue: &'static str, per_second: u32) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = pacer(per_second);
        loop {
            every.tick().await;
            if ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    b"m",
                    BasicProperties::default(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

async fn publish_now(ch: &Channel, queue: &str, n: usize) {
    for _ in 0..n {
        let _ = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b"m",
                BasicProperties::default(),
            )
            .await;
    }
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Reject,
    /// Receive up to the prefetch, settle nothing.
    Hold,
}

/// A consumer on its own channel settling at `per_second` until aborted (the channel closes with it).
async fn consume(
    url: &str,
    queue: &'static str,
    per_second: u32,
    settle: Settle,
    prefetch: u16,
) -> JoinHandle<()> {
    let (conn, ch) = channel(url).await;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let (tx, mut rx) = mpsc::unbounded_channel();
    consumer.set_delegate(move |d: DeliveryResult| {
        let _ = tx.send(d);
        std::future::ready(())
    });
    tokio::spawn(async move {
        // Stopping the consumer (aborting this task) must take it off the queue, as a consumer
        // process exiting does: lapin keeps a dropped connection open, which would leave the
        // consumer attached, holding its prefetch.
        let _keep = (ClosedOnDrop(Some(conn)), consumer);
        let mut every = pacer(per_second);
        while let Some(Ok(Some(d))) = rx.recv().await {
            match settle {
                Settle::Hold => continue,
                Settle::Ack => {
                    every.tick().await;
                    let _ = d.ack(BasicAckOptions::default()).await;
                }
                Settle::Requeue => {
                    every.tick().await;
                    let _ = d.reject(BasicRejectOptions { requeue: true }).await;
                }
                Settle::Reject => {
                    every.tick().await;
                    let _ = d.reject(BasicRejectOptions { requeue: false }).await;
                }
            }
        }
    })
}

/// Runs one scenario: healthy until `t0`, its pattern after, until `end`.
/// `node` is the private node, for a scenario that runs on it.
async fn run(
    s: &'static Scenario,
    url: String,
    node: Option<Arc<PrivateNode>>,
    t0: tokio::time::Instant,
    end: tokio::time::Instant,
) {
    let (_conn, ch) = channel(&url).await;
    let q = "orders";
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    match s.name {
        "dlq-filling" => {
            ch.exchange_declare(
                "orders.dlx".into(),
                lapin::ExchangeKind::Fanout,
                Default::default(),
                FieldTable::default(),
            )
            .await
            .expect("dlx");
            declare(&ch, "orders.failed", FieldTable::default()).await;
            ch.queue_bind(
                "orders.failed".into(),
                "orders.dlx".into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
            let mut args = FieldTable::default();
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("orders.dlx".into()),
            );
            declare(&ch, q, args).await;
        }
        "idle" => {
            for name in ["idle.a", "idle.b", "idle.c"] {
                declare(&ch, name, FieldTable::default()).await;
            }
            tasks.push(consume(&url, "idle.c", 10, Settle::Ack, 10).await);
            tokio::time::sleep_until(end).await;
            return;
        }
        _ => declare(&ch, q, FieldTable::default()).await,
    }
    let base = match s.name {
        "bursty-absorbed" => 30,
        "batch-job" => 50,
        "slow-consumer-slo" => 22,
        _ => 20,
    };
    let inflow = match s.name {
        "stuck-consumer" | "requeue-loop" | "dlq-filling" => 10,
        "bursty-absorbed" | "batch-job" => 0,
        _ => 20,
    };
    let publisher = (inflow > 0).then(|| publish(ch.clone(), q, inflow));
    let mut consumer = Some(
        consume(
            &url,
            q,
            if inflow == 10 { 10 } else { base },
            Settle::Ack,
            1,
        )
        .await,
    );
    let bursts = |every: Duration, n: usize, from: tokio::time::Instant| {
        let ch = ch.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval_at(from, every);
            loop {
                t.tick().await;
                publish_now(&ch, q, n).await;
            }
        })
    };
    if s.name == "bursty-absorbed" {
        tasks.push(bursts(
            Duration::from_secs(20),
            300,
            tokio::time::Instant::now(),
        ));
    }
    tokio::time::sleep_until(t0).await;
    match s.name {
        "backlog-growing" => tasks.push(publish(ch.clone(), q, 20)),
        "consumers-gone" => {
            if let Some(c) = consumer.take() {
                c.abort();
            }
        }
        "stuck-consumer" => {
            if let Some(c) = consumer.take() {
                c.abort();
            }
            tasks.push(consume(&url, q, 1, Settle::Hold, 50).await);
        }
        "requeue-loop" => {
            if let Some(c) = consumer.take() {
                c.abort();
            }
            tasks.push(consume(&url, q, 50, Settle::Requeue, 1).await);
        }
        "dlq-filling" => {
            if let Some(c) = consumer.take() {
                c.abort();
            }
            tasks.push(consume(&url, q, 10, Settle::Reject, 1).await);
        }
        "slow-consumer-slo" => publish_now(&ch, q, 10_000).await,
        "publishers-blocked" => match node.as_deref().map(PrivateNode::block_publishers) {
            Some(blocking) => match blocking.await {
                Ok(after) => eprintln!(
                    "{}: memory alarm raised; the publisher's connection was blocked {:.0} s later",
                    s.name,
                    after.as_secs_f64()
                ),
                Err(e) => eprintln!("{}: {e}", s.name),
            },
            None => eprintln!("{}: no private node", s.name),
        },
        "deploy-restart" => {
            if let Some(c) = consumer.take() {
                c.abort();
            }
            tokio::time::sleep(Duration::from_secs(20)).await;
            consumer = Some(consume(&url, q, 40, Settle::Ack, 1).await);
        }
        "batch-job" => tasks.push(bursts(
            Duration::from_secs(180),
            3000,
            tokio::time::Instant::now(),
        )),
        _ => {}
    }
    tokio::time::sleep_until(end).await;
    if let (Some(node), "publishers-blocked") = (&node, s.name)
        && let Err(e) = node.unblock_publishers().await
    {
        eprintln!("{}: lifting the memory alarm: {e}", s.name);
    }
    for t in tasks.into_iter().chain(consumer).chain(publisher) {
        t.abort();
    }
}

/// The Debian package's scripts that run a node directly (the `/usr/sbin` wrappers switch to the
/// `rabbitmq` user, whose HOME holds the shared broker's Erlang cookie).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// Run as `sh -c KEEPER rabbitmq-server DIR` in a process group of its own (a ctrl-c at the terminal
/// does not reach it): starts the node in a session of its own, waits for its stdin to close (the
/// `PrivateNode` dropped, or the benchmark gone however it went), then kills the node's session, the
/// Erlang VM and its helpers, and removes the node's directory.
const KEEPER: &str = r#"setsid "$0" & read -r _ || true; kill -KILL -"$!"; wait; rm -rf "$1""#;

/// A RabbitMQ node of the benchmark's own, for the incident the shared broker must not suffer: an alarm
/// blocks every publisher on its node. Everything the node needs to know (node name, ports, files) is in
/// its own `rabbitmq-env.conf`, which `rabbitmqctl` reads too, so two variables point both at it.
/// (tests/it/util_broker.rs starts such nodes for the integration tests, with more on offer for them.)
struct PrivateNode {
    name: String,
    dir: PathBuf,
    amqp_port: u16,
    management_port: u16,
    keeper: std::process::Child,
    /// Its closing tells the keeper to stop the node.
    lifeline: Option<std::process::ChildStdin>,
}

impl PrivateNode {
    /// Boots a node with the management plugin; returns once its API answers.
    async fn start() -> Result<PrivateNode, String> {
        let dir = tempfile::Builder::new()
            .prefix("rw-incidents-node-")
            .tempdir()
            .map_err(|e| format!("a temp dir for the private node: {e}"))?;
        let [amqp_port, management_port, dist_port] = free_ports()?;
        let name = format!("rw-incidents-{}@localhost", std::process::id());
        let d = dir.path().display();
        let cookie: String = std::iter::repeat_with(fastrand::uppercase)
            .take(20)
            .collect();
        for (file, text) in [
            ("home/.erlang.cookie", cookie),
            (
                "rabbitmq-env.conf",
                format!(
                    "NODENAME={name}\nNODE_PORT={amqp_port}\nDIST_PORT={dist_port}\n\
                     CONFIG_FILE={d}/rabbitmq.conf\nADVANCED_CONFIG_FILE={d}/advanced.config\n\
                     ENABLED_PLUGINS_FILE={d}/enabled_plugins\nMNESIA_BASE={d}/mnesia\nLOG_BASE={d}/log\n\
                     SERVER_ADDITIONAL_ERL_ARGS=\"-kernel inet_dist_use_interface {{127,0,0,1}}\"\n"
                ),
            ),
            (
                "rabbitmq.conf",
                format!(
                    "listeners.tcp.local = 127.0.0.1:{amqp_port}\nmanagement.tcp.ip = 127.0.0.1\n\
                     management.tcp.port = {management_port}\n"
                ),
            ),
            ("enabled_plugins", "[rabbitmq_management].\n".into()),
        ] {
            let path = dir.path().join(file);
            path.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, text))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        // Erlang refuses a cookie that others may read.
        std::fs::set_permissions(
            dir.path().join("home/.erlang.cookie"),
            std::fs::Permissions::from_mode(0o400),
        )
        .map_err(|e| format!("making the Erlang cookie private: {e}"))?;
        let console = std::fs::File::create(dir.path().join("console.log"))
            .map_err(|e| format!("the node's console log: {e}"))?;
        let mut keeper = Command::new("sh")
            .args(["-c", KEEPER])
            .arg(Path::new(RABBITMQ_BIN).join("rabbitmq-server"))
            .arg(dir.path())
            .envs(node_env(dir.path()))
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(console.try_clone().map_err(|e| e.to_string())?)
            .stderr(console)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting rabbitmq-server: {e}"))?;
        let node = PrivateNode {
            name,
            lifeline: keeper.stdin.take(),
            keeper,
            // From here on the keeper removes it.
            dir: dir.keep(),
            amqp_port,
            management_port,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while get_json(&node.management_url(), "/api/overview")
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(node.dir.join("console.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                return Err(format!(
                    "the private node's API did not answer within 120 s; its console log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(node)
    }

    fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.management_port)
    }

    fn amqp_host_port(&self) -> String {
        format!("127.0.0.1:{}", self.amqp_port)
    }

    /// `rabbitmqctl -n NODE ARGS…`, given a minute.
    async fn ctl(&self, args: &[&str]) -> Result<(), String> {
        let what = format!("rabbitmqctl {}", args.join(" "));
        let output = tokio::process::Command::new(Path::new(RABBITMQ_BIN).join("rabbitmqctl"))
            .args(["-q", "-n", &self.name])
            .args(args)
            .envs(node_env(&self.dir))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(60), output).await {
            Ok(Ok(o)) if o.status.success() => Ok(()),
            Ok(Ok(o)) => Err(format!(
                "{what}: {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within 60 s")),
        }
    }

    /// Raises the memory alarm (a high watermark of 0: the node is always over it, and RabbitMQ blocks
    /// every connection that publishes) and returns once the API shows a connection `blocked`, i.e.
    /// a publisher really held: how long after the alarm that was.
    async fn block_publishers(&self) -> Result<Duration, String> {
        self.ctl(&["set_vm_memory_high_watermark", "0"]).await?;
        let raised = Instant::now();
        // Connection states reach the API with the statistics, every 5 s.
        let deadline = raised + Duration::from_secs(60);
        loop {
            let connections = get_json(&self.management_url(), "/api/connections").await?;
            let blocked = connections
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["state"] == "blocked");
            if blocked {
                return Ok(raised.elapsed());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no connection blocked 60 s after the alarm: {connections}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Lifts the alarm: the high watermark back at RabbitMQ's default, 0.4 of the machine's memory.
    async fn unblock_publishers(&self) -> Result<(), String> {
        self.ctl(&["set_vm_memory_high_watermark", "0.4"]).await
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.keeper.wait();
    }
}

/// What the node and `rabbitmqctl` both need: the cookie's HOME, the node's own env file (not the shared
/// broker's /etc/rabbitmq/rabbitmq-env.conf) and EPMD on loopback.
fn node_env(dir: &Path) -> [(&'static str, std::ffi::OsString); 3] {
    [
        ("HOME", dir.join("home").into()),
        (
            "RABBITMQ_CONF_ENV_FILE",
            dir.join("rabbitmq-env.conf").into(),
        ),
        ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
    ]
}

/// Distinct free local ports, each listener held until all are chosen.
fn free_ports<const N: usize>() -> Result<[u16; N], String> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a free port: {e}"))?;
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a free port: {e}"))?;
    ports.try_into().map_err(|_| "a free port".to_string())
}

async fn get_json(base: &str, path: &str) -> Result<serde_json::Value, String> {
    let reply = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .basic_auth("guest", Some("guest"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("GET {base}{path}: {e}"))?;
    reply
        .json()
        .await
        .map_err(|e| format!("GET {base}{path}: {e}"))
}

/// First firing notification per (cluster, vhost, alertname), as ms since the epoch, from the log
/// receiver's file (vhost "" for an alert that names none, as a node's).
fn pages(path: &std::path::Path) -> BTreeMap<(String, String, String), i64> {
    let mut out = BTreeMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let Ok(n) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let at = n["created_at"].as_i64().unwrap_or_else(now_ms);
        for a in n["alerts"].as_array().into_iter().flatten() {
            if a["status"] != "firing" {
                continue;
            }
            let label = |l: &str| a["labels"][l].as_str().unwrap_or_default().to_owned();
            out.entry((label("cluster"), label("vhost"), label("alertname")))
                .or_insert(at);
        }
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let run_id = format!("{:06x}", fastrand::u32(..0xffffff));
    let prefix = format!("rw-incident-{run_id}-");
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("pages.jsonl");
    let [port] = free_ports().expect("a port");
    let booting = Instant::now();
    let node = match PrivateNode::start().await {
        Ok(node) => {
            eprintln!(
                "private node for publishers-blocked up in {:.0} s",
                booting.elapsed().as_secs_f64()
            );
            Arc::new(node)
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // The defaults a new user gets, but the vhost filter, the log receiver and where state goes; and
    // the private node as a second cluster, with the canary an operator would give it (its AMQP port
    // is not 5672, so the probe's URL is given).
    let config = format!(
        "server: {{ listen: 127.0.0.1:{port} }}\nstate: {{ path: {state} }}\nclusters:\n  - name: local\n    url: {MANAGEMENT}\n    username: guest\n    password: guest\n    vhosts: {{ include: '^{prefix}' }}\n  - name: {PRIVATE_CLUSTER}\n    url: {private_api}\n    username: guest\n    password: guest\n    probe: [{{ vhost: /, amqp_url: '{private_amqp}' }}]\nrules: [\"{rules}\"]\nreceivers:\n  - name: pages\n    log: {{ path: {log} }}\nroute: {{ receiver: pages }}\n",
        private_api = node.management_url(),
        private_amqp = amqp_url(&node.amqp_host_port(), "/"),
        state = dir.path().join("state").display(),
        rules = args.rules,
        log = log.display(),
    );
    std::fs::write(dir.path().join("rw.yaml"), config).expect("config");
    for s in SCENARIOS.iter().filter(|s| s.broker == Broker::Shared) {
        let v = format!("{prefix}{}", s.name);
        management(
            reqwest::Method::PUT,
            &format!("/api/vhosts/{}", encode(&v)),
            None,
        )
        .await;
        management(
            reqwest::Method::PUT,
            &format!("/api/permissions/{}/guest", encode(&v)),
            Some(serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await;
    }
    let mut daemon = Command::new(&args.daemon)
        .args(["run", "--config"])
        .arg(dir.path().join("rw.yaml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).expect("log"))
        .spawn()
        .expect("starting the daemon (cargo build first)");
    let started = Instant::now();
    let t0 = tokio::time::Instant::now() + Duration::from_secs(args.warmup);
    let end = t0 + Duration::from_secs(args.observe);
    let t0_ms = now_ms() + (args.warmup * 1000) as i64;
    eprintln!(
        "{} scenarios; incidents begin in {} s, watched for {} s after",
        SCENARIOS.len(),
        args.warmup,
        args.observe
    );
    let mut runs = tokio::task::JoinSet::new();
    for s in SCENARIOS {
        let (url, node) = match s.broker {
            Broker::Shared => (amqp_url(AMQP, &format!("{prefix}{}", s.name)), None),
            Broker::Private => (amqp_url(&node.amqp_host_port(), "/"), Some(node.clone())),
        };
        runs.spawn(run(s, url, node, t0, end));
    }
    let interrupted = tokio::select! {
        () = async { while runs.join_next().await.is_some() {} } => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    // Interrupted or not, nothing is left behind: the daemon, the private node (the runs hold it
    // too), the vhosts.
    runs.shutdown().await;
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(node);
    let seen = pages(&log);
    for s in SCENARIOS.iter().filter(|s| s.broker == Broker::Shared) {
        let v = format!("{prefix}{}", s.name);
        management(
            reqwest::Method::DELETE,
            &format!("/api/vhosts/{}", encode(&v)),
            None,
        )
        .await;
    }
    if interrupted {
        eprintln!("interrupted");
        return ExitCode::FAILURE;
    }

    println!(
        "| scenario | kind | what happens | paged (first, after the incident began) | time to page |"
    );
    println!("|---|---|---|---|---:|");
    let (mut hit, mut incidents, mut false_pages) = (0, 0, 0);
    let mut times: Vec<f64> = Vec::new();
    for s in SCENARIOS {
        let v = format!("{prefix}{}", s.name);
        let mut mine: Vec<(&String, i64)> = seen
            .iter()
            .filter(|((cluster, vhost, _), _)| match s.broker {
                Broker::Shared => cluster == "local" && *vhost == v,
                Broker::Private => cluster == PRIVATE_CLUSTER,
            })
            .map(|((_, _, name), at)| (name, *at))
            .collect();
        mine.sort_by_key(|(_, at)| *at);
        let all: Vec<String> = mine
            .iter()
            .map(|(n, at)| format!("{n} {:+.0} s", (*at - t0_ms) as f64 / 1000.0))
            .collect();
        eprintln!("{}: paged {}", s.name, all.join(", "));
        let early: Vec<String> = mine
            .iter()
            .filter(|(_, at)| *at < t0_ms)
            .map(|(n, _)| format!("{n} (during warm-up)"))
            .collect();
        let after: Vec<(&String, i64)> = mine
            .iter()
            .filter(|(_, at)| *at >= t0_ms)
            .cloned()
            .collect();
        let (paged, time) = match s.kind {
            Kind::Incident => {
                incidents += 1;
                match after.iter().find(|(n, _)| s.right.contains(&n.as_str())) {
                    Some((n, at)) => {
                        hit += 1;
                        let secs = (*at - t0_ms) as f64 / 1000.0;
                        times.push(secs);
                        (n.to_string(), format!("{secs:.0} s"))
                    }
                    None => ("missed".to_string(), format!("> {} s", args.observe)),
                }
            }
            Kind::LookAlike => {
                false_pages += after.len() + early.len();
                let names: Vec<String> = after.iter().map(|(n, _)| n.to_string()).collect();
                (
                    if names.is_empty() {
                        "nothing (right)".to_string()
                    } else {
                        format!("FALSE PAGE: {}", names.join(", "))
                    },
                    "—".to_string(),
                )
            }
        };
        let mut paged = paged;
        if !early.is_empty() && s.kind == Kind::Incident {
            paged.push_str(&format!("; also {}", early.join(", ")));
        }
        let kind = match s.kind {
            Kind::Incident => "incident",
            Kind::LookAlike => "look-alike",
        };
        println!("| {} | {kind} | {} | {paged} | {time} |", s.name, s.what);
    }
    times.sort_by(f64::total_cmp);
    let median = if times.is_empty() {
        f64::NAN
    } else {
        times[times.len() / 2]
    };
    let max = times.last().copied().unwrap_or(f64::NAN);
    println!(
        "\nrecall {hit}/{incidents}, false pages {false_pages}, median time to page {median:.0} s, slowest {max:.0} s (of those paged); run took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
