//! The end-to-end canary (`probe:`) against real brokers: healthy round trips are counted; each fault
//! a management-API number cannot show — a vhost refusing connections, a route removed, publishers
//! blocked by a memory alarm, the node stopped — pages once with its `probe_error` and resolves with
//! the same correlation id once undone; a slow path fires the default pack's `CanarySlow`; hundreds of
//! fast round trips, some timing out, leave no messages and no queues behind.
//!
//! Faults that would disturb other tests (the memory alarm, `stop_app`) run on a private node.

use std::time::Duration;

use reqwest::Method;

use crate::util::{
    Daemon, TestVhost, Tuning, cluster_yaml, config_with_clusters, encode, eventually, find,
    free_port, management, management_get, management_url, run_cli,
};
use crate::util_broker::PrivateBroker;
use crate::util_proxy::DelayProxy;
use crate::util_slack::FakeHttp;

const HOOK: &str = "/hook";

/// Fires while the last round trip failed; its summary is the error, so a page says which.
const FAILING_RULE: &str = r#"groups:
  - name: t
    rules:
      - alert: CanaryFailing
        scope: probe
        expr: not probe_ok
        for: 1s
        labels: { severity: critical }
        annotations: { summary: "{{ probe_error }}" }
"#;

/// A `clusters:` entry named `cluster` at `management_url` with one probe entry (`probe`, the
/// inside of a flow mapping: `vhost: …, amqp_url: …, …`).
fn cluster_with_probe(cluster: &str, management_url: &str, vhost: &str, probe: &str) -> String {
    cluster_yaml(cluster, management_url, vhost, &Tuning::default())
        + &format!("    probe:\n      - {{ {probe} }}\n")
}

fn alerting(fake: &FakeHttp) -> String {
    format!(
        r#"rules: [rules.yaml]
receivers:
  - name: hook
    webhook: {{ url: "{}" }}
route: {{ receiver: hook, group_wait: 0s, group_interval: 1s }}
outbox: {{ max_backoff: 2s }}
"#,
        fake.url(HOOK)
    )
}

async fn start(cluster: String, fake: &FakeHttp, rules: &str) -> Daemon {
    let config =
        config_with_clusters(free_port(), &Tuning::default(), &[cluster]) + &alerting(fake);
    Daemon::start_with_files(&config, &[("rules.yaml", rules)]).await
}

/// One alert of one page: (alertname, status, correlation id, summary).
#[derive(Clone, Debug, PartialEq)]
struct Page {
    alertname: String,
    status: String,
    correlation_id: String,
    summary: String,
}

