//! Dead-letter targets from the real broker's topology: the default pack's `DeadLetterQueueReceiving`
//! fires on the queue another queue dead-letters into, whatever its name (`orders.failed`), and not on
//! a queue nothing dead-letters into, even one named like a dead-letter queue (`dlq-archive`) and fed.
//! `/api/v1/queues` shows both verdicts (`dead_letter_target`) and `idle_for_seconds`. On a node that
//! keeps no message rates, the rules reading rates are named once in the log and in `/api/v1/status`.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicRejectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::util::{
    CLUSTER, Daemon, TestVhost, Tuning, always_for, cluster_yaml, config_for, config_with_clusters,
    consume_at_rate, declare_queue, encode, eventually, find, free_port, http_client, management,
    on_rabbitmq4, publish_at_rate, publish_n, requeue_at_rate, with_short_for,
};
use crate::util_broker::PrivateBroker;

/// The default queue rules, as shipped.
const PACK: &str = include_str!("../../rules/queue-health.yaml");

/// `GET /api/v1/alerts`: every alert, any state.
async fn alerts(daemon: &Daemon) -> Result<Vec<Value>, String> {
    let (status, body) = daemon.get_json("/api/v1/alerts").await?;
    if status != 200 {
        return Err(format!("/api/v1/alerts answered {status}: {body}"));
    }
    body["alerts"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("/api/v1/alerts has no alerts list: {body}"))
}

/// The firing `alertname` alert on `queue`, if there is one.
async fn firing_on(daemon: &Daemon, alertname: &str, queue: &str) -> Result<Value, String> {
    let all = alerts(daemon).await?;
    all.iter()
        .find(|a| {
            a["alertname"] == alertname && a["labels"]["queue"] == queue && a["state"] == "firing"
        })
        .cloned()
        .ok_or(format!("{alertname} not firing on {queue}: {all:?}"))
}

/// `queue`'s row of `/api/v1/queues`.
async fn queue_row(daemon: &Daemon, queue: &str) -> Result<Value, String> {
    let (_, body) = daemon.get_json("/api/v1/queues").await?;
    body["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["queue"] == queue).cloned())
        .ok_or_else(|| format!("{queue} not in /api/v1/queues: {body}"))
}

/// A consumer on `queue` that rejects every delivery without requeueing (so it is dead-lettered).
/// Keep it: dropping it cancels the subscription.
async fn reject_everything(channel: &lapin::Channel, queue: &str) -> lapin::Consumer {
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("consuming {queue}: {e}"));
    consumer.set_delegate(move |delivery: lapin::message::DeliveryResult| async move {
        if let Ok(Some(d)) = delivery {
            let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
        }
    });
    consumer
}

