//! Streams on a real broker: a stream's depth is its retained log, so the default pack must leave a
//! healthy stream alone (measured on RabbitMQ 4.3.6 before this: QueueBacklogGrowing within a minute,
//! QueueNoConsumers on a stream nobody reads), while each stream-protocol reader is judged by its
//! offset lag: named in `/metrics` and `/api/v1/stream_consumers`, paged when it falls behind, `stopped`
//! when it leaves behind, paged before retention overtakes it, and summed over a super stream's
//! partitions. An AMQP reader of a stream exposes no offset: it is counted as unknown, never as 0.

use std::time::Duration;

use serde_json::Value;

use crate::util::{
    Daemon, TestVhost, Tuning, always_for, config_for, consume_at_rate, encode, eventually, find,
    free_port, management_get, publish_at_rate, stream_addr, with_short_for,
};
use crate::util_stream::{OffsetSpec, StreamClient, amqp_message};

const QUEUE_PACK: &str = include_str!("../../rules/queue-health.yaml");
const STREAM_PACK: &str = include_str!("../../rules/streams.yaml");

/// The default stream rules with every `for:` shortened to 5s, so an incident fires within seconds.
fn stream_rules_with_short_for() -> String {
    with_short_for(STREAM_PACK, "5s")
}

async fn connect(vhost: &TestVhost, name: &str) -> StreamClient {
    StreamClient::connect(stream_addr(), vhost.name(), "guest", "guest", name)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connecting over the stream protocol to {}: {e}",
                stream_addr()
            )
        })
}

/// `GET /api/v1/stream_consumers` of the daemon.
async fn readers(daemon: &Daemon) -> Result<Value, String> {
    let (status, body) = daemon.get_json("/api/v1/stream_consumers").await?;
    if status != 200 {
        return Err(format!(
            "/api/v1/stream_consumers answered {status}: {body}"
        ));
    }
    Ok(body)
}

/// The reader `consumer` of `stream` in `/api/v1/stream_consumers`.
async fn reader(daemon: &Daemon, stream: &str, consumer: &str) -> Result<Value, String> {
    let body = readers(daemon).await?;
    body["consumers"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["stream"] == stream && c["consumer"] == consumer)
                .cloned()
        })
        .ok_or_else(|| format!("no reader {consumer} of {stream}: {body}"))
}

/// Every alert the daemon knows (pending, firing, recently resolved).
async fn alerts(daemon: &Daemon) -> Result<Vec<Value>, String> {
    let (_, body) = daemon.get_json("/api/v1/alerts").await?;
    body["alerts"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("/api/v1/alerts has no alerts list: {body}"))
}

async fn firing(daemon: &Daemon, alertname: &str, consumer: &str) -> Result<Value, String> {
    let all = alerts(daemon).await?;
    all.iter()
        .find(|a| {
            a["alertname"] == alertname
                && a["state"] == "firing"
                && a["labels"]["consumer"] == consumer
        })
        .cloned()
        .ok_or_else(|| format!("{alertname} not firing for {consumer}: {all:?}"))
}

