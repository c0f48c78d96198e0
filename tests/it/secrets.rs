//! Secrets stay secret: a daemon configured with a RabbitMQ password, a Slack webhook URL (itself a
//! credential), an API token and an HMAC secret is driven through success and failure, and every output
//! a user or an attacker could read — logs, /metrics, the API, health endpoints, `check` — is scanned.

use std::time::Duration;

use crate::util::{
    Daemon, TestVhost, Tuning, cluster_yaml, config_with_clusters, eventually, free_port,
    management_url, publish_n, run_cli,
};

const TOKEN: &str = "api-token-5ecret-1b2c";
const HOOK_SECRET: &str = "T00000000/B00000000/5ecretWebhookPath9";
const HMAC: &str = "hmac-5ecret-77aa";
/// The canary's AMQP password (wrong on purpose, so its refusal is in the outputs too).
const AMQP_PASSWORD: &str = "Amqp-5ecret-pw-31";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_metrics_api_or_errors() {
    let vhost = TestVhost::create().await;
    let tuning = Tuning::default();
    // The second cluster's password is wrong on purpose: its 401 must not echo anything secret.
    let clusters = [
        cluster_yaml("good", management_url(), vhost.name(), &tuning)
            + &format!(
                "    probe:\n      - {{ vhost: {}, amqp_url_file: amqp.txt, interval: 500ms, timeout: 500ms }}\n",
                vhost.name()
            ),
        cluster_yaml("wrongpw", management_url(), vhost.name(), &tuning)
            .replace("password: guest", "password: Wr0ng-5ecret-pw"),
    ];
    let config = config_with_clusters(free_port(), &tuning, &clusters)
        .replace("server:\n", "server:\n  api_token_file: token.txt\n")
        + &format!(
            r#"rules: [rules.yaml]
receivers:
  - name: slack
    slack: {{ webhook_url: "http://127.0.0.1:1/services/{HOOK_SECRET}" }}
  - name: hook
    webhook: {{ url: "http://127.0.0.1:1/scale", hmac_secret_file: hmac.txt }}
route:
  receiver: slack
  group_wait: 0s
  routes:
    - {{ matchers: ["severity=warning"], receiver: hook, continue: true }}
    - {{ receiver: slack }}
outbox: {{ max_backoff: 1s }}
"#
        );
    let rules = "groups:\n  - name: t\n    rules:\n      - alert: Backlog\n        scope: queue\n        expr: messages_ready > 0\n";
    let daemon = Daemon::start_with_files(
        &config,
        &[
            ("rules.yaml", rules),
            ("token.txt", TOKEN),
            ("hmac.txt", HMAC),
            (
                "amqp.txt",
                &format!(
                    "amqp://guest:{AMQP_PASSWORD}@{}/{}",
                    crate::util::amqp_addr(),
                    crate::util::encode(vhost.name())
                ),
            ),
        ],
    )
    .await;
    publish_n(&vhost.amqp_url(), "orders", 3).await;

    // Let both receivers fail a few times (nothing listens on port 1) and the bad cluster fail too.
    eventually(
        Duration::from_secs(30),
        "failed deliveries on both receivers",
        async || {
            let m = daemon.metrics().await?;
            let retried = |r: &str| {
                crate::util::find(
                    &m,
                    "rabbitwatch_notifications_total",
                    &[("receiver", r), ("outcome", "retried")],
                )
            };
            let refused =
                crate::util::find(&m, "rabbitwatch_probe_failures_total", &[("error", "auth")]);
            (retried("slack").unwrap_or(0.0) >= 2.0
                && retried("hook").unwrap_or(0.0) >= 2.0
                && refused.unwrap_or(0.0) >= 2.0)
                .then_some(())
                .ok_or(format!(
                    "slack={:?} hook={:?} canary refused={refused:?}",
                    retried("slack"),
                    retried("hook")
                ))
        },
    )
    .await;

    let mut outputs = Vec::new();
    for path in [
        "/metrics",
        "/api/v1/status",
        "/api/v1/alerts",
        "/api/v1/queues",
        "/readyz",
        "/healthz",
        "/api/v1/deadletters",
        "/api/v1/silences",
    ] {
        let (_, body) = daemon.get(path).await.expect(path);
        outputs.push((path.to_string(), body));
    }
    let (status, body) = daemon.post("/-/reload").await.expect("reload");
    assert_eq!(
        status, 401,
        "reload without the token must be refused: {body}"
    );
    outputs.push(("POST /-/reload".into(), body));
    let check = run_cli(
        &[
            "check",
            "--config",
            daemon
                .dir()
                .join("rabbitwatch.yaml")
                .to_str()
                .expect("utf-8"),
        ],
        daemon.dir(),
    );
    outputs.push((
        "check".into(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ),
    ));
    for log in ["stdout.log", "stderr.log"] {
        outputs.push((
            log.into(),
            std::fs::read_to_string(daemon.dir().join(log)).unwrap_or_default(),
        ));
    }
    let logs = &outputs[outputs.len() - 1].1;
    assert!(
        logs.contains("notification failed"),
        "the scan must cover failure logs too:\n{logs}"
    );

    for secret in [
        TOKEN,
        HOOK_SECRET,
        "5ecretWebhookPath9",
        HMAC,
        "Wr0ng-5ecret-pw",
        AMQP_PASSWORD,
    ] {
        for (name, text) in &outputs {
            assert!(!text.contains(secret), "{name} leaks {secret:?}:\n{text}");
        }
    }
}
