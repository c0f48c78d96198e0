//! `rabbitwatch rules export --format prometheus`: the default pack as a Prometheus rule file that
//! promtool accepts, whose promtool tests (converted from the pack's own rule tests) agree with
//! `rabbitwatch test rules`, and which a real Prometheus scraping a real daemon evaluates to the same
//! alert, with the same labels, as the daemon itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::prometheus::Prometheus;
use crate::util::{
    Daemon, TestVhost, Tuning, config_for, eventually, free_port, http_client, publish_n, run_cli,
};

/// The exit status of `rules export` when something was dropped (src/cli.rs).
const EXIT_DROPPED: i32 = 3;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default pack's rule files, relative to the repository.
const PACK: [&str; 4] = [
    "rules/broker.yaml",
    "rules/canary.yaml",
    "rules/queue-health.yaml",
    "rules/streams.yaml",
];

/// The line of `- alert: NAME` in the rule file `file` (relative to the repository).
fn line_of(file: &str, alert: &str) -> usize {
    let text = std::fs::read_to_string(repo().join(file)).expect("reading a rule file");
    let needle = format!("- alert: {alert}");
    text.lines()
        .position(|l| l.trim() == needle)
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{file} has no rule {alert}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn promtool(args: &[&str], dir: &Path) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool (the Debian prometheus package)")
}

#[test]
fn the_exported_default_pack_passes_promtool_check_rules_and_says_what_it_dropped() {
    let mut args = vec!["rules", "export", "--format", "prometheus"];
    args.extend(PACK);
    let out = run_cli(&args, &repo());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(EXIT_DROPPED), "{stderr}");
    // Each loss is said on its rule, at its file and line.
    for (file, alert, said) in [
        ("rules/canary.yaml", "CanarySlow", "dropped rule: skipped"),
        (
            "rules/queue-health.yaml",
            "DeadLetterQueueReceiving",
            "dropped rule: skipped",
        ),
        (
            "rules/queue-health.yaml",
            "QueueNearMaxLength",
            "dropped rule: skipped",
        ),
        (
            "rules/queue-health.yaml",
            "QueuePoisonMessagesDropped",
            "dropped rule: skipped",
        ),
        (
            "rules/broker.yaml",
            "DeprecatedFeatureUsed",
            "dropped rule: skipped",
        ),
        (
            "rules/queue-health.yaml",
            "QueueNoConsumers",
            "dropped expr: is_dead_letter_target",
        ),
        (
            "rules/queue-health.yaml",
            "QueueBacklogGrowing",
            "approximated clear",
        ),
        (
            "rules/canary.yaml",
            "CanaryFailing",
            "dropped annotations.summary: {{ probe_error }}",
        ),
        (
            "rules/broker.yaml",
            "NodeMemoryAlarm",
            "reformatted annotations.description: `bytes`",
        ),
    ] {
        let said = format!("{file}:{}: rule {alert}: {said}", line_of(file, alert));
        assert!(stderr.contains(&said), "stderr lacks {said:?}:\n{stderr}");
    }
    assert!(stderr.contains("14 of 19 rule(s) exported"), "{stderr}");

    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("rabbitwatch.rules.yml");
    std::fs::write(&file, &stdout).expect("writing the exported rules");
    let check = promtool(&["check", "rules", "rabbitwatch.rules.yml"], dir.path());
    assert!(
        check.status.success(),
        "promtool check rules failed:\n{}{}\n{stdout}",
        text(&check.stdout),
        text(&check.stderr)
    );
    assert!(
        text(&check.stdout).contains("SUCCESS: 14 rules found"),
        "{}",
        text(&check.stdout)
    );
}