/// The broker's own `offset_lag` of the subscription named `name` in `vhost`.
async fn broker_lag(vhost: &TestVhost, name: &str) -> Result<f64, String> {
    let listed = management_get(&format!("/api/stream/consumers/{}", encode(vhost.name()))).await?;
    listed
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["properties"]["name"] == name))
        .and_then(|c| c["offset_lag"].as_f64())
        .ok_or_else(|| format!("the broker lists no consumer {name}: {listed}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_stream_and_an_unread_stream_page_nothing_under_the_default_pack() {
    let vhost = TestVhost::create().await;
    let (read, unread) = ("stream.events", "stream.archive");
    // 20 msg/s into each; one read by an AMQP consumer and a named stream-protocol reader that keep
    // up, the other by nobody.
    let fed = publish_at_rate(&vhost.amqp_url(), read, 20).await;
    let fed_unread = publish_at_rate(&vhost.amqp_url(), unread, 20).await;
    let amqp_reader = consume_at_rate(&vhost.amqp_url(), read, 100).await;
    let client = connect(&vhost, "rw-test-billing").await;
    let _billing = client
        .subscribe(read, Some("billing"), OffsetSpec::Next, 10)
        .await
        .expect("subscribing billing");

    let config = config_for(vhost.name(), free_port(), &Tuning::default())
        + "rules: [queue-health.yaml, streams.yaml]\n";
    let daemon = Daemon::start_with_files(
        &config,
        &[
            ("queue-health.yaml", QUEUE_PACK),
            ("streams.yaml", STREAM_PACK),
        ],
    )
    .await;

    // The reader is judged by its lag; the AMQP reader, which has no offset, is counted as unknown.
    eventually(
        Duration::from_secs(60),
        "billing judged ok, the AMQP reader unknown, both streams typed",
        async || {
            let billing = reader(&daemon, read, "billing").await?;
            if billing["status"] != "ok" || billing["online"] != true {
                return Err(format!("billing {billing}"));
            }
            let body = readers(&daemon).await?;
            let unknown = body["unknown"].as_array().cloned().unwrap_or_default();
            if !unknown
                .iter()
                .any(|u| u["stream"] == read && u["readers"] == 1)
            {
                return Err(format!("no AMQP reader counted unknown: {body}"));
            }
            let (_, queues) = daemon.get_json("/api/v1/queues").await?;
            let types: Vec<&Value> = queues["queues"]
                .as_array()
                .map(|qs| qs.iter().map(|q| &q["type"]).collect())
                .unwrap_or_default();
            if types.len() != 2 || types.iter().any(|t| *t != "stream") {
                return Err(format!("queues {queues}"));
            }
            let m = daemon.metrics().await?;
            let labels = [("stream", read), ("consumer", "billing")];
            match (
                find(&m, "rabbitwatch_stream_consumer_offset_lag", &labels),
                find(
                    &m,
                    "rabbitwatch_stream_unknown_readers",
                    &[("stream", read)],
                ),
            ) {
                (Some(lag), Some(1.0)) if lag < 100.0 => Ok(()),
                other => Err(format!("metrics: lag and unknown readers {other:?}")),
            }
        },
    )
    .await;
    // Five 30 s windows: long enough for what the queue rules paged on a stream before (backlog
    // growing within a minute, no consumers after 2 minutes) to show, pending included.
    always_for(
        Duration::from_secs(150),
        "no alert, pending or firing, on either stream",
        async || {
            let all = alerts(&daemon).await?;
            match all.first() {
                None => Ok(()),
                Some(a) => Err(format!("{a}")),
            }
        },
    )
    .await;
    let billing = reader(&daemon, read, "billing").await.expect("billing");
    assert_eq!(billing["status"], "ok", "{billing}");
    assert!(
        amqp_reader.stop().await > 1000,
        "the AMQP reader kept up throughout"
    );
    fed.stop().await;
    fed_unread.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_reader_that_falls_behind_is_paged_by_name_then_stopped_when_it_leaves() {
    let vhost = TestVhost::create().await;
    let stream = "stream.clicks";
    let fed = publish_at_rate(&vhost.amqp_url(), stream, 50).await;
    let client = connect(&vhost, "rw-test-billing-reader").await;
    let sub = client
        .subscribe(stream, Some("billing-reader"), OffsetSpec::Next, 10)
        .await
        .expect("subscribing");
    let config =
        config_for(vhost.name(), free_port(), &Tuning::default()) + "rules: [streams.yaml]\n";
    let daemon =
        Daemon::start_with_files(&config, &[("streams.yaml", &stream_rules_with_short_for())])
            .await;
    eventually(
        Duration::from_secs(60),
        "billing-reader keeping up",
        async || {
            let r = reader(&daemon, stream, "billing-reader").await?;
            match r["offset_lag"].as_f64() {
                Some(lag) if lag < 200.0 => Ok(()),
                _ => Err(format!("{r}")),
            }
        },
    )
    .await;

    // It stops asking for more: the broker stops sending, its lag grows at the publish rate.
    sub.set_auto_credit(false).expect("switching credit off");
    eventually(
        Duration::from_secs(90),
        "billing-reader's lag in /metrics, as the broker shows it",
        async || {
            let broker = broker_lag(&vhost, "billing-reader").await?;
            let m = daemon.metrics().await?;
            let ours = find(
                &m,
                "rabbitwatch_stream_consumer_offset_lag",
                &[("consumer", "billing-reader")],
            )
            .ok_or("no offset_lag series")?;
            // The broker refreshes its figure every 5 s and the daemon polls every second: at 50/s
            // the two are at most a few hundred apart.
            if ours > 1000.0 && (ours - broker).abs() <= 400.0 {
                Ok(())
            } else {
                Err(format!("ours {ours}, the broker's {broker}"))
            }
        },
    )
    .await;
    let alert = eventually(
        Duration::from_secs(90),
        "StreamConsumerFallingBehind naming billing-reader",
        async || firing(&daemon, "StreamConsumerFallingBehind", "billing-reader").await,
    )
    .await;
    assert_eq!(alert["labels"]["stream"], stream, "{alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");

    // It leaves while behind: stopped, and its lag keeps growing without it.
    sub.unsubscribe().await.expect("unsubscribing");
    let left = eventually(
        Duration::from_secs(30),
        "billing-reader stopped",
        async || {
            let r = reader(&daemon, stream, "billing-reader").await?;
            if r["status"] == "stopped" && r["online"] == false {
                Ok(r)
            } else {
                Err(format!("{r}"))
            }
        },
    )
    .await;
    let lag_when_left = left["offset_lag"].as_f64().expect("a lag");
    eventually(
        Duration::from_secs(30),
        "its lag growing while it is gone, and StreamConsumerStalled",
        async || {
            let r = reader(&daemon, stream, "billing-reader").await?;
            let lag = r["offset_lag"].as_f64().unwrap_or_default();
            if lag < lag_when_left + 100.0 {
                return Err(format!("{r}, {lag_when_left} when it left"));
            }
            firing(&daemon, "StreamConsumerStalled", "billing-reader").await
        },
    )
    .await;
    let m = daemon.metrics().await.expect("metrics");
    assert_eq!(
        find(
            &m,
            "rabbitwatch_stream_consumer_online",
            &[("consumer", "billing-reader")]
        ),
        Some(0.0)
    );
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_about_to_overtake_a_reader_is_paged_before_it_does() {
    let vhost = TestVhost::create().await;
    let stream = "trunc";
    let client = connect(&vhost, "rw-test-truncation").await;
    // 20 MB retained in 1 MB segments; 15 MB written at once, read to the end by `slow-reader`,
    // which then stops. 200 KB/s more fills the log in 25 s, then retention removes a segment every
    // 5 s and the log's head reaches the reader about 75 s later.
    client
        .create_stream(
            stream,
            &[
                ("max-length-bytes", "20000000"),
                ("stream-max-segment-size-bytes", "1000000"),
            ],
        )
        .await
        .expect("creating the stream");
    let body = vec![b'x'; 1000];
    let batch: Vec<Vec<u8>> = (0..500).map(|_| amqp_message(&body)).collect();
    for _ in 0..30 {
        client.publish(stream, &batch).await.expect("publishing");
    }
    let sub = client
        .subscribe(stream, Some("slow-reader"), OffsetSpec::First, 10)
        .await
        .expect("subscribing");
    sub.wait_delivered(15_000, Duration::from_secs(60))
        .await
        .expect("reading the first 15000");
    sub.set_auto_credit(false).expect("switching credit off");

    let config =
        config_for(vhost.name(), free_port(), &Tuning::default()) + "rules: [streams.yaml]\n";
    let daemon =
        Daemon::start_with_files(&config, &[("streams.yaml", &stream_rules_with_short_for())])
            .await;
    let publisher = {
        let client = connect(&vhost, "rw-test-truncation-publisher").await;
        let batch: Vec<Vec<u8>> = (0..20).map(|_| amqp_message(&body)).collect();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for _ in 0..3000 {
                tick.tick().await;
                if client.publish(stream, &batch).await.is_err() {
                    break;
                }
            }
        })
    };
    let alert = eventually(
        Duration::from_secs(150),
        "StreamConsumerNearTruncation for slow-reader",
        async || firing(&daemon, "StreamConsumerNearTruncation", "slow-reader").await,
    )
    .await;
    // Before it happens: the reader's position is still in the log.
    let r = reader(&daemon, stream, "slow-reader")
        .await
        .expect("the reader");
    let lag = r["offset_lag"].as_f64().expect("a lag");
    let (_, queues) = daemon.get_json("/api/v1/queues").await.expect("queues");
    let retained = queues["queues"][0]["messages"]
        .as_f64()
        .expect("the log's length");
    assert!(
        lag < retained,
        "paged only after retention passed the reader: lag {lag}, log {retained}; {alert}"
    );
    assert!(
        r["truncation_eta_seconds"]
            .as_f64()
            .is_some_and(|eta| eta > 0.0),
        "{r}"
    );
    publisher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_stream_reader_is_one_reader_with_its_partitions_lag_summed() {
    let vhost = TestVhost::create().await;
    let client = connect(&vhost, "rw-test-super-stream").await;
    let partitions = ["orders-0", "orders-1", "orders-2"];
    let body = vec![b'o'; 100];
    for (i, p) in partitions.iter().enumerate() {
        client
            .create_stream(p, &[])
            .await
            .expect("creating a partition");
        let batch: Vec<Vec<u8>> = (0..(1000 * (i + 1))).map(|_| amqp_message(&body)).collect();
        client.publish(p, &batch).await.expect("publishing");
    }
    // One application, `app`, reading each partition through the super stream `orders`; it took
    // one chunk of each and asks for no more.
    let mut subs = Vec::new();
    for p in partitions {
        let sub = client
            .subscribe_with_properties(
                p,
                OffsetSpec::First,
                1,
                &[("name", "app"), ("super-stream", "orders")],
            )
            .await
            .expect("subscribing to a partition");
        sub.set_auto_credit(false).expect("credit off");
        subs.push(sub);
    }
    let config = config_for(vhost.name(), free_port(), &Tuning::default());
    let daemon = Daemon::start(&config).await;
    eventually(
        Duration::from_secs(60),
        "one reader app of orders, lag summed over the partitions as the broker shows them",
        async || {
            let listed =
                management_get(&format!("/api/stream/consumers/{}", encode(vhost.name()))).await?;
            let broker: f64 = listed
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["offset_lag"].as_f64()).sum())
                .unwrap_or_default();
            let body = readers(&daemon).await?;
            let rows = body["consumers"].as_array().cloned().unwrap_or_default();
            match &rows[..] {
                [r] if r["stream"] == "orders"
                    && r["consumer"] == "app"
                    && r["super_stream"] == true
                    && r["subscriptions"] == 3
                    && r["offset_lag"].as_f64() == Some(broker)
                    && broker > 1000.0 =>
                {
                    Ok(())
                }
                _ => Err(format!("ours {body}, the broker's sum {broker}")),
            }
        },
    )
    .await;
}
