//! A real Prometheus scrapes the daemon: the exposition must satisfy `promtool check metrics`, and every
//! PromQL expression the shipped dashboards use must run and return data.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{
    CLUSTER, Daemon, TestVhost, Tuning, cluster_yaml, config_for, config_with_clusters,
    consume_at_rate, eventually, free_port, http_client, management_url, publish_at_rate,
    stream_addr,
};
use crate::util_stream::{OffsetSpec, StreamClient, Subscription};

/// A stream fed at 10/s, read by an AMQP consumer (whose lag is unknown) and by the named
/// stream-protocol reader `reader`, so the stream readers' families have series. Keep the
/// returned values alive for as long as the series are wanted.
async fn read_stream(
    vhost: &TestVhost,
    stream: &str,
) -> (
    crate::util::Traffic,
    crate::util::Traffic,
    StreamClient,
    Subscription,
) {
    let publisher = publish_at_rate(&vhost.amqp_url(), stream, 10).await;
    let amqp_reader = consume_at_rate(&vhost.amqp_url(), stream, 50).await;
    let client = StreamClient::connect(stream_addr(), vhost.name(), "guest", "guest", "rw-test")
        .await
        .expect("connecting over the stream protocol");
    let sub = client
        .subscribe(stream, Some("reader"), OffsetSpec::First, 10)
        .await
        .expect("subscribing");
    (publisher, amqp_reader, client, sub)
}

