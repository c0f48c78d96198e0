//! Traffic generator for demos: publishes to and consumes from one queue at steady rates, printing once
//! a second how many messages went each way.
//!
//! ```text
//! cargo run --example traffic -- --amqp amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --queue demo.orders --publish-rate 40 --consume-rate 15 --seconds 60
//! ```
//!
//! A rate of 0 turns that side off; `--seconds 0` runs until Ctrl-C. An existing queue is used as it is;
//! a missing one is declared (non-durable).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

const USAGE: &str = "usage: traffic [--amqp URL] [--queue NAME] [--publish-rate N] \
                     [--consume-rate N] [--seconds N]";

struct Args {
    amqp: String,
    queue: String,
    publish_rate: u32,
    consume_rate: u32,
    seconds: u64,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} takes a whole number, not {value:?}"))
}

/// The flags, or `None` when help was asked for.
fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        amqp: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
        queue: "demo.orders".to_owned(),
        publish_rate: 10,
        consume_rate: 10,
        seconds: 60,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = words
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--amqp" => args.amqp = value,
            "--queue" => args.queue = value,
            "--publish-rate" => args.publish_rate = number(&flag, &value)?,
            "--consume-rate" => args.consume_rate = number(&flag, &value)?,
            "--seconds" => args.seconds = number(&flag, &value)?,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(Some(args))
}

/// One tick per message. `Delay` rather than the default `Burst`: after a stall, a burst would show up
/// in the monitor as a spike that the demo did not mean to produce.
fn pacer(per_second: u32) -> tokio::time::Interval {
    let mut pacer = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
    pacer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    pacer
}

async fn publish(channel: Channel, queue: String, per_second: u32, published: Arc<AtomicU64>) {
    let mut pacer = pacer(per_second);
    loop {
        pacer.tick().await;
        let sent = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"rabbitwatch demo message",
                BasicProperties::default(),
            )
            .await;
        if let Err(e) = sent {
            eprintln!("publishing stopped: {e}");
            return;
        }
        published.fetch_add(1, Ordering::Relaxed);
    }
}

async fn consume(channel: Channel, queue: String, per_second: u32, consumed: Arc<AtomicU64>) {
    let subscribed = async {
        channel.basic_qos(1, BasicQosOptions::default()).await?;
        channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    };
    // Kept for the whole loop: dropping the consumer cancels the subscription.
    let consumer = match subscribed.await {
        Ok(consumer) => consumer,
        Err(e) => {
            eprintln!("consuming could not start: {e}");
            return;
        }
    };
    let (sender, mut deliveries) = mpsc::unbounded_channel();
    consumer.set_delegate(move |delivery: DeliveryResult| {
        let _ = sender.send(delivery);
        std::future::ready(())
    });
    let mut pacer = pacer(per_second);
    while let Some(delivery) = deliveries.recv().await {
        let delivery = match delivery {
            Ok(Some(delivery)) => delivery,
            Ok(None) => {
                eprintln!("consuming stopped: the broker cancelled the consumer");
                return;
            }
            Err(e) => {
                eprintln!("consuming stopped: {e}");
                return;
            }
        };
        pacer.tick().await;
        if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
            eprintln!("consuming stopped: {e}");
            return;
        }
        consumed.fetch_add(1, Ordering::Relaxed);
    }
}

async fn run(args: Args) -> Result<(), lapin::Error> {
    let connection = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    // A passive declare that fails closes its channel, hence a throwaway one.
    let probe = connection.create_channel().await?;
    let exists = probe
        .queue_declare(
            args.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    if !exists {
        connection
            .create_channel()
            .await?
            .queue_declare(
                args.queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    let published = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    if args.publish_rate > 0 {
        let channel = connection.create_channel().await?;
        tasks.push(tokio::spawn(publish(
            channel,
            args.queue.clone(),
            args.publish_rate,
            Arc::clone(&published),
        )));
    }
    if args.consume_rate > 0 {
        let channel = connection.create_channel().await?;
        tasks.push(tokio::spawn(consume(
            channel,
            args.queue.clone(),
            args.consume_rate,
            Arc::clone(&consumed),
        )));
    }

    println!(
        "queue {:?}: publishing {}/s, consuming {}/s",
        args.queue, args.publish_rate, args.consume_rate
    );
    let started = Instant::now();
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let (mut last_published, mut last_consumed) = (0, 0);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = report.tick() => {}
        }
        let (now_published, now_consumed) = (
            published.load(Ordering::Relaxed),
            consumed.load(Ordering::Relaxed),
        );
        let elapsed = started.elapsed().as_secs();
        println!(
            "t={elapsed:>4}s published={now_published} (+{}) consumed={now_consumed} (+{})",
            now_published - last_published,
            now_consumed - last_consumed
        );
        (last_published, last_consumed) = (now_published, now_consumed);
        if args.seconds > 0 && elapsed >= args.seconds {
            break;
        }
    }
    for task in tasks {
        task.abort();
    }
    // Best effort: the aborted tasks' channels may still be closing, and the broker requeues whatever
    // was unacked either way.
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("traffic: {e}");
            ExitCode::FAILURE
        }
    }
}
