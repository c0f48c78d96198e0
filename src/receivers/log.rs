//! Log: one JSON line per notification (the notification itself plus `ts`), to stdout or appended
//! to a file. Useful as a receiver of last resort and for audits; I/O errors are transient.
//!
//! The file is opened for each line (append mode), so rotation by rename or truncation is picked up
//! without a signal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use tokio::io::AsyncWriteExt;

use super::{Delivered, DeliveryError, Notification, Reason};
use crate::yaml::{S, Values};

#[derive(Clone, Debug, Default)]
pub struct LogConfig {
    /// Append here; stdout when `None`.
    pub path: Option<PathBuf>,
}

/// `log:` as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogConfig {
    path: Option<S>,
}

impl RawLogConfig {
    /// A relative path is relative to the config file.
    pub fn validate(&self, v: &mut Values<'_>) -> LogConfig {
        LogConfig {
            path: self.path.as_ref().map(|p| v.path(p)),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogReceiver {
    name: String,
    cfg: LogConfig,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    notification: &'a Notification,
}

/// The line written for `n` at `now`, newline included.
pub fn render_line(n: &Notification, now: SystemTime) -> Vec<u8> {
    let line = Line {
        ts: humantime::format_rfc3339_millis(now).to_string(),
        notification: n,
    };
    // Plain data (strings, maps, finite or null floats): serialising cannot fail.
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

impl LogReceiver {
    pub fn new(name: impl Into<String>, cfg: LogConfig) -> Self {
        LogReceiver {
            name: name.into(),
            cfg,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn deliver(&self, n: &Notification) -> Result<Delivered, DeliveryError> {
        let line = render_line(n, SystemTime::now());
        let written = match &self.cfg.path {
            Some(path) => append(path, &line).await,
            // One `write_all` on the locked handle: the line is not interleaved with other output.
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line).and_then(|()| out.flush())
            }
        };
        written.map(|()| Delivered::default()).map_err(|e| {
            let target = self
                .cfg
                .path
                .as_ref()
                .map_or("stdout".to_owned(), |p| p.display().to_string());
            DeliveryError::Transient {
                reason: Reason::Io,
                message: format!("writing to {target}: {e}"),
                retry_after: None,
            }
        })
    }
}

async fn append(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    file.write_all(line).await?;
    file.flush().await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::GroupStatus;

    fn notification(key: &str) -> Notification {
        Notification {
            receiver: "audit".to_owned(),
            group_key: "g".to_owned(),
            status: GroupStatus::Firing,
            group_labels: BTreeMap::new(),
            common_labels: BTreeMap::new(),
            common_annotations: BTreeMap::new(),
            alerts: Vec::new(),
            idempotency_key: key.to_owned(),
            flapping: false,
            previous: None,
            amends: false,
            created_at: 1,
            scaling: None,
        }
    }

    #[tokio::test]
    async fn each_notification_is_appended_as_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notifications.jsonl");
        std::fs::write(&path, "earlier line\n").unwrap();
        let receiver = LogReceiver::new(
            "audit",
            LogConfig {
                path: Some(path.clone()),
            },
        );
        receiver.deliver(&notification("k1")).await.unwrap();
        receiver.deliver(&notification("k2")).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "earlier line");
        for (line, key) in lines[1..].iter().zip(["k1", "k2"]) {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(json["idempotency_key"], key);
            assert_eq!(json["status"], "firing");
            assert!(json["ts"].as_str().unwrap().ends_with('Z'));
        }
    }

    #[tokio::test]
    async fn an_unwritable_path_is_a_transient_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = LogReceiver::new(
            "audit",
            LogConfig {
                path: Some(dir.path().join("missing-dir").join("x.jsonl")),
            },
        );
        let e = receiver.deliver(&notification("k")).await.unwrap_err();
        assert!(e.is_retriable());
        assert_eq!(e.reason(), Reason::Io);
    }
}