/// A Prometheus server of the test's own: free port, temp storage, killed on drop.
pub(crate) struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    pub(crate) url: String,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        Prometheus::start_with_rules(target, None)
    }

    /// Scrapes `target` every second and, with `rules` (a rule file's text), evaluates them every
    /// second.
    pub(crate) fn start_with_rules(target: &str, rules: Option<&str>) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir for Prometheus");
        let config = dir.path().join("prometheus.yml");
        let rule_files = match rules {
            Some(text) => {
                let path = dir.path().join("rules.yml");
                std::fs::write(&path, text).expect("writing the rule file");
                format!("rule_files: ['{}']\n", path.display())
            }
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n  - job_name: rabbitwatch\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log file"))
            .spawn()
            .expect("starting prometheus (scripts/services installs it)");
        Prometheus {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Runs an instant query; `Ok(n)` is the number of series returned.
    async fn query(&self, client: &reqwest::Client, expr: &str) -> Result<usize, String> {
        let resp = client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| format!("query failed: {e}"))?;
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("non-JSON answer: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("error: {body}"));
        }
        let result = &body["data"]["result"];
        Ok(result
            .as_array()
            .map_or(usize::from(!result.is_null()), Vec::len))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression in a dashboard: panel targets and query variables (Grafana's own
/// `label_values(…)` syntax is not PromQL and is skipped).
fn dashboard_exprs(path: &Path) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    match (k.as_str(), child) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        ("query", serde_json::Value::String(s))
                            if map.get("type").and_then(|t| t.as_str()) == Some("query")
                                && !s.trim_start().starts_with("label_values") =>
                        {
                            out.push(s.clone())
                        }
                        _ => walk(child, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(path).expect("reading a dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboards are valid JSON");
    let mut out = Vec::new();
    walk(&json, &mut out);
    out
}

/// A shadow-mode `scalers:` section for one queue (its figures are exported; nothing is sent).
fn scaler_yaml(name: &str, vhost: &str, queue: &str) -> String {
    format!(
        "scalers:\n  - {{ name: {name}, cluster: {CLUSTER}, vhost: \"{vhost}\", queue: \"{queue}\", per_consumer_rate: 10, max: 20, mode: shadow }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_runs_every_dashboard_query_against_the_daemon() {
    let vhost = TestVhost::create().await;
    let port = free_port();
    let queue = "dash.orders";
    // A shadow scaler on the queue, so the scaler panel's series exist too, and a canary in the
    // test's vhost, so the canary panels' series do.
    let cluster = cluster_yaml(CLUSTER, management_url(), vhost.name(), &Tuning::default())
        + &format!(
            "    probe:\n      - {{ vhost: \"{}\", amqp_url: \"{}\", interval: 1s }}\n",
            vhost.name(),
            vhost.amqp_url()
        );
    let config = config_with_clusters(port, &Tuning::default(), &[cluster])
        + &scaler_yaml("dash", vhost.name(), queue);
    let daemon = Daemon::start(&config).await;
    let _publisher = publish_at_rate(&vhost.amqp_url(), queue, 20).await;
    let _consumer = consume_at_rate(&vhost.amqp_url(), queue, 10).await;
    let _stream = read_stream(&vhost, "stream.dash").await;
    let prometheus = Prometheus::start(&format!("127.0.0.1:{port}"));
    let client = http_client();

    let dashboards = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut exprs = Vec::new();
    for entry in std::fs::read_dir(&dashboards).expect("dashboards/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            exprs.extend(
                dashboard_exprs(&path)
                    .into_iter()
                    .map(|e| (path.clone(), e)),
            );
        }
    }
    assert!(
        exprs.len() >= 10,
        "expected the dashboards to hold queries, found {}",
        exprs.len()
    );

    for (path, expr) in &exprs {
        let concrete = expr
            .replace("$cluster", CLUSTER)
            .replace("$vhost", vhost.name())
            .replace("$queue", queue)
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1m");
        let what = format!(
            "{}: `{concrete}` returns data",
            path.file_name().unwrap().to_string_lossy()
        );
        eventually(Duration::from_secs(90), &what, async || {
            match prometheus.query(&client, &concrete).await? {
                0 => Err("no series yet".to_string()),
                n => Ok(n),
            }
        })
        .await;
    }
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_wrong_with_live_metrics() {
    let vhost = TestVhost::create().await;
    let config = config_for(vhost.name(), free_port(), &Tuning::default())
        + &scaler_yaml("lint", vhost.name(), "lint.q");
    let daemon = Daemon::start(&config).await;
    let _publisher = publish_at_rate(&vhost.amqp_url(), "lint.q", 10).await;
    let _consumer = consume_at_rate(&vhost.amqp_url(), "lint.q", 5).await;
    let _stream = read_stream(&vhost, "stream.lint").await;
    // Lint an exposition that has every family populated, rates included.
    // The scaler's desired count appears once its queue's rates stand on a whole window (30 s here).
    let text = eventually(
        Duration::from_secs(60),
        "queue rates and the scaler's desired count in /metrics",
        async || {
            let text = daemon.metrics_text().await?;
            if text.contains("rabbitwatch_queue_publish_rate{")
                && text.contains("rabbitwatch_scaler_desired_consumers{")
                && text.contains("rabbitwatch_stream_consumer_lag_growth_rate{")
                && text.contains("rabbitwatch_stream_unknown_readers{")
            {
                Ok(text)
            } else {
                Err("no rate series yet".to_string())
            }
        },
    )
    .await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (scripts/services installs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("promtool stdin");
        stdin.write_all(text.as_bytes()).expect("feeding promtool");
    }
    let out = child.wait_with_output().expect("promtool finished");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
}

/// The daemon's own resource use is on `/metrics` under the names every Prometheus client library uses,
/// so a dashboard or alert written for any exporter's memory works on rabbitwatch, and the figures are
/// the kernel's, not estimates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reports_its_own_memory_cpu_and_files() {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let vhost = TestVhost::create().await;
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;
    let samples = daemon.metrics().await.expect("/metrics");
    let value = |name: &str| {
        let found: Vec<f64> = samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{name}: expected one unlabelled series, got {found:?}"
        );
        found[0]
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .expect("reading the daemon's /proc status");
    let kernel_rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("VmRSS in /proc status")
        * 1024.0;
    let rss = value("process_resident_memory_bytes");
    // Read moments apart, so not equal, but the same order of magnitude.
    assert!(
        rss > kernel_rss * 0.5 && rss < kernel_rss * 2.0,
        "reported RSS {rss} vs the kernel's {kernel_rss}"
    );
    assert!(value("process_virtual_memory_bytes") >= rss);
    let start = value("process_start_time_seconds");
    assert!(
        (started - 1.0..started + 120.0).contains(&start),
        "start time {start} but the test began at {started}"
    );
    // The daemon holds at least its listening socket, the state store and its log files.
    let fds = value("process_open_fds");
    assert!(
        fds >= 4.0 && fds <= value("process_max_fds"),
        "{fds} open fds"
    );
    assert!(value("process_cpu_seconds_total") > 0.0);
    let in_use = value("rabbitwatch_heap_in_use_bytes");
    assert!(
        in_use > 0.0 && in_use < rss * 2.0,
        "heap in use {in_use} with RSS {rss}"
    );
    value("rabbitwatch_heap_free_bytes");
    drop(daemon);
}

/// Prometheus asks for gzip. The answer must be one gzip member (a decoder that stops after the first
/// member still reads all of it) holding exactly the series a client without gzip gets, and a scrape
/// after the next cycle must show that cycle's values, not the kept ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_scrape_holds_exactly_the_series_of_a_plain_one() {
    use std::io::Read;
    let vhost = TestVhost::create().await;
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;
    let _publisher = publish_at_rate(&vhost.amqp_url(), "gzip.q", 20).await;
    let raw = reqwest::Client::builder()
        .no_gzip()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client without automatic decompression");
    let url = format!("{}/metrics", daemon.base_url());
    let scrape = async |gzip: bool| -> Result<(Option<String>, String), String> {
        let mut request = raw.get(&url);
        if gzip {
            request = request.header("accept-encoding", "gzip");
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let encoding = response
            .headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        let text = if encoding.is_some() {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut text)
                .map_err(|e| format!("gzip body: {e}"))?;
            text
        } else {
            String::from_utf8(body.to_vec()).map_err(|e| e.to_string())?
        };
        Ok((encoding, text))
    };
    let depth = |text: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("rabbitwatch_queue_messages{") && l.contains("queue=\"gzip.q\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let first = eventually(
        Duration::from_secs(30),
        "the queue's depth in a gzip scrape",
        async || {
            let (_, text) = scrape(true).await?;
            depth(&text)
                .filter(|d| *d > 0.0)
                .ok_or_else(|| "no backlog yet".to_string())
        },
    )
    .await;
    let series = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .map(|l| match l.strip_prefix('#') {
                Some(_) => l.to_string(),
                None => l.rsplit_once(' ').map_or(l, |(s, _)| s).to_string(),
            })
            .collect()
    };
    let (encoding, gzipped) = scrape(true).await.expect("gzip scrape");
    assert_eq!(encoding.as_deref(), Some("gzip"));
    let (encoding, plain) = scrape(false).await.expect("plain scrape");
    assert_eq!(encoding, None);
    assert_eq!(series(&gzipped), series(&plain));
    // The publisher keeps the backlog growing: later cycles must show larger depths through gzip too.
    eventually(
        Duration::from_secs(30),
        "a deeper queue in a later gzip scrape",
        async || {
            let (_, text) = scrape(true).await?;
            match depth(&text) {
                Some(d) if d > first => Ok(()),
                d => Err(format!("depth {d:?}, first seen {first}")),
            }
        },
    )
    .await;
    drop(daemon);
}
