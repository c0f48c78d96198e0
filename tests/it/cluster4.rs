//! A real two-node RabbitMQ 4.0 cluster (scripts/rabbitmq4: rabbit4a and rabbit4b): traffic enters
//! and leaves through both nodes, on a quorum queue (its counters come from channels on both nodes)
//! and on a classic queue placed on each node, and rabbitwatch reports each queue's rates as the
//! clients drive them and sees both nodes. Runs in the RabbitMQ 4.0 pass of `scripts/test`; in the
//! 3.10 pass it says it is skipped (the host's 3.10 is a single node).

use std::time::Duration;

use crate::util::{
    CLUSTER, Daemon, TestVhost, Tuning, config_for, consume_at_rate, eventually, find, free_port,
    on_rabbitmq4, publish_at_rate,
};

/// Node rabbit4b's AMQP address (rabbit4a's is the suite's `amqp_addr()`).
const NODE_B_AMQP: &str = "127.0.0.1:5674";

fn near(observed: f64, expected: f64, tolerance: f64) -> bool {
    (observed - expected).abs() <= expected * tolerance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_of_quorum_and_classic_queues_fed_through_both_nodes_match_the_clients() {
    if !on_rabbitmq4() {
        eprintln!(
            "skipped: needs the two-node RabbitMQ 4.0 cluster (RABBITWATCH_TEST_BROKER=rabbitmq4)"
        );
        return;
    }
    let vhost = TestVhost::create().await;
    let via_a = vhost.amqp_url();
    let via_b = via_a.replace(crate::util::amqp_addr(), NODE_B_AMQP);
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;

    // (queue, publish through, consume through, in/s, out/s). A classic queue lives on the node of
    // the connection that declared it (the publisher's, declared first).
    let flows = [
        ("quorum.orders", &via_b, &via_a, 30, 20),
        ("classic.on-a", &via_a, &via_b, 20, 10),
        ("classic.on-b", &via_b, &via_a, 25, 25),
    ];
    let mut traffic = Vec::new();
    for (queue, publish_via, consume_via, publish, consume) in flows {
        traffic.push(publish_at_rate(publish_via, queue, publish).await);
        traffic.push(consume_at_rate(consume_via, queue, consume).await);
    }

    eventually(
        Duration::from_secs(90),
        "each queue's publish and consume rates within 15% of the clients', and both nodes running",
        async || {
            let metrics = daemon.metrics().await?;
            let mut wrong = Vec::new();
            for (queue, _, _, publish, consume) in flows {
                let labels = [("cluster", CLUSTER), ("vhost", vhost.name()), ("queue", queue)];
                let p = find(&metrics, "rabbitwatch_queue_publish_rate", &labels);
                let c = find(&metrics, "rabbitwatch_queue_consume_rate", &labels);
                if !(p.is_some_and(|p| near(p, f64::from(publish), 0.15))
                    && c.is_some_and(|c| near(c, f64::from(consume), 0.15)))
                {
                    wrong.push(format!("{queue}: publish_rate={p:?} (want {publish}) consume_rate={c:?} (want {consume})"));
                }
            }
            for node in ["rabbit4a@localhost", "rabbit4b@localhost"] {
                let running = find(&metrics, "rabbitwatch_node_running", &[("cluster", CLUSTER), ("node", node)]);
                if running != Some(1.0) {
                    wrong.push(format!("node {node}: running={running:?}"));
                }
            }
            if wrong.is_empty() { Ok(()) } else { Err(wrong.join("; ")) }
        },
    )
    .await;

    // The quorum queue really is one, and the classic queues sit on different nodes.
    let (_, queues) = daemon.get_json("/api/v1/queues").await.expect("queues");
    let listed = queues.to_string();
    assert!(listed.contains("quorum.orders"), "{listed}");
    let detail = crate::util::management_get(&format!(
        "/api/queues/{}?columns=name,type,node",
        crate::util::encode(vhost.name())
    ))
    .await
    .expect("the broker's queue listing");
    let of = |name: &str| {
        detail
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(of("quorum.orders")["type"], "quorum", "{detail}");
    assert_ne!(
        of("classic.on-a")["node"],
        of("classic.on-b")["node"],
        "{detail}"
    );

    for t in traffic {
        t.stop().await;
    }
}