/// `orders` dead-letters into the direct exchange `orders.dlx` (no dead-letter routing key: each
/// message keeps its own, `orders`), to which `orders.failed` is bound with that key. Until `stop`
/// fires, one message every 200 ms goes to `orders`, where a consumer rejects it without requeueing,
/// and one to `dlq-archive`, which nothing dead-letters into.
async fn dead_lettering_traffic(amqp_url: String, stop: oneshot::Receiver<()>) {
    let connection = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .expect("connecting");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .exchange_declare(
            "orders.dlx".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declaring orders.dlx");
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("orders.dlx".into()),
    );
    channel
        .queue_declare("orders".into(), QueueDeclareOptions::default(), args)
        .await
        .expect("declaring orders");
    for queue in ["orders.failed", "dlq-archive"] {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declaring a queue");
    }
    channel
        .queue_bind(
            "orders.failed".into(),
            "orders.dlx".into(),
            "orders".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("binding orders.failed");
    let rejecter = connection.create_channel().await.expect("a channel");
    let consumer = reject_everything(&rejecter, "orders").await;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                for queue in ["orders", "dlq-archive"] {
                    channel
                        .basic_publish(
                            "".into(),
                            queue.into(),
                            BasicPublishOptions::default(),
                            b"rabbitwatch test message",
                            BasicProperties::default(),
                        )
                        .await
                        .expect("publishing");
                }
            }
        }
    }
    drop(consumer);
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn dead_letter_alerts_follow_the_topology_not_the_queue_name() {
    let vhost = TestVhost::create().await;
    let (stop, stopped) = oneshot::channel();
    let traffic = tokio::spawn(dead_lettering_traffic(vhost.amqp_url(), stopped));
    let config =
        config_for(vhost.name(), free_port(), &Tuning::default()) + "rules: [queue-health.yaml]\n";
    let daemon = Daemon::start_with_files(&config, &[("queue-health.yaml", PACK)]).await;

    let rows = eventually(
        Duration::from_secs(30),
        "both queues' dead-letter verdicts",
        async || {
            let failed = queue_row(&daemon, "orders.failed").await?;
            let archive = queue_row(&daemon, "dlq-archive").await?;
            let orders = queue_row(&daemon, "orders").await?;
            if failed["dead_letter_target"] == true
                && archive["dead_letter_target"] == false
                && orders["dead_letter_target"] == false
            {
                Ok((failed, archive))
            } else {
                Err(format!(
                    "orders.failed {failed}, dlq-archive {archive}, orders {orders}"
                ))
            }
        },
    )
    .await;
    // Both are fed, one by dead-lettering, one by publishers: their counters move.
    eventually(
        Duration::from_secs(30),
        "idle_for known and small",
        async || {
            let row = queue_row(&daemon, "dlq-archive").await?;
            match row["idle_for_seconds"].as_f64() {
                Some(s) if s < 10.0 => Ok(()),
                _ => Err(format!("dlq-archive {row} (first seen {})", rows.1)),
            }
        },
    )
    .await;

    // `for: 1m` after the evidence shows: well within 3 minutes.
    eventually(
        Duration::from_secs(180),
        "DeadLetterQueueReceiving firing on orders.failed, never on dlq-archive",
        async || {
            let all = alerts(&daemon).await?;
            let dlq = |queue: &str| {
                all.iter()
                    .find(|a| {
                        a["alertname"] == "DeadLetterQueueReceiving"
                            && a["labels"]["queue"] == queue
                    })
                    .cloned()
            };
            if let Some(wrong) = dlq("dlq-archive") {
                panic!("dlq-archive, which nothing dead-letters into, got {wrong}");
            }
            match dlq("orders.failed") {
                Some(a) if a["state"] == "firing" => Ok(()),
                other => Err(format!(
                    "orders.failed: {other:?}; its row: {:?}",
                    queue_row(&daemon, "orders.failed").await
                )),
            }
        },
    )
    .await;
    eprintln!(
        "orders.failed when it fired: {:?}",
        queue_row(&daemon, "orders.failed").await
    );
    let all = alerts(&daemon).await.expect("alerts");
    assert!(
        !all.iter().any(|a| a["labels"]["queue"] == "dlq-archive"
            && a["alertname"] == "DeadLetterQueueReceiving"),
        "{all:?}"
    );
    let _ = stop.send(());
    traffic.await.expect("the traffic task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reading_rates_are_named_once_on_a_cluster_that_keeps_none() {
    if crate::util::runs_on_private_node_only() {
        return;
    }
    // A node that keeps no message rates: the default pack's rate rules cannot fire through them.
    let broker = PrivateBroker::start_with("management.rates_mode = none").await;
    let tuning = Tuning::default();
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_yaml(
            CLUSTER,
            &broker.management_url(),
            "/",
            &tuning,
        )],
    ) + "rules: [queue-health.yaml]\n";
    let daemon = Daemon::start_with_files(&config, &[("queue-health.yaml", PACK)]).await;
    let named = eventually(
        Duration::from_secs(60),
        "unsupplied fields in /api/v1/status",
        async || {
            let (_, body) = daemon.get_json("/api/v1/status").await?;
            let cluster = &body["clusters"][0];
            let mut named: Vec<(String, String)> = cluster["unsupplied_fields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| {
                    let fields: Vec<&str> = u["fields"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    (
                        u["alertname"].as_str().unwrap_or("").to_string(),
                        fields.join(","),
                    )
                })
                .collect();
            named.sort();
            if named.is_empty() {
                Err(format!("{cluster}"))
            } else {
                Ok(named)
            }
        },
    )
    .await;
    let want = [
        ("DeadLetterQueueReceiving", "publish_rate"),
        ("QueueBacklogGrowing", "publish_rate,consume_rate"),
        ("QueueHotRequeueLoop", "redeliver_rate,deliver_rate"),
        (
            "QueuePoisonMessagesDropped",
            "redeliver_rate,discard_rate,publish_rate",
        ),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, f)| (a.to_string(), f.to_string()))
        .collect();
    assert_eq!(named, want);
    // Said once per rule, however many cycles pass (polls every second).
    let warnings = || {
        daemon
            .logs()
            .matches("rule reads fields this cluster cannot supply")
            .count()
    };
    eventually(
        Duration::from_secs(10),
        "four warnings logged",
        async || {
            (warnings() == 4).then_some(()).ok_or(format!(
                "{} warnings: {}",
                warnings(),
                daemon.logs()
            ))
        },
    )
    .await;
    always_for(Duration::from_secs(3), "no repeated warning", async || {
        let now = daemon
            .logs()
            .matches("rule reads fields this cluster cannot supply")
            .count();
        (now == 4).then_some(()).ok_or(format!("{now} warnings"))
    })
    .await;
}