#[test]
fn promtool_test_rules_agrees_with_rabbitwatch_test_rules_on_the_default_packs_scenarios() {
    let tests: Vec<String> = ["broker", "canary", "queue-health", "streams", "watchdog"]
        .iter()
        .map(|t| format!("rules/tests/{t}.yaml"))
        .collect();
    let mut ours = vec!["test", "rules"];
    ours.extend(tests.iter().map(String::as_str));
    let out = run_cli(&ours, &repo());
    assert!(out.status.success(), "{}", text(&out.stdout));

    let dir = tempfile::tempdir().expect("a temp dir");
    let out_dir = dir.path().display().to_string();
    let mut convert = vec!["rules", "export-tests", "--out", &out_dir];
    convert.extend(tests.iter().map(String::as_str));
    let out = run_cli(&convert, &repo());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_DROPPED), "{stderr}");
    // The checks left out are those of rules whose condition is not exported whole, and those
    // expecting an alert whose annotations Prometheus renders differently: nothing else.
    let left_out: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" left out: "))
        .collect();
    for line in &left_out {
        let alert = line
            .split(" left out: ")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .unwrap_or_default();
        assert!(
            [
                "CanarySlow",
                "DeadLetterQueueReceiving",
                "QueueNearMaxLength",
                "QueueNoConsumers",
                "QueuePoisonMessagesDropped",
                "DeprecatedFeatureUsed",
                "CanaryFailing",
                "NodeMemoryAlarm",
            ]
            .contains(&alert),
            "unexpected: {line}"
        );
    }
    let mut checks = 0;
    let mut firing_checks = 0;
    for t in ["broker", "canary", "queue-health", "streams", "watchdog"] {
        let file = format!("{t}.test.yaml");
        let yaml = std::fs::read_to_string(dir.path().join(&file)).expect("a converted test");
        checks += yaml.matches("eval_time:").count();
        firing_checks += yaml.matches("- exp_labels:").count();
        let run = promtool(&["test", "rules", &file], dir.path());
        assert!(
            run.status.success(),
            "promtool test rules {file} disagrees with rabbitwatch test rules:\n{}{}\n{yaml}",
            text(&run.stdout),
            text(&run.stderr)
        );
    }
    // 44 of the pack's 65 checks carry over (the backlog rule's `growing_for` through
    // rabbitwatch_queue_growing_seconds, a queue's `type` through rabbitwatch_queue_status, every
    // stream-consumer check), 9 or more of them with alerts expected (labels and annotations
    // compared exactly).
    assert_eq!((checks, left_out.len()), (44, 21), "{stderr}");
    assert!(firing_checks >= 9, "{firing_checks}");
}

/// The default queue rules with every `for:` shortened to 5s, so the incident fires within seconds.
fn queue_rules_with_short_for() -> String {
    let pack = std::fs::read_to_string(repo().join("rules/queue-health.yaml"))
        .expect("reading the default queue rules");
    crate::util::with_short_for(&pack, "5s")
}

/// The alerts `alertname` firing in a rabbitwatch or Prometheus `/api/v1/alerts` answer, as label maps.
fn firing(alerts: &[Value], alertname: &str) -> Vec<BTreeMap<String, String>> {
    alerts
        .iter()
        .filter(|a| a["state"] == "firing" && a["labels"]["alertname"] == alertname)
        .map(|a| {
            a["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_with_the_exported_rules_fires_the_same_alert_with_the_same_labels_as_the_daemon()
 {
    let vhost = TestVhost::create().await;
    let queue = "export.orders";
    let rules = queue_rules_with_short_for();
    let port = free_port();
    let config = config_for(vhost.name(), port, &Tuning::default()) + "rules: [rules.yaml]\n";
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", &rules)]).await;

    // The same rule file, exported.
    let exported = run_cli(
        &[
            "rules",
            "export",
            "--format",
            "prometheus",
            &daemon.dir().join("rules.yaml").display().to_string(),
        ],
        daemon.dir(),
    );
    assert_eq!(
        exported.status.code(),
        Some(EXIT_DROPPED),
        "{}",
        text(&exported.stderr)
    );
    let prometheus =
        Prometheus::start_with_rules(&format!("127.0.0.1:{port}"), Some(&text(&exported.stdout)));

    // The incident: messages waiting in a queue nobody consumes.
    publish_n(&vhost.amqp_url(), queue, 20).await;

    let client = http_client();
    let on_queue = |labels: &BTreeMap<String, String>| {
        labels.get("queue").map(String::as_str) == Some(queue)
            && labels.get("vhost").map(String::as_str) == Some(vhost.name())
    };
    let ours = eventually(
        Duration::from_secs(60),
        "QueueNoConsumers firing in rabbitwatch",
        async || {
            let (_, body) = daemon.get_json("/api/v1/alerts").await?;
            let alerts = body["alerts"].as_array().cloned().unwrap_or_default();
            firing(&alerts, "QueueNoConsumers")
                .into_iter()
                .find(|l| on_queue(l))
                .ok_or_else(|| format!("{alerts:?}"))
        },
    )
    .await;
    let theirs = eventually(
        Duration::from_secs(60),
        "QueueNoConsumers firing in Prometheus",
        async || {
            let body: Value = client
                .get(format!("{}/api/v1/alerts", prometheus.url))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let alerts = body["data"]["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            firing(&alerts, "QueueNoConsumers")
                .into_iter()
                .find(|l| on_queue(l))
                .ok_or_else(|| format!("{alerts:?}"))
        },
    )
    .await;
    assert_eq!(
        theirs, ours,
        "Prometheus' alert labels differ from rabbitwatch's"
    );
    // alertname, scope, cluster, vhost, queue and the rule's severity: nothing per process.
    assert_eq!(
        ours.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "alertname",
            "cluster",
            "queue",
            "scope",
            "severity",
            "vhost"
        ]
    );
}
