//! A real Alertmanager cluster (the Debian `prometheus-alertmanager` binary), its peers gossiping on
//! loopback, each with its own ports and temp dir, notifying one webhook. Killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{eventually, free_port, http_client};

const BINARY: &str = "/usr/bin/prometheus-alertmanager";

pub struct AlertmanagerPeer {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl AlertmanagerPeer {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AlertmanagerPeer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `n` peers that form one cluster and send every notification to `webhook` (grouped by
/// alertname and the alert's entity, 1 s group_wait, 2 s group_interval, no repeats during a test).
/// Returns once every peer is ready and sees the others.
pub async fn start_cluster(n: usize, webhook: &str) -> Vec<AlertmanagerPeer> {
    let gossip: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let config = format!(
        r#"route:
  receiver: hook
  group_by: [alertname, cluster, vhost, queue]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: "{webhook}"
        send_resolved: true
"#
    );
    let mut peers = Vec::new();
    for (i, own) in gossip.iter().enumerate() {
        let dir = tempfile::Builder::new()
            .prefix("rabbitwatch-am-")
            .tempdir()
            .expect("a temp dir for alertmanager");
        std::fs::write(dir.path().join("am.yml"), &config).expect("writing am.yml");
        let port = free_port();
        let mut command = Command::new(BINARY);
        command
            .arg(format!(
                "--config.file={}",
                dir.path().join("am.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--cluster.listen-address=127.0.0.1:{own}"))
            .arg(format!("--cluster.advertise-address=127.0.0.1:{own}"))
            // The second peer holds its notification this long for the first one's to gossip over.
            .arg("--cluster.peer-timeout=2s")
            .arg("--cluster.settle-timeout=2s")
            .arg("--log.level=warn");
        for (j, other) in gossip.iter().enumerate() {
            if i != j {
                command.arg(format!("--cluster.peer=127.0.0.1:{other}"));
            }
        }
        let log = std::fs::File::create(dir.path().join("am.log")).expect("am.log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {BINARY} (apt-get install prometheus-alertmanager): {e}")
            });
        peers.push(AlertmanagerPeer {
            child,
            _dir: dir,
            port,
        });
    }
    let http = http_client();
    for p in &peers {
        let status = format!("{}/api/v2/status", p.url());
        eventually(
            Duration::from_secs(30),
            "alertmanager ready and clustered",
            async || {
                let body: serde_json::Value = http
                    .get(&status)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let seen = body["cluster"]["peers"].as_array().map_or(0, Vec::len);
                (body["cluster"]["status"] == "ready" && seen == n)
                    .then_some(())
                    .ok_or(format!("cluster: {}", body["cluster"]))
            },
        )
        .await;
    }
    peers
}