/// A delayed-retry loop beside a real dead-letter queue. `work` rejects everything into the fanout
/// `work.retry`, whose queue `work.wait` holds each message 1 s (`x-message-ttl`) and then expires it
/// back to the work exchange `work.x` with its own routing key; `audit` is bound beside `work` to
/// `work.x` and so gets the retried copies too. `billing` rejects into `billing.dlx`, whose queue
/// `billing.parked` nothing takes out of. Until `stop` fires one message every 200 ms goes to each.
async fn retry_loop_traffic(amqp_url: String, stop: oneshot::Receiver<()>) {
    let connection = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .expect("connecting");
    let channel = connection.create_channel().await.expect("a channel");
    let table = |pairs: &[(&str, AMQPValue)]| {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    };
    let text = |s: &str| AMQPValue::LongString(s.into());
    for (exchange, kind) in [
        ("work.x", ExchangeKind::Topic),
        ("work.retry", ExchangeKind::Fanout),
        ("billing.dlx", ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(
                exchange.into(),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declaring an exchange");
    }
    let queues = [
        (
            "work",
            table(&[("x-dead-letter-exchange", text("work.retry"))]),
        ),
        (
            "work.wait",
            table(&[
                ("x-dead-letter-exchange", text("work.x")),
                ("x-message-ttl", AMQPValue::LongInt(1000)),
            ]),
        ),
        ("audit", FieldTable::default()),
        (
            "billing",
            table(&[("x-dead-letter-exchange", text("billing.dlx"))]),
        ),
        ("billing.parked", FieldTable::default()),
    ];
    for (queue, args) in queues {
        channel
            .queue_declare(queue.into(), QueueDeclareOptions::default(), args)
            .await
            .expect("declaring a queue");
    }
    for (queue, exchange, key) in [
        ("work", "work.x", "work.#"),
        ("audit", "work.x", "#"),
        ("work.wait", "work.retry", ""),
        ("billing.parked", "billing.dlx", ""),
    ] {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("binding");
    }
    let rejecter = connection.create_channel().await.expect("a channel");
    let mut consumers = Vec::new();
    for queue in ["work", "billing"] {
        consumers.push(reject_everything(&rejecter, queue).await);
    }
    // `audit` has a reader that keeps it empty, as an audit log's would.
    let reader = connection.create_channel().await.expect("a channel");
    let audit = reader
        .basic_consume(
            "audit".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consuming audit");
    audit.set_delegate(|_: lapin::message::DeliveryResult| async {});
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                for (exchange, key) in [("work.x", "work.created"), ("", "billing")] {
                    channel
                        .basic_publish(
                            exchange.into(),
                            key.into(),
                            BasicPublishOptions::default(),
                            b"rabbitwatch test message",
                            BasicProperties::default(),
                        )
                        .await
                        .expect("publishing");
                }
            }
        }
    }
    drop((consumers, audit));
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_retry_loop_is_no_dead_letter_queue_and_the_parking_queue_beside_it_is() {
    let vhost = TestVhost::create().await;
    let (stop, stopped) = oneshot::channel();
    let traffic = tokio::spawn(retry_loop_traffic(vhost.amqp_url(), stopped));
    let short_for = with_short_for(PACK, "5s");
    let config =
        config_for(vhost.name(), free_port(), &Tuning::default()) + "rules: [queue-health.yaml]\n";
    let daemon = Daemon::start_with_files(&config, &[("queue-health.yaml", &short_for)]).await;
    eventually(
        Duration::from_secs(30),
        "only billing.parked a dead-letter target, only work.wait a retry queue",
        async || {
            let mut verdicts = Vec::new();
            for q in ["work", "work.wait", "audit", "billing", "billing.parked"] {
                let row = queue_row(&daemon, q).await?;
                verdicts.push((
                    q,
                    row["dead_letter_target"].clone(),
                    row["retry_queue"].clone(),
                ));
            }
            let known = verdicts
                .iter()
                .all(|(_, t, r)| t.is_boolean() && r.is_boolean());
            let targets: Vec<&str> = verdicts
                .iter()
                .filter(|v| v.1 == true)
                .map(|v| v.0)
                .collect();
            let retry: Vec<&str> = verdicts
                .iter()
                .filter(|v| v.2 == true)
                .map(|v| v.0)
                .collect();
            if known && targets == ["billing.parked"] && retry == ["work.wait"] {
                Ok(())
            } else {
                Err(format!("{verdicts:?}"))
            }
        },
    )
    .await;
    // Dead letters keep arriving in both: only the parking queue pages.
    eventually(
        Duration::from_secs(60),
        "DeadLetterQueueReceiving on billing.parked",
        async || firing_on(&daemon, "DeadLetterQueueReceiving", "billing.parked").await,
    )
    .await;
    // The wait queue has no consumer on purpose: no QueueNoConsumers either.
    always_for(
        Duration::from_secs(15),
        "no DeadLetterQueueReceiving on the retry loop, no QueueNoConsumers on its wait queue",
        async || {
            let all = alerts(&daemon).await?;
            match all.iter().find(|a| {
                (a["alertname"] == "DeadLetterQueueReceiving"
                    && a["labels"]["queue"] != "billing.parked")
                    || a["alertname"] == "QueueNoConsumers"
            }) {
                None => Ok(()),
                Some(a) => Err(format!("{a}")),
            }
        },
    )
    .await;
    let _ = stop.send(());
    traffic.await.expect("the traffic task");
}

/// Limits set by policy, not by argument: a policy's `max-length`, an operator policy's lower one
/// over it, a policy's `max-length-bytes`. Each is seen in `/api/v1/queues` and pages
/// `QueueNearMaxLength` at 95 %; a queue at 10 % of its limit does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_set_by_policies_is_seen_and_paged_near_it() {
    let vhost = TestVhost::create().await;
    let client = http_client();
    let v = encode(vhost.name());
    for (kind, name, pattern, definition) in [
        (
            "policies",
            "caps",
            "^capped\\.",
            serde_json::json!({"max-length": 100}),
        ),
        (
            "operator-policies",
            "ops",
            "^capped\\.op$",
            serde_json::json!({"max-length": 40}),
        ),
        (
            "policies",
            "bytecaps",
            "^bytes\\.",
            serde_json::json!({"max-length-bytes": 2400}),
        ),
    ] {
        let body = serde_json::json!({
            "pattern": pattern, "definition": definition, "apply-to": "queues", "priority": 0
        });
        management(
            &client,
            reqwest::Method::PUT,
            &format!("/api/{kind}/{v}/{name}"),
            Some(body),
        )
        .await
        .unwrap_or_else(|e| panic!("setting {kind} {name}: {e}"));
    }
    // 24-byte messages: 95 of them are 2280 bytes, 95 % of 2400.
    for (queue, n) in [
        ("capped.a", 95),
        ("capped.op", 38),
        ("capped.low", 10),
        ("bytes.q", 95),
    ] {
        publish_n(&vhost.amqp_url(), queue, n).await;
    }
    let short_for = with_short_for(PACK, "5s");
    let config =
        config_for(vhost.name(), free_port(), &Tuning::default()) + "rules: [queue-health.yaml]\n";
    let daemon = Daemon::start_with_files(&config, &[("queue-health.yaml", &short_for)]).await;
    // The prometheus source (the RabbitMQ 4.3 pass) reads no byte counts: a byte limit's fill is
    // unknown there, and said so by a null, never read as empty.
    let bytes_known = !on_rabbitmq4();
    eventually(
        Duration::from_secs(30),
        "each queue's effective limit and fill ratio",
        async || {
            let mut got = Vec::new();
            for q in ["capped.a", "capped.op", "capped.low", "bytes.q"] {
                let row = queue_row(&daemon, q).await?;
                got.push((
                    q,
                    row["max_length"].as_u64(),
                    row["max_length_bytes"].as_u64(),
                    row["fill_ratio"]
                        .as_f64()
                        .map(|f| (f * 100.0).round() as u64),
                ));
            }
            let want = [
                ("capped.a", Some(100), None, Some(95)),
                ("capped.op", Some(40), None, Some(95)),
                ("capped.low", Some(100), None, Some(10)),
                ("bytes.q", None, Some(2400), bytes_known.then_some(95)),
            ];
            (got == want)
                .then_some(())
                .ok_or(format!("{got:?}, want {want:?}"))
        },
    )
    .await;
    let paged = |all: &[Value]| -> Vec<String> {
        let mut queues: Vec<String> = all
            .iter()
            .filter(|a| a["alertname"] == "QueueNearMaxLength" && a["state"] == "firing")
            .filter_map(|a| a["labels"]["queue"].as_str().map(str::to_string))
            .collect();
        queues.sort();
        queues
    };
    let want: Vec<&str> = if bytes_known {
        vec!["bytes.q", "capped.a", "capped.op"]
    } else {
        vec!["capped.a", "capped.op"]
    };
    eventually(
        Duration::from_secs(60),
        "QueueNearMaxLength on the queues at 95 %",
        async || {
            let all = alerts(&daemon).await?;
            (paged(&all) == want)
                .then_some(())
                .ok_or(format!("{:?}: {all:?}", paged(&all)))
        },
    )
    .await;
}

