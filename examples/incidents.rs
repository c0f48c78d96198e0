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

use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};
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

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Incident,
    LookAlike,
}

struct Scenario {
    name: &'static str,
    kind: Kind,
    /// Alerts that are the right page for this incident (empty for look-alikes).
    right: &'static [&'static str],
    what: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "backlog-growing",
        kind: Kind::Incident,
        right: &["QueueBacklogGrowing", "QueueDrainTooSlow"],
        what: "publishers go from 20/s to 40/s, consumers stay at 20/s",
    },
    Scenario {
        name: "consumers-gone",
        kind: Kind::Incident,
        right: &["QueueNoConsumers", "QueueBacklogGrowing"],
        what: "20/s in and out, then every consumer goes away; publishing goes on",
    },
    Scenario {
        name: "stuck-consumer",
        kind: Kind::Incident,
        right: &["QueueConsumersStalled", "QueueBacklogGrowing"],
        what: "the consumer stops acking and holds its prefetch of 50; 10/s keep arriving",
    },
    Scenario {
        name: "requeue-loop",
        kind: Kind::Incident,
        right: &["QueueHotRequeueLoop"],
        what: "the consumer starts rejecting with requeue at 50/s instead of acking (10/s in)",
    },
    Scenario {
        name: "dlq-filling",
        kind: Kind::Incident,
        right: &["DeadLetterQueueReceiving"],
        what: "the consumer starts rejecting without requeue: orders.failed (a dead-letter target, no 'dlq' in its name) fills at 10/s",
    },
    Scenario {
        name: "slow-consumer-slo",
        kind: Kind::Incident,
        right: &["QueueDrainTooSlow", "QueueBacklogGrowing"],
        what: "10,000 messages land on a queue draining at 2/s net (22/s out, 20/s in): an hour and more to drain",
    },
    Scenario {
        name: "steady",
        kind: Kind::LookAlike,
        right: &[],
        what: "20/s in and out throughout",
    },
    Scenario {
        name: "bursty-absorbed",
        kind: Kind::LookAlike,
        right: &[],
        what: "bursts of 300 every 20 s into a 30/s consumer",
    },
    Scenario {
        name: "idle",
        kind: Kind::LookAlike,
        right: &[],
        what: "empty queues, one with an idle consumer",
    },
    Scenario {
        name: "deploy-restart",
        kind: Kind::LookAlike,
        right: &[],
        what: "20/s; consumers gone for 20 s (a deploy), then back at 40/s until drained",
    },
    Scenario {
        name: "batch-job",
        kind: Kind::LookAlike,
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

async fn channel(vhost: &str) -> (Connection, Channel) {
    let url = format!("amqp://guest:guest@{AMQP}/{}", encode(vhost));
    let c = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to {vhost}: {e}"));
    let ch = c.create_channel().await.expect("a channel");
    (c, ch)
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
    vhost: &str,
    queue: &'static str,
    per_second: u32,
    settle: Settle,
    prefetch: u16,
) -> JoinHandle<()> {
    let (conn, ch) = channel(vhost).await;
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
        let _keep = (conn, consumer);
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
async fn run(
    s: &'static Scenario,
    vhost: String,
    t0: tokio::time::Instant,
    end: tokio::time::Instant,
) {
    let (_conn, ch) = channel(&vhost).await;
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
            tasks.push(consume(&vhost, "idle.c", 10, Settle::Ack, 10).await);
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
            &vhost,
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
            tasks.push(consume(&vhost, q, 1, Settle::Hold, 50).await);
        }
        "requeue-loop" => {
            if let Some(c) = consumer.take() {
                c.abort();
            }
            tasks.push(consume(&vhost, q, 50, Settle::Requeue, 1).await);
        }
        "dlq-filling" => {
            if let Some(c) = consumer.take() {
                c.abort();
            }
            tasks.push(consume(&vhost, q, 10, Settle::Reject, 1).await);
        }
        "slow-consumer-slo" => publish_now(&ch, q, 10_000).await,
        "deploy-restart" => {
            if let Some(c) = consumer.take() {
                c.abort();
            }
            tokio::time::sleep(Duration::from_secs(20)).await;
            consumer = Some(consume(&vhost, q, 40, Settle::Ack, 1).await);
        }
        "batch-job" => tasks.push(bursts(
            Duration::from_secs(180),
            3000,
            tokio::time::Instant::now(),
        )),
        _ => {}
    }
    tokio::time::sleep_until(end).await;
    for t in tasks.into_iter().chain(consumer).chain(publisher) {
        t.abort();
    }
}

/// First firing notification per (vhost, alertname), as ms since the epoch, from the log receiver's file.
fn pages(path: &std::path::Path) -> BTreeMap<(String, String), i64> {
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
            let vhost = a["labels"]["vhost"].as_str().unwrap_or_default().to_owned();
            let name = a["labels"]["alertname"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            out.entry((vhost, name)).or_insert(at);
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    // The defaults a new user gets, but the vhost filter, the log receiver and where state goes.
    let config = format!(
        "server: {{ listen: 127.0.0.1:{port} }}\nstate: {{ path: {state} }}\nclusters:\n  - name: local\n    url: {MANAGEMENT}\n    username: guest\n    password: guest\n    vhosts: {{ include: '^{prefix}' }}\nrules: [\"{rules}\"]\nreceivers:\n  - name: pages\n    log: {{ path: {log} }}\nroute: {{ receiver: pages }}\n",
        state = dir.path().join("state").display(),
        rules = args.rules,
        log = log.display(),
    );
    std::fs::write(dir.path().join("rw.yaml"), config).expect("config");
    for s in SCENARIOS {
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
    let runs: Vec<_> = SCENARIOS
        .iter()
        .map(|s| tokio::spawn(run(s, format!("{prefix}{}", s.name), t0, end)))
        .collect();
    for r in runs {
        let _ = r.await;
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let seen = pages(&log);
    for s in SCENARIOS {
        let v = format!("{prefix}{}", s.name);
        management(
            reqwest::Method::DELETE,
            &format!("/api/vhosts/{}", encode(&v)),
            None,
        )
        .await;
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
            .filter(|((vh, _), _)| *vh == v)
            .map(|((_, name), at)| (name, *at))
            .collect();
        mine.sort_by_key(|(_, at)| *at);
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