fn pages(fake: &FakeHttp) -> Vec<Page> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    fake.requests_to(HOOK)
        .iter()
        .filter(|r| r.accepted())
        .flat_map(|r| {
            r.json()["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|a| Page {
                    alertname: text(&a["labels"]["alertname"]),
                    status: text(&a["status"]),
                    correlation_id: text(&a["correlation_id"]),
                    summary: text(&a["annotations"]["summary"]),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The probe's round trips so far: (succeeded, failed by `error`).
async fn round_trips(daemon: &Daemon, error: &str) -> Result<(f64, f64), String> {
    let m = daemon.metrics().await?;
    let ok = find(&m, "rabbitwatch_probe_latency_seconds_count", &[]).unwrap_or(0.0);
    let failed = find(&m, "rabbitwatch_probe_failures_total", &[("error", error)]).unwrap_or(0.0);
    Ok((ok, failed))
}

async fn wait_healthy(daemon: &Daemon) {
    eventually(
        Duration::from_secs(30),
        "the canary round-tripping",
        async || {
            let m = daemon.metrics().await?;
            match find(&m, "rabbitwatch_probe_up", &[]) {
                Some(1.0) => Ok(()),
                other => Err(format!("rabbitwatch_probe_up = {other:?}")),
            }
        },
    )
    .await;
}

/// Applies `fault`, expects exactly one `CanaryFailing` page naming `error`, undoes it with `undo`,
/// and expects exactly one resolve with the same correlation id. Returns that id.
async fn incident(
    daemon: &Daemon,
    fake: &FakeHttp,
    error: &str,
    management_api_up: bool,
    fault: impl AsyncFnOnce(),
    undo: impl AsyncFnOnce(),
) -> String {
    let before = pages(fake).len();
    fault().await;
    let fired = eventually(
        Duration::from_secs(45),
        &format!("CanaryFailing paged with probe_error {error}"),
        async || {
            let new = pages(fake).split_off(before);
            new.iter()
                .find(|p| p.alertname == "CanaryFailing" && p.status == "firing")
                .cloned()
                .ok_or(format!("pages since the fault: {new:?}"))
        },
    )
    .await;
    assert_eq!(fired.summary, error, "the page names the error: {fired:?}");
    if management_api_up {
        let (status, ready) = daemon.get("/readyz").await.expect("readyz");
        assert_eq!(
            status, 200,
            "a failing canary is about the broker, not rabbitwatch: {ready}"
        );
    }
    undo().await;
    eventually(
        Duration::from_secs(60),
        "CanaryFailing resolved once the fault is undone",
        async || {
            let new = pages(fake).split_off(before);
            new.iter()
                .any(|p| p.alertname == "CanaryFailing" && p.status == "resolved")
                .then_some(())
                .ok_or(format!("pages since the fault: {new:?}"))
        },
    )
    .await;
    let new = pages(fake).split_off(before);
    let of = |status: &str| -> Vec<&Page> {
        new.iter()
            .filter(|p| p.alertname == "CanaryFailing" && p.status == status)
            .collect()
    };
    assert_eq!(of("firing").len(), 1, "one page per incident: {new:?}");
    assert_eq!(of("resolved").len(), 1, "one resolve: {new:?}");
    assert_eq!(
        of("resolved")[0].correlation_id,
        fired.correlation_id,
        "the resolve carries the incident's correlation id"
    );
    fired.correlation_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_round_trips_and_declares_only_its_own_expiring_queue() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    let probe = format!(
        "vhost: {}, amqp_url: \"{}\", interval: 200ms, timeout: 200ms",
        vhost.name(),
        vhost.amqp_url()
    );
    let cluster = cluster_with_probe("local", management_url(), vhost.name(), &probe);
    let daemon = start(cluster, &fake, FAILING_RULE).await;
    wait_healthy(&daemon).await;
    let (first, _) = round_trips(&daemon, "timeout").await.expect("metrics");
    eventually(
        Duration::from_secs(20),
        "ten more round trips counted",
        async || {
            let (ok, _) = round_trips(&daemon, "timeout").await?;
            (ok >= first + 10.0)
                .then_some(())
                .ok_or(format!("{ok} round trips, {first} at first"))
        },
    )
    .await;

    let (_, status) = daemon.get_json("/api/v1/status").await.expect("status");
    let p = &status["clusters"][0]["probes"][0];
    assert_eq!(p["ok"], true, "{status}");
    assert_eq!(p["queue"], "rabbitwatch.canary", "{p}");
    assert!(
        p["latency_seconds"].as_f64().is_some_and(|l| l < 1.0),
        "{p}"
    );
    assert_eq!(
        p["endpoint"],
        format!("amqp://guest@{}", crate::util::amqp_addr()),
        "{p}"
    );

    let path = format!("/api/queues/{}", encode(vhost.name()));
    let queues = management_get(&path).await.expect("queues");
    let names: Vec<&str> = queues
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert_eq!(names, ["rabbitwatch.canary"], "nothing else declared");
    let q = &queues[0];
    assert_eq!(
        q["arguments"]["x-expires"], 10_000,
        "3 × (interval + timeout), at least 10 s: {q}"
    );
    assert_eq!(
        q["durable"], true,
        "RabbitMQ 4 refuses transient shared queues: {q}"
    );
    assert!(pages(&fake).is_empty(), "{:?}", pages(&fake));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vhost_refusing_connections_pages_connect_and_resolves() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    let probe = format!(
        "vhost: {}, amqp_url: \"{}\", interval: 500ms, timeout: 500ms",
        vhost.name(),
        vhost.amqp_url()
    );
    let cluster = cluster_with_probe("local", management_url(), vhost.name(), &probe);
    let daemon = start(cluster, &fake, FAILING_RULE).await;
    wait_healthy(&daemon).await;
    let v = encode(vhost.name());
    let limit = format!("/api/vhost-limits/{v}/max-connections");
    let http = crate::util::http_client();
    incident(
        &daemon,
        &fake,
        "connect",
        true,
        async || {
            management(
                &http,
                Method::PUT,
                &limit,
                Some(serde_json::json!({"value": 0})),
            )
            .await
            .expect("limiting the vhost to 0 connections");
            // The limit refuses new connections; the canary's own is closed as an operator would.
            eventually(
                Duration::from_secs(20),
                "the canary's connection closed",
                async || {
                    let conns = management_get(&format!("/api/vhosts/{v}/connections")).await?;
                    let names: Vec<String> = conns
                        .as_array()
                        .ok_or("no list")?
                        .iter()
                        .filter_map(|c| c["name"].as_str().map(str::to_owned))
                        .collect();
                    if names.is_empty() {
                        return Err("the connection is not listed yet".into());
                    }
                    for name in names {
                        management(
                            &http,
                            Method::DELETE,
                            &format!("/api/connections/{}", encode(&name)),
                            None,
                        )
                        .await?;
                    }
                    Ok(())
                },
            )
            .await;
        },
        async || {
            management(&http, Method::DELETE, &limit, None)
                .await
                .expect("lifting the limit");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_binding_pages_unroutable_and_resolves_when_bound_again() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    let v = encode(vhost.name());
    let http = crate::util::http_client();
    let put = |path: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            management(&http, Method::PUT, &path, Some(body))
                .await
                .expect("setting up")
        }
    };
    put(
        format!("/api/exchanges/{v}/orders"),
        serde_json::json!({"type": "direct"}),
    )
    .await;
    put(
        format!("/api/queues/{v}/orders.canary"),
        serde_json::json!({}),
    )
    .await;
    let bind = format!("/api/bindings/{v}/e/orders/q/orders.canary");
    let bind_it = async || {
        management(
            &http,
            Method::POST,
            &bind,
            Some(serde_json::json!({"routing_key": "canary"})),
        )
        .await
        .expect("binding");
    };
    bind_it().await;
    let probe = format!(
        "vhost: {}, amqp_url: \"{}\", exchange: orders, routing_key: canary, queue: orders.canary, interval: 500ms, timeout: 500ms",
        vhost.name(),
        vhost.amqp_url()
    );
    let cluster = cluster_with_probe("local", management_url(), vhost.name(), &probe);
    let daemon = start(cluster, &fake, FAILING_RULE).await;
    wait_healthy(&daemon).await;
    incident(
        &daemon,
        &fake,
        "unroutable",
        true,
        async || {
            management(&http, Method::DELETE, &format!("{bind}/canary"), None)
                .await
                .expect("unbinding");
        },
        bind_it,
    )
    .await;
    let (_, status) = daemon.get_json("/api/v1/status").await.expect("status");
    let failures = &status["clusters"][0]["probes"][0]["failures_total"];
    assert!(failures["unroutable"].as_u64() >= Some(1), "{failures}");
    // The probe declared nothing: the exchange's queue is the only one.
    let queues = management_get(&format!("/api/queues/{v}"))
        .await
        .expect("queues");
    assert_eq!(queues.as_array().map(Vec::len), Some(1), "{queues}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_blocked_and_the_node_stopped_each_page_once_and_resolve() {
    if crate::util::runs_on_private_node_only() {
        return;
    }
    let broker = PrivateBroker::start().await;
    let fake = FakeHttp::start().await;
    let probe = format!(
        "vhost: /, amqp_url: \"{}\", interval: 1s, timeout: 1s",
        broker.amqp_url()
    );
    let cluster = cluster_with_probe("private", &broker.management_url(), "/", &probe);
    let daemon = start(cluster, &fake, FAILING_RULE).await;
    wait_healthy(&daemon).await;

    let blocked = incident(
        &daemon,
        &fake,
        "blocked",
        true,
        async || {
            broker
                .ctl(&["set_vm_memory_high_watermark", "0.000001"])
                .await
        },
        async || broker.ctl(&["set_vm_memory_high_watermark", "0.4"]).await,
    )
    .await;
    wait_healthy(&daemon).await;
    let stopped = incident(
        &daemon,
        &fake,
        "connect",
        false, // stop_app stops the management API too
        async || broker.stop_app().await,
        async || broker.start_app().await,
    )
    .await;
    assert_ne!(blocked, stopped, "two incidents, two correlation ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_path_fires_the_default_packs_canary_slow_and_not_canary_failing() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    let proxy = DelayProxy::start(crate::util::amqp_addr()).await;
    let url = vhost
        .amqp_url()
        .replace(crate::util::amqp_addr(), &proxy.addr().to_string());
    let probe = format!(
        "vhost: {}, amqp_url: \"{url}\", interval: 3s, timeout: 2500ms",
        vhost.name()
    );
    let cluster = cluster_with_probe("local", management_url(), vhost.name(), &probe);
    let pack = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/canary.yaml"))
        .expect("the default canary rules");
    let daemon = start(cluster, &fake, &pack).await;
    wait_healthy(&daemon).await;
    // Everything the broker sends back arrives 1.5 s late: confirms and deliveries.
    proxy.set_delay(Duration::from_millis(1500));
    let fired = eventually(Duration::from_secs(120), "CanarySlow paged", async || {
        let all = pages(&fake);
        all.iter()
            .find(|p| p.alertname == "CanarySlow" && p.status == "firing")
            .cloned()
            .ok_or(format!("pages: {all:?}"))
    })
    .await;
    assert!(fired.summary.contains("is slow: 1.5"), "{fired:?}");
    proxy.set_delay(Duration::ZERO);
    eventually(Duration::from_secs(30), "CanarySlow resolved", async || {
        let all = pages(&fake);
        all.iter()
            .any(|p| p.alertname == "CanarySlow" && p.status == "resolved")
            .then_some(())
            .ok_or(format!("pages: {all:?}"))
    })
    .await;
    let failing: Vec<Page> = pages(&fake)
        .into_iter()
        .filter(|p| p.alertname == "CanaryFailing")
        .collect();
    assert!(failing.is_empty(), "slow is not failing: {failing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_fast_round_trips_some_timing_out_leave_nothing_behind() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    let proxy = DelayProxy::start(crate::util::amqp_addr()).await;
    let url = vhost
        .amqp_url()
        .replace(crate::util::amqp_addr(), &proxy.addr().to_string());
    let probe = format!(
        "vhost: {}, amqp_url: \"{url}\", interval: 100ms, timeout: 50ms",
        vhost.name()
    );
    let cluster = cluster_with_probe("local", management_url(), vhost.name(), &probe);
    let mut daemon = start(cluster, &fake, FAILING_RULE).await;
    wait_healthy(&daemon).await;
    // Every other 2 s the path is slower than the timeout: those round trips time out, their
    // messages arrive late (or expire first).
    for i in 0..12 {
        let slow = i % 2 == 1;
        proxy.set_delay(Duration::from_millis(if slow { 120 } else { 0 }));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    proxy.set_delay(Duration::ZERO);
    let (ok, timed_out) = eventually(Duration::from_secs(10), "round trips counted", async || {
        let (ok, timed_out) = round_trips(&daemon, "timeout").await?;
        (ok >= 100.0 && timed_out >= 5.0)
            .then_some((ok, timed_out))
            .ok_or(format!("{ok} ok, {timed_out} timed out"))
    })
    .await;
    eprintln!("{ok} round trips succeeded, {timed_out} timed out");

    let v = encode(vhost.name());
    let queue_path = format!("/api/queues/{v}/rabbitwatch.canary");
    eventually(
        Duration::from_secs(20),
        "no canary message left in the queue",
        async || {
            let q = management_get(&queue_path).await?;
            (q["messages"] == 0)
                .then_some(())
                .ok_or(format!("{} messages", q["messages"]))
        },
    )
    .await;
    let queues = management_get(&format!("/api/queues/{v}"))
        .await
        .expect("queues");
    assert_eq!(
        queues.as_array().map(Vec::len),
        Some(1),
        "one queue, however many reconnects: {queues}"
    );

    daemon.kill9();
    eventually(
        Duration::from_secs(60),
        "the canary's queue expired after the daemon stopped",
        async || {
            let queues = management_get(&format!("/api/queues/{v}")).await?;
            queues
                .as_array()
                .is_some_and(Vec::is_empty)
                .then_some(())
                .ok_or(format!("still there: {queues}"))
        },
    )
    .await;
}

#[test]
fn an_unreachable_probe_target_stops_the_start_under_require_all() {
    let tuning = Tuning::default();
    let probe = "vhost: /, amqp_url: \"amqp://guest:guest@127.0.0.1:1/%2F\", timeout: 1s";
    let config = config_with_clusters(
        free_port(),
        &tuning,
        &[cluster_with_probe("local", management_url(), "/", probe)],
    ) + "startup: { require: all }\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rw.yaml");
    std::fs::write(&path, config).expect("writing the config");
    let out = run_cli(
        &["run", "--config", path.to_str().expect("utf-8")],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("probe rabbitwatch.canary (amqp://guest@127.0.0.1:1, vhost /): connect"),
        "{stderr}"
    );
}