/// A poison message loop that the delivery limit ends: every message of `quorum.poison` (delivery
/// limit 3, set by policy) is rejected and requeued until the broker drops it, which RabbitMQ counts
/// nowhere per queue. `QueuePoisonMessagesDropped` pages it; `quorum.fine`, read by a consumer that
/// keeps up, is not paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_loop_the_delivery_limit_ends_is_paged() {
    let vhost = TestVhost::create().await;
    let body = serde_json::json!({
        "pattern": "^quorum\\.poison$", "definition": {"delivery-limit": 3},
        "apply-to": "queues", "priority": 0
    });
    management(
        &http_client(),
        reqwest::Method::PUT,
        &format!("/api/policies/{}/limit", encode(vhost.name())),
        Some(body),
    )
    .await
    .expect("setting the delivery-limit policy");
    let url = vhost.amqp_url();
    let _poison = publish_at_rate(&url, "quorum.poison", 2).await;
    let _rejecter = requeue_at_rate(&url, "quorum.poison", 20).await;
    let _fine = publish_at_rate(&url, "quorum.fine", 5).await;
    let _reader = consume_at_rate(&url, "quorum.fine", 20).await;
    let short_for = with_short_for(PACK, "5s");
    let config =
        config_for(vhost.name(), free_port(), &Tuning::default()) + "rules: [queue-health.yaml]\n";
    let daemon = Daemon::start_with_files(&config, &[("queue-health.yaml", &short_for)]).await;
    let alert = eventually(
        Duration::from_secs(120),
        "QueuePoisonMessagesDropped on quorum.poison",
        async || match firing_on(&daemon, "QueuePoisonMessagesDropped", "quorum.poison").await {
            Ok(a) => Ok(a),
            Err(e) => Err(format!(
                "{e}; the queue: {:?}",
                queue_row(&daemon, "quorum.poison").await
            )),
        },
    )
    .await;
    let description = alert["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(description.contains("(delivery limit 3)"), "{alert}");
    let all = alerts(&daemon).await.expect("alerts");
    assert!(
        !all.iter()
            .any(|a| a["alertname"] == "QueuePoisonMessagesDropped"
                && a["labels"]["queue"] == "quorum.fine"),
        "{all:?}"
    );
}

