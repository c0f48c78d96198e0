//! A throw-away RabbitMQ node of the test's own, for faults the shared broker must never suffer
//! (`rabbitmqctl stop_app` would pull it from under the parallel suite).
//!
//! Started from the installed Debian package (`/usr/lib/rabbitmq`) under its own node name, on free
//! ports (AMQP, management, Erlang distribution; EPMD is shared), with its own HOME (Erlang cookie),
//! data, logs, config and enabled-plugins file, all in a temp dir. The whole process group is killed
//! with SIGKILL when the handle drops, and also when the test process dies without dropping it: a
//! small shell wrapper waits on a pipe from the test and kills its group when the pipe closes.
//!
//! On a busy 2-core machine a node took 6–11 s to boot and held about 160 MB resident.

#![allow(dead_code)] // not every test uses every helper

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::util::http_client;

/// Where the Debian package keeps the scripts that run a node directly (the `/usr/sbin` wrappers
/// switch to the `rabbitmq` user and its fixed HOME, which would share the system node's cookie).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";
const USERNAME: &str = "guest";
const PASSWORD: &str = "guest";
/// A CLI command that takes longer than this is stuck: the node is unwell, the test cannot go on.
const CTL_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs its first argument in the background, then waits for its stdin to close (the test's end
/// of the pipe: dropped, or the test process gone) and kills its whole process group.
const WRAPPER: &str = r#""$0" &
read -r _ || true
kill -KILL 0
"#;

pub struct PrivateBroker {
    node: String,
    dir: tempfile::TempDir,
    child: Child,
    /// Held only so that it closes (and the wrapper kills the node) when the test process dies.
    _lifeline: ChildStdin,
    amqp_port: u16,
    management_port: u16,
    dist_port: u16,
    boot_time: Duration,
    http: reqwest::Client,
}

impl PrivateBroker {
    /// Boots a node with the management plugin and returns once its API answers.
    pub async fn start() -> PrivateBroker {
        PrivateBroker::start_with("").await
    }

    /// Like `start`, with `extra` appended to the node's `rabbitmq.conf` (e.g.
    /// `management.rates_mode = none`).
    pub async fn start_with(extra: &str) -> PrivateBroker {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let started = Instant::now();
        let node = format!(
            "rw-it-{}-{}@localhost",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("rabbitwatch-broker-")
            .tempdir()
            .expect("creating the private broker's temp dir");
        let [amqp_port, management_port, dist_port] = free_ports();
        write_files(dir.path(), amqp_port, management_port, extra);

        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WRAPPER)
            .arg(Path::new(RABBITMQ_BIN).join("rabbitmq-server"))
            .envs(node_env(dir.path(), &node))
            .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.path().join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                dir.path().join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.path().join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env("RABBITMQ_PID_FILE", dir.path().join("beam.pid"))
            // Distribution on loopback only, like the system node.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(log_file(dir.path()))
            .stderr(log_file(dir.path()))
            .process_group(0);
        let mut child = command.spawn().expect("spawning rabbitmq-server");
        let lifeline = child.stdin.take().expect("the wrapper's stdin");
        let mut broker = PrivateBroker {
            node,
            dir,
            child,
            _lifeline: lifeline,
            amqp_port,
            management_port,
            dist_port,
            boot_time: Duration::ZERO,
            http: http_client(),
        };
        broker
            .wait_for_management(Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("the private broker did not come up: {e}"));
        broker.boot_time = started.elapsed();
        broker
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.management_port)
    }

    pub fn amqp_url(&self) -> String {
        format!(
            "amqp://{USERNAME}:{PASSWORD}@127.0.0.1:{}/%2f",
            self.amqp_port
        )
    }

    /// From spawning `rabbitmq-server` to the management API answering.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Resident memory of the node's Erlang VM, in bytes.
    pub fn rss_bytes(&self) -> Result<u64, String> {
        let pid_file = self.dir.path().join("beam.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("reading {}: {e}", pid_file.display()))?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
            .map_err(|e| format!("reading the status of pid {}: {e}", pid.trim()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| "no VmRSS line".to_string())
    }

    /// `rabbitmqctl stop_app`: the Erlang VM stays, RabbitMQ (AMQP, management API, queues) stops.
    pub async fn stop_app(&self) {
        self.ctl(&["stop_app"]).await;
    }

    /// `rabbitmqctl start_app`; returns once the command did (the API may still be coming up).
    pub async fn start_app(&self) {
        self.ctl(&["start_app"]).await;
    }

    /// `rabbitmqctl -n NODE ARGS…`; panics unless it succeeds.
    pub async fn ctl(&self, args: &[&str]) {
        let mut command = tokio::process::Command::new(Path::new(RABBITMQ_BIN).join("rabbitmqctl"));
        command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .envs(node_env(self.dir.path(), &self.node))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let what = format!("rabbitmqctl -n {} {}", self.node, args.join(" "));
        let output = tokio::time::timeout(CTL_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within {CTL_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("running {what}: {e}"));
        assert!(
            output.status.success(),
            "{what} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Polls `/api/overview` until it answers 200; returns how long that took.
    pub async fn wait_for_management(&mut self, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("rabbitmq-server exited ({status})"));
            }
            let last = match self.get("/api/overview").await {
                Ok((200, _)) => return Ok(started.elapsed()),
                Ok((status, body)) => format!("{status}: {body}"),
                Err(e) => e,
            };
            if started.elapsed() > within {
                return Err(format!("no answer within {within:?}; last: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `/api/overview` every 50 ms until it stops answering 200, and returns when it first
    /// did not: the moment a client of the API saw the broker go away.
    pub async fn wait_until_management_fails(&self, within: Duration) -> Instant {
        let started = Instant::now();
        loop {
            let probe = Instant::now();
            if !matches!(self.get("/api/overview").await, Ok((200, _))) {
                return probe;
            }
            assert!(
                started.elapsed() < within,
                "the management API still answered after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Declares a durable classic queue in the default vhost: it survives `stop_app`.
    pub async fn declare_durable_queue(&self, queue: &str) {
        let body = serde_json::json!({"durable": true, "auto_delete": false});
        self.expect_ok(Method::PUT, &format!("/api/queues/%2f/{queue}"), body)
            .await;
    }

    /// Publishes `n` persistent messages to `queue` through the default exchange, one request each.
    pub async fn publish_persistent(&self, queue: &str, n: usize) {
        let body = serde_json::json!({
            "properties": {"delivery_mode": 2},
            "routing_key": queue,
            "payload": "rabbitwatch test message",
            "payload_encoding": "string",
        });
        for _ in 0..n {
            let reply = self
                .expect_ok(
                    Method::POST,
                    "/api/exchanges/%2f/amq.default/publish",
                    body.clone(),
                )
                .await;
            assert!(
                reply.contains(r#""routed":true"#),
                "publishing to {queue:?}: {reply}"
            );
        }
    }

    /// The broker's own view of `queue`, as `/api/queues/%2f/{queue}` returns it.
    pub async fn queue(&self, queue: &str) -> Result<serde_json::Value, String> {
        match self.get(&format!("/api/queues/%2f/{queue}")).await? {
            (200, body) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            (status, body) => Err(format!("{status}: {body}")),
        }
    }

    async fn get(&self, path: &str) -> Result<(u16, String), String> {
        self.request(Method::GET, path, None).await
    }

    async fn expect_ok(&self, method: Method, path: &str, body: serde_json::Value) -> String {
        match self.request(method.clone(), path, Some(body)).await {
            Ok((status, reply)) if (200..300).contains(&status) => reply,
            Ok((status, reply)) => panic!("{method} {path}: {status}: {reply}"),
            Err(e) => panic!("{e}"),
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, String), String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.management_url()))
            .basic_auth(USERNAME, Some(PASSWORD))
            .timeout(Duration::from_secs(5));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
        Ok((status, text))
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join("log")
            .join(format!("{}.log", self.node))
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // The wrapper made itself a process group: the VM and its helpers (erl_child_setup,
        // inet_gethost, the disk monitor) all die with it.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "private broker {} files kept in {}",
                self.node,
                self.dir.path().display()
            );
            for log in [self.dir.path().join("console.log"), self.log_path()] {
                eprintln!("----- {}, last 60 lines -----", log.display());
                eprintln!("{}", tail(&log, 60));
            }
        }
    }
}

/// What both the node and `rabbitmqctl` need to find each other: the node name, the cookie's HOME,
/// our env file instead of the system node's `/etc/rabbitmq/rabbitmq-env.conf`, EPMD on loopback.
fn node_env(dir: &Path, node: &str) -> Vec<(&'static str, std::ffi::OsString)> {
    vec![
        ("HOME", dir.join("home").into()),
        (
            "RABBITMQ_CONF_ENV_FILE",
            dir.join("rabbitmq-env.conf").into(),
        ),
        ("RABBITMQ_NODENAME", node.into()),
        ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
    ]
}

fn write_files(dir: &Path, amqp_port: u16, management_port: u16, extra: &str) {
    let write = |name: &str, contents: &str| {
        std::fs::write(dir.join(name), contents)
            .unwrap_or_else(|e| panic!("writing the private broker's {name}: {e}"));
    };
    for sub in ["home", "mnesia", "log"] {
        std::fs::create_dir(dir.join(sub))
            .unwrap_or_else(|e| panic!("creating the private broker's {sub} dir: {e}"));
    }
    let cookie_path = dir.join("home").join(".erlang.cookie");
    let cookie: String = std::iter::repeat_with(fastrand::uppercase)
        .take(20)
        .collect();
    std::fs::write(&cookie_path, cookie).expect("writing the Erlang cookie");
    // Erlang refuses a cookie file that others can read.
    std::fs::set_permissions(&cookie_path, std::fs::Permissions::from_mode(0o400))
        .expect("making the Erlang cookie private");
    write(
        "rabbitmq-env.conf",
        "# the private broker's own: settings come from the environment\n",
    );
    write(
        "rabbitmq.conf",
        &format!(
            "listeners.tcp.local = 127.0.0.1:{amqp_port}\n\
             management.tcp.ip = 127.0.0.1\n\
             management.tcp.port = {management_port}\n{extra}\n"
        ),
    );
    write("enabled_plugins", "[rabbitmq_management].\n");
}

fn log_file(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("console.log"))
        .expect("opening the private broker's console log")
}

/// Distinct free ports, found by holding each listener until all are chosen.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("finding a free port"))
        .collect();
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .expect("a bound listener's address")
            .port()
    })
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
