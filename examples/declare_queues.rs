//! Declares many queues fast over AMQP (for `scripts/bench`'s real-broker comparison), then publishes a
//! few messages to some of them so the broker keeps `message_stats` for them.
//!
//! ```text
//! cargo run --release --example declare_queues -- --amqp amqp://guest:guest@127.0.0.1:5672/rw-bench \
//!     --queues 10000 [--prefix bench.q] [--channels 8] [--publish-every 10] [--messages 3]
//! ```
//!
//! Queues are durable classic queues named `<prefix><index:06>`; declaring an existing one is a no-op.

use std::process::ExitCode;
use std::time::Instant;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const USAGE: &str = "usage: declare_queues --amqp URL --queues N [--prefix P] [--channels C] \
                     [--publish-every K] [--messages M]";

struct Args {
    amqp: String,
    queues: usize,
    prefix: String,
    channels: usize,
    publish_every: usize,
    messages: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        amqp: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        queues: 0,
        prefix: "bench.q".into(),
        channels: 8,
        publish_every: 10,
        messages: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag} takes a whole number, not {value:?}"))
        };
        match flag.as_str() {
            "--amqp" => a.amqp = value.clone(),
            "--queues" => a.queues = num()?,
            "--prefix" => a.prefix = value.clone(),
            "--channels" => a.channels = num()?.max(1),
            "--publish-every" => a.publish_every = num()?,
            "--messages" => a.messages = num()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.queues == 0 {
        return Err("--queues is required".into());
    }
    Ok(a)
}

async fn run(args: Args) -> Result<(), lapin::Error> {
    let started = Instant::now();
    let connection = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let mut tasks = Vec::new();
    for c in 0..args.channels {
        let channel = connection.create_channel().await?;
        let (n, prefix, every, messages, channels) = (
            args.queues,
            args.prefix.clone(),
            args.publish_every,
            args.messages,
            args.channels,
        );
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(channels) {
                let name = format!("{prefix}{i:06}");
                channel
                    .queue_declare(
                        name.as_str().into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                if every > 0 && i % every == 0 {
                    for _ in 0..messages {
                        channel
                            .basic_publish(
                                "".into(),
                                name.as_str().into(),
                                BasicPublishOptions::default(),
                                b"rabbitwatch bench message",
                                BasicProperties::default(),
                            )
                            .await?;
                    }
                }
            }
            Ok::<(), lapin::Error>(())
        }));
    }
    for t in tasks {
        t.await.expect("declare task panicked")?;
    }
    let _ = connection.close(200, "done".into()).await;
    eprintln!(
        "declared {} queues in {:.1} s",
        args.queues,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("declare_queues: {e}");
            ExitCode::FAILURE
        }
    }
}