/// A transient non-exclusive classic queue is a feature RabbitMQ 4.x has deprecated: the cluster
/// lists it in use, `/api/v1/status` and `/metrics` name it, and `DeprecatedFeatureUsed` pages (its
/// `for` shortened). RabbitMQ 3.10 cannot say (no such endpoint before 3.13): unknown, never paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecated_feature_in_use_is_named_and_paged_where_the_broker_can_say() {
    let vhost = TestVhost::create().await;
    declare_queue(&vhost.amqp_url(), "transient.q").await;
    let rules = with_short_for(include_str!("../../rules/broker.yaml"), "2s");
    let config =
        config_for(vhost.name(), free_port(), &Tuning::default()) + "rules: [broker.yaml]\n";
    let daemon = Daemon::start_with_files(&config, &[("broker.yaml", &rules)]).await;
    let status = eventually(Duration::from_secs(30), "a scrape", async || {
        let (_, body) = daemon.get_json("/api/v1/status").await?;
        let cluster = body["clusters"][0].clone();
        if cluster["last_success"].is_null() {
            Err(format!("{cluster}"))
        } else {
            Ok(cluster)
        }
    })
    .await;
    if !on_rabbitmq4() {
        assert!(status["deprecated_features_used"].is_null(), "{status}");
        always_for(
            Duration::from_secs(5),
            "no DeprecatedFeatureUsed",
            async || {
                let all = alerts(&daemon).await?;
                match all
                    .iter()
                    .find(|a| a["alertname"] == "DeprecatedFeatureUsed")
                {
                    None => Ok(()),
                    Some(a) => Err(format!("{a}")),
                }
            },
        )
        .await;
        return;
    }
    let used = status["deprecated_features_used"].clone();
    assert!(
        used.as_array()
            .is_some_and(|u| u.iter().any(|f| f == "transient_nonexcl_queues")),
        "{status}"
    );
    let m = daemon.metrics().await.expect("metrics");
    assert_eq!(
        find(
            &m,
            "rabbitwatch_cluster_deprecated_feature_used",
            &[("feature", "transient_nonexcl_queues")]
        ),
        Some(1.0)
    );
    eventually(
        Duration::from_secs(30),
        "DeprecatedFeatureUsed firing",
        async || {
            let all = alerts(&daemon).await?;
            all.iter()
                .any(|a| {
                    a["alertname"] == "DeprecatedFeatureUsed"
                        && a["state"] == "firing"
                        && a["labels"]["severity"] == "info"
                })
                .then_some(())
                .ok_or(format!("{all:?}"))
        },
    )
    .await;
}
