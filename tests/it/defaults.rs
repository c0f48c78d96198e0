//! The paths a user takes by default, or by a key they set once and forget: the default listing (no
//! `vhosts:` filter, `page_size: 0`), the `status` and `notify test` commands, a reload by `SIGHUP`,
//! `mode: off`, `send_resolved: false`, the `max_queues` guard, and the ack/deliver/redeliver rates a
//! real consumer produces. Each runs the daemon binary against the local broker in a vhost of its own.
//!
//! Time budgets follow from the setup: polls every 1 s, the broker refreshes queue statistics every
//! 5 s, the dispatcher ticks every 1 s.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::util::{
    CLUSTER, Daemon, TestVhost, Tuning, always_for, cluster_yaml, config_for, config_with_clusters,
    consume_at_rate, delete_queue, eventually, find, free_port, near, publish_at_rate, publish_n,
    requeue_at_rate, run_cli,
};
use crate::util_faults::{Fault, FaultyApi, On};
use crate::util_slack::FakeHttp;

/// Where the fake webhook receivers listen.
const HOOK: &str = "/hook";
const QUIET_HOOK: &str = "/quiet";
const SLACK_HOOK: &str = "/hooks/T000";

/// The labels of `queue`'s series in `vhost` on the cluster `config_for` names.
fn queue_labels<'a>(vhost: &'a TestVhost, queue: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("cluster", CLUSTER),
        ("vhost", vhost.name()),
        ("queue", queue),
    ]
}

/// The alerting half of a config: `rules.yaml`, one webhook receiver `hook` at `HOOK` taking every
/// alert, sent at once.
fn webhook_alerting(fake: &FakeHttp) -> String {
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

/// One queue rule, `alert`, holding while more than `threshold` messages are ready.
fn ready_rule(alert: &str, threshold: u32, mode: &str) -> String {
    format!(
        r#"      - alert: {alert}
        scope: queue
        expr: messages_ready > {threshold}
        mode: {mode}
        labels: {{ severity: warning }}
        annotations: {{ summary: "{alert} on {{{{ queue }}}}" }}
"#
    )
}

fn rule_file(rules: &[String]) -> String {
    format!("groups:\n  - name: t\n    rules:\n{}", rules.concat())
}

/// What a webhook at `path` was told, in order: (alertname, status) for each alert of each
/// notification the fake accepted.
fn told(fake: &FakeHttp, path: &str) -> Vec<(String, String)> {
    fake.requests_to(path)
        .iter()
        .filter(|r| r.accepted())
        .flat_map(|r| {
            let body = r.json();
            body["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|a| {
                    let name = a["labels"]["alertname"].as_str().unwrap_or("?").to_owned();
                    let status = a["status"].as_str().unwrap_or("?").to_owned();
                    (name, status)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn was_told(fake: &FakeHttp, path: &str, alertname: &str, status: &str) -> bool {
    told(fake, path)
        .iter()
        .any(|(name, s)| name == alertname && s == status)
}

/// `GET /api/v1/alerts`.
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

/// The state of the alert `alertname` in the API, if it is there.
async fn alert_state(daemon: &Daemon, alertname: &str) -> Result<Option<String>, String> {
    Ok(alerts(daemon)
        .await?
        .iter()
        .find(|a| a["alertname"] == alertname)
        .map(|a| a["state"].as_str().unwrap_or("?").to_owned()))
}

/// The first log event whose first line contains `needle`, with its continuation lines (a field
/// holding a multi-line error goes on, indented, after the line that starts the event).
fn log_event(logs: &str, needle: &str) -> Option<String> {
    let mut lines = logs.lines().skip_while(|line| !line.contains(needle));
    let first = lines.next()?;
    let rest = lines.take_while(|line| line.starts_with(char::is_whitespace));
    Some(
        std::iter::once(first)
            .chain(rest)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

async fn reload_successful(daemon: &Daemon) -> Result<f64, String> {
    find(
        &daemon.metrics().await?,
        "rabbitwatch_config_last_reload_successful",
        &[],
    )
    .ok_or_else(|| "no rabbitwatch_config_last_reload_successful in /metrics".to_owned())
}

// ---------------------------------------------------------------------------------------------------
// a. The default listing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_scrape_lists_every_vhost_in_one_request_asking_only_for_its_columns() {
    let vhost = TestVhost::create().await;
    let queue = "orders";
    publish_n(&vhost.amqp_url(), queue, 7).await;
    // Nothing injected: the proxy only records what the daemon asks the management API.
    let api = FaultyApi::start().await;
    // No `vhosts:`, `queues:`, `page_size:` or `max_queues:`: the listing as it is by default. The
    // daemon sees every vhost on the broker; this test looks at its own.
    let cluster = format!(
        "  - name: {CLUSTER}\n    url: {}\n    username: guest\n    password: guest\n    poll_interval: 1s\n",
        api.url()
    );
    let config = config_with_clusters(free_port(), &Tuning::default(), &[cluster]);
    let daemon = Daemon::start(&config).await;
    let labels = queue_labels(&vhost, queue);

    eventually(
        Duration::from_secs(45),
        "orders with 7 messages, all ready, no consumers, 7 published",
        async || {
            let metrics = daemon.metrics().await?;
            let value = |name| find(&metrics, name, &labels);
            let seen = [
                value("rabbitwatch_queue_messages"),
                value("rabbitwatch_queue_messages_ready"),
                value("rabbitwatch_queue_messages_unacked"),
                value("rabbitwatch_queue_consumers"),
                value("rabbitwatch_queue_published_total"),
            ];
            (seen == [Some(7.0), Some(7.0), Some(0.0), Some(0.0), Some(7.0)])
                .then_some(())
                .ok_or_else(|| format!("messages, ready, unacked, consumers, published: {seen:?}"))
        },
    )
    .await;

    // A cycle starts with /api/overview (as does the start-up check); the last one may still be
    // under way. A cycle that failed before its listing (the shared broker slow to answer
    // /api/nodes) lists nothing and proves nothing either way. The figures above can show as soon
    // as the first cycle ends (the broker had the queue's statistics before the daemon started):
    // wait for two whole cycles that listed.
    let listing = |t: &String| t.starts_with("/api/queues") || t.starts_with("/api/vhosts");
    let cycles = |served: &[String]| -> Vec<std::ops::Range<usize>> {
        let starts: Vec<usize> = served
            .iter()
            .enumerate()
            .filter(|(_, t)| t.starts_with("/api/overview"))
            .map(|(i, _)| i)
            .collect();
        starts.windows(2).map(|w| w[0]..w[1]).collect()
    };
    let served = eventually(
        Duration::from_secs(30),
        "two whole cycles that listed queues through the proxy",
        async || {
            let served: Vec<String> = api.served().into_iter().map(|s| s.target).collect();
            let listed = cycles(&served)
                .into_iter()
                .filter(|c| served[c.clone()].iter().any(listing))
                .count();
            if listed >= 2 {
                Ok(served)
            } else {
                Err(format!("{listed} in {served:#?}"))
            }
        },
    )
    .await;
    for cycle in cycles(&served) {
        let requests = &served[cycle];
        let listings: Vec<&String> = requests.iter().filter(|t| listing(t)).collect();
        let listing = match listings[..] {
            [] => continue,
            [listing] => listing,
            _ => panic!("one listing request per cycle, got a cycle of {requests:#?}"),
        };
        let (path, query) = listing.split_once('?').unwrap_or((listing, ""));
        assert_eq!(path, "/api/queues", "every vhost at once: {listing}");
        let params: Vec<(&str, &str)> = query
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .collect();
        let names: Vec<&str> = params.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["columns"], "only columns=, no paging: {listing}");
        let columns: BTreeSet<&str> = params[0].1.split(',').collect();
        for needed in [
            "name",
            "vhost",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
            "message_stats.publish",
            "message_stats.ack",
        ] {
            assert!(columns.contains(needed), "no {needed} in {listing}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// b. The commands a user runs beside the daemon

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_prints_the_watched_queue_with_its_ready_count() {
    let vhost = TestVhost::create().await;
    let queue = "invoices";
    publish_n(&vhost.amqp_url(), queue, 12).await;
    let daemon = Daemon::start(&config_for(vhost.name(), free_port(), &Tuning::default())).await;
    let config = daemon.config_path();
    let config = config.to_str().expect("a UTF-8 temp path");
    // Elsewhere than beside the config: `--config` alone tells the command where the daemon is.
    let cwd = tempfile::tempdir().expect("a temp dir");

    eventually(
        Duration::from_secs(30),
        "a table row for invoices: 12 ready, 0 unacked, 0 consumers, no_consumers",
        async || {
            let out = run_cli(&["status", "--config", config], cwd.path());
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                return Err(format!(
                    "status exited {}: {stdout}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let header: Vec<&str> = stdout
                .lines()
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            assert_eq!(
                header[..6],
                ["CLUSTER", "VHOST", "QUEUE", "READY", "UNACKED", "CONSUMERS"],
                "{stdout}"
            );
            assert_eq!(header.last(), Some(&"STATUS"), "{stdout}");
            // The drain ETA may read "1m 5s": only the leading columns and the last are split safely.
            let row: Vec<&str> = stdout
                .lines()
                .map(|line| line.split_whitespace().collect::<Vec<_>>())
                .find(|fields| fields.get(2) == Some(&queue))
                .ok_or_else(|| format!("no row for {queue}:\n{stdout}"))?;
            let want = [CLUSTER, vhost.name(), queue, "12", "0", "0"];
            (row[..6] == want && row.last() == Some(&"no_consumers"))
                .then_some(())
                .ok_or_else(|| format!("row {row:?}, expected {want:?} … no_consumers"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_reaches_the_named_receiver_and_lists_the_configured_ones_otherwise() {
    let fake = FakeHttp::start().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = config_for("rw-notify-test-unused", free_port(), &Tuning::default())
        + &format!(
            r#"receivers:
  - name: ops-slack
    slack: {{ webhook_url: "{}" }}
  - name: autoscaler
    webhook: {{ url: "{}" }}
route: {{ receiver: ops-slack }}
"#,
            fake.url(SLACK_HOOK),
            fake.url(HOOK)
        );
    std::fs::write(dir.path().join("rabbitwatch.yaml"), config).expect("writing the config");
    let correlation_id = |stdout: &str| {
        regex::Regex::new(r"correlation_id=([0-9a-f-]{36})")
            .expect("a valid regex")
            .captures(stdout)
            .map(|found| found[1].to_owned())
            .unwrap_or_else(|| panic!("no correlation_id in {stdout:?}"))
    };

    // Beside rabbitwatch.yaml and without --config, as the command is documented.
    let out = run_cli(&["notify", "test", "--receiver", "ops-slack"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("delivered to ops-slack"), "{stdout}");
    let id = correlation_id(&stdout);
    let slack = fake.requests_to(SLACK_HOOK);
    assert_eq!(slack.len(), 1, "one Slack message: {slack:#?}");
    let text = slack[0].text();
    assert!(
        text.contains("Test notification from rabbitwatch notify test") && text.contains(&id),
        "the test message, with the correlation id printed: {text}"
    );

    let out = run_cli(&["notify", "test", "--receiver", "autoscaler"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = correlation_id(&stdout);
    let hooked = fake.requests_to(HOOK);
    assert_eq!(hooked.len(), 1, "one webhook request: {hooked:#?}");
    let body = hooked[0].json();
    assert_eq!(body["status"], "firing", "{body}");
    assert_eq!(
        body["alerts"][0]["labels"]["alertname"], "RabbitwatchTestNotification",
        "{body}"
    );
    assert_eq!(body["correlation_id"], id.as_str(), "{body}");

    let out = run_cli(&["notify", "test", "--receiver", "nobody"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nobody") && stderr.contains("ops-slack") && stderr.contains("autoscaler"),
        "names the unknown receiver and the configured ones: {stderr}"
    );
    assert_eq!(fake.requests().len(), 2, "nothing sent for an unknown name");
}

// ---------------------------------------------------------------------------------------------------
// c. Reload by SIGHUP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_in_the_edited_rules_and_a_broken_file_keeps_the_running_ones() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    let config =
        config_for(vhost.name(), free_port(), &Tuning::default()) + &webhook_alerting(&fake);
    let rules = rule_file(&[ready_rule("Backlog", 5, "active")]);
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", &rules)]).await;
    let rules_path = daemon.dir().join("rules.yaml");
    publish_n(&vhost.amqp_url(), "orders", 10).await;
    eventually(
        Duration::from_secs(20),
        "Backlog (10 ready > 5) firing at the webhook",
        async || {
            was_told(&fake, HOOK, "Backlog", "firing")
                .then_some(())
                .ok_or_else(|| format!("{:?}", told(&fake, HOOK)))
        },
    )
    .await;
    assert_eq!(reload_successful(&daemon).await, Ok(1.0));

    // A broken rule file: SIGHUP is refused, said in the log and the metric, the old rule runs on.
    std::fs::write(&rules_path, "groups: [").expect("writing the broken rules");
    daemon.send_signal("HUP");
    eventually(
        Duration::from_secs(10),
        "the failed reload in the metric, and in the log with where the file is broken",
        async || {
            let ok = reload_successful(&daemon).await?;
            let event = log_event(&daemon.logs(), "reload failed");
            match (ok, event) {
                (0.0, Some(event)) if event.contains("rules.yaml:1:") => Ok(()),
                (ok, event) => Err(format!("reload_successful={ok}, logged {event:?}")),
            }
        },
    )
    .await;
    always_for(
        Duration::from_secs(3),
        "Backlog still firing, and no resolve sent",
        async || {
            let state = alert_state(&daemon, "Backlog").await?;
            let told = told(&fake, HOOK);
            (state.as_deref() == Some("firing") && told.iter().all(|(_, s)| s == "firing"))
                .then_some(())
                .ok_or_else(|| format!("Backlog is {state:?}; the webhook was told {told:?}"))
        },
    )
    .await;

    // Fixed and edited: the threshold is raised (Backlog resolves) and a rule is added (it fires).
    let edited = rule_file(&[
        ready_rule("Backlog", 100, "active"),
        ready_rule("AnyReady", 0, "active"),
    ]);
    std::fs::write(&rules_path, edited).expect("writing the edited rules");
    daemon.send_signal("HUP");
    eventually(
        Duration::from_secs(20),
        "Backlog resolved and AnyReady firing at the webhook, the reload metric back to 1",
        async || {
            let ok = reload_successful(&daemon).await?;
            let told = told(&fake, HOOK);
            (ok == 1.0
                && was_told(&fake, HOOK, "Backlog", "resolved")
                && was_told(&fake, HOOK, "AnyReady", "firing"))
            .then_some(())
            .ok_or_else(|| format!("reload_successful={ok}; the webhook was told {told:?}"))
        },
    )
    .await;
    assert!(
        daemon.logs().contains("config reloaded"),
        "{}",
        daemon.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_during_the_start_up_checks_does_not_kill_the_daemon() {
    let vhost = TestVhost::create().await;
    let api = FaultyApi::start().await;
    // The start-up check (GET /api/whoami) is answered after 3 s: the daemon is still starting then.
    api.fail(
        On::path("/api/whoami"),
        Fault::Delay(Duration::from_secs(3)),
    );
    let tuning = Tuning::default();
    let cluster = cluster_yaml(CLUSTER, &api.url(), vhost.name(), &tuning);
    let mut daemon =
        Daemon::spawn_with_files(&config_with_clusters(free_port(), &tuning, &[cluster]), &[]);
    eventually(
        Duration::from_secs(10),
        "the start-up check under way",
        async || {
            api.served()
                .iter()
                .any(|s| s.target.starts_with("/api/whoami"))
                .then_some(())
                .ok_or_else(|| "no /api/whoami yet".to_owned())
        },
    )
    .await;
    // An operator's `systemctl reload` (or `docker kill -s HUP`) that comes a little early.
    daemon.send_signal("HUP");
    daemon.until_healthy(Duration::from_secs(20)).await;
}

// ---------------------------------------------------------------------------------------------------
// d. mode: off

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_with_mode_off_never_shows_and_never_notifies() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    let config =
        config_for(vhost.name(), free_port(), &Tuning::default()) + &webhook_alerting(&fake);
    // The same condition twice: the active rule shows when the off one would have fired.
    let rules = rule_file(&[
        ready_rule("Backlog", 5, "active"),
        ready_rule("BacklogSwitchedOff", 5, "off"),
    ]);
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", &rules)]).await;
    publish_n(&vhost.amqp_url(), "orders", 10).await;

    eventually(
        Duration::from_secs(20),
        "the active twin firing at the webhook",
        async || {
            was_told(&fake, HOOK, "Backlog", "firing")
                .then_some(())
                .ok_or_else(|| format!("{:?}", told(&fake, HOOK)))
        },
    )
    .await;
    always_for(
        Duration::from_secs(4),
        "no trace of the switched-off rule in the API, the metrics or the webhook",
        async || {
            let listed = alert_state(&daemon, "BacklogSwitchedOff").await?;
            let metrics = daemon.metrics().await?;
            let exported: Vec<_> = metrics
                .iter()
                .filter(|s| {
                    s.labels.get("alertname").map(String::as_str) == Some("BacklogSwitchedOff")
                })
                .collect();
            let told = told(&fake, HOOK);
            let sent = told.iter().any(|(name, _)| name == "BacklogSwitchedOff");
            (listed.is_none() && exported.is_empty() && !sent)
                .then_some(())
                .ok_or_else(|| {
                    format!("API state {listed:?}; series {exported:?}; webhook told {told:?}")
                })
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------------
// e. send_resolved: false

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_resolved_false_gets_the_firing_message_but_not_the_resolve() {
    let vhost = TestVhost::create().await;
    let fake = FakeHttp::start().await;
    // Every alert goes to both receivers; only `quiet` declines resolves.
    let alerting = format!(
        r#"rules: [rules.yaml]
receivers:
  - name: loud
    webhook: {{ url: "{}" }}
  - name: quiet
    send_resolved: false
    webhook: {{ url: "{}" }}
route:
  receiver: quiet
  group_wait: 0s
  group_interval: 1s
  routes:
    - {{ receiver: loud, continue: true }}
    - {{ receiver: quiet }}
outbox: {{ max_backoff: 2s }}
"#,
        fake.url(HOOK),
        fake.url(QUIET_HOOK)
    );
    let config = config_for(vhost.name(), free_port(), &Tuning::default()) + &alerting;
    let rules = rule_file(&[ready_rule("Backlog", 5, "active")]);
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", &rules)]).await;
    let queue = "orders";
    publish_n(&vhost.amqp_url(), queue, 10).await;

    eventually(
        Duration::from_secs(20),
        "Backlog firing at both receivers",
        async || {
            (was_told(&fake, HOOK, "Backlog", "firing")
                && was_told(&fake, QUIET_HOOK, "Backlog", "firing"))
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "loud told {:?}, quiet told {:?}",
                    told(&fake, HOOK),
                    told(&fake, QUIET_HOOK)
                )
            })
        },
    )
    .await;

    // The queue goes away, so does the backlog: the alert resolves.
    delete_queue(&vhost.amqp_url(), queue).await;
    eventually(
        Duration::from_secs(20),
        "the resolve at the receiver that wants it",
        async || {
            was_told(&fake, HOOK, "Backlog", "resolved")
                .then_some(())
                .ok_or_else(|| format!("loud told {:?}", told(&fake, HOOK)))
        },
    )
    .await;
    always_for(
        Duration::from_secs(3),
        "the quiet receiver told only of the firing",
        async || {
            let quiet = told(&fake, QUIET_HOOK);
            (quiet == [("Backlog".to_owned(), "firing".to_owned())])
                .then_some(())
                .ok_or_else(|| format!("quiet told {quiet:?}"))
        },
    )
    .await;
    assert_eq!(
        alert_state(&daemon, "Backlog").await,
        Ok(Some("resolved".to_owned()))
    );
}

// ---------------------------------------------------------------------------------------------------
// f. max_queues

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_queues_the_largest_backlogs_are_kept_the_rest_counted_and_a_warning_logged() {
    let vhost = TestVhost::create().await;
    // Six queues holding 10, 20, … 60 messages; room for three.
    let backlogs: Vec<(String, usize)> = (1..=6).map(|i| (format!("q{i}"), i * 10)).collect();
    for (queue, n) in &backlogs {
        publish_n(&vhost.amqp_url(), queue, *n).await;
    }
    let config = config_for(vhost.name(), free_port(), &Tuning::default())
        .replace("    page_size:", "    max_queues: 3\n    page_size:");
    assert!(config.contains("max_queues: 3"), "{config}");
    let daemon = Daemon::start(&config).await;

    let expected: BTreeSet<(String, u64)> = [("q4", 40), ("q5", 50), ("q6", 60)]
        .into_iter()
        .map(|(q, n)| (q.to_owned(), n))
        .collect();
    eventually(
        Duration::from_secs(30),
        "q4, q5 and q6 watched with their backlogs, 3 truncated",
        async || {
            let metrics = daemon.metrics().await?;
            let watched: BTreeSet<(String, u64)> = metrics
                .iter()
                .filter(|s| {
                    s.name == "rabbitwatch_queue_messages"
                        && s.labels.get("vhost").map(String::as_str) == Some(vhost.name())
                })
                .map(|s| (s.labels["queue"].clone(), s.value as u64))
                .collect();
            let cluster = [("cluster", CLUSTER)];
            let truncated = find(&metrics, "rabbitwatch_cluster_queues_truncated", &cluster);
            let counted = find(&metrics, "rabbitwatch_cluster_queues", &cluster);
            (watched == expected && truncated == Some(3.0) && counted == Some(3.0))
                .then_some(())
                .ok_or_else(|| {
                    format!("watched {watched:?}, truncated {truncated:?}, queues {counted:?}")
                })
        },
    )
    .await;
    let logs = daemon.logs();
    assert!(
        logs.lines().any(|line| line.contains("WARN")
            && line.contains("more queues than max_queues")
            && line.contains("dropped=3")),
        "a warning naming how many queues were dropped: {logs}"
    );
}

// ---------------------------------------------------------------------------------------------------
// g. Rates from real consumers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_and_requeueing_consumers_show_ack_deliver_and_redeliver_rates() {
    let vhost = TestVhost::create().await;
    let (work, poison) = ("work", "poison");
    // `ack_rate` is not exported as a metric; a rule reads it. Shadow: evaluated and shown, not sent.
    let rules = format!(
        r#"groups:
  - name: t
    rules:
      - alert: AckRate
        scope: queue
        select: {{ queue: "^{work}$" }}
        expr: ack_rate >= 0
        mode: shadow
        annotations: {{ summary: "{{{{ ack_rate | round(2) }}}}" }}
"#
    );
    let tuning = Tuning {
        window: "15s",
        ..Tuning::default()
    };
    let config = config_for(vhost.name(), free_port(), &tuning) + "rules: [rules.yaml]\n";
    let daemon = Daemon::start_with_files(&config, &[("rules.yaml", &rules)]).await;

    let _publisher = publish_at_rate(&vhost.amqp_url(), work, 20).await;
    let _acker = consume_at_rate(&vhost.amqp_url(), work, 20).await;
    publish_n(&vhost.amqp_url(), poison, 5).await;
    let _requeuer = requeue_at_rate(&vhost.amqp_url(), poison, 10).await;

    let work_labels = queue_labels(&vhost, work);
    let poison_labels = queue_labels(&vhost, poison);
    eventually(
        Duration::from_secs(50),
        "work: publish, consume, deliver and ack ≈ 20/s, no redeliveries; \
         poison: deliver and redeliver ≈ 10/s, nothing consumed",
        async || {
            let metrics = daemon.metrics().await?;
            let rate = |labels: &[(&str, &str)], name: &str| {
                find(&metrics, &format!("rabbitwatch_queue_{name}_rate"), labels)
            };
            let ack = alerts(&daemon)
                .await?
                .iter()
                .find(|a| a["alertname"] == "AckRate")
                .and_then(|a| a["annotations"]["summary"].as_str()?.parse::<f64>().ok());
            let work_rates = [
                rate(&work_labels, "publish"),
                rate(&work_labels, "consume"),
                rate(&work_labels, "deliver"),
                ack,
            ];
            let work_redeliver = rate(&work_labels, "redeliver");
            let poison_rates = [
                rate(&poison_labels, "deliver"),
                rate(&poison_labels, "redeliver"),
            ];
            let poison_consume = rate(&poison_labels, "consume");
            let as_expected = work_rates.iter().all(|r| r.is_some_and(|r| near(r, 20.0, 0.15)))
                && work_redeliver.is_some_and(|r| r < 0.5)
                && poison_rates.iter().all(|r| r.is_some_and(|r| near(r, 10.0, 0.25)))
                && poison_consume.is_some_and(|r| r < 0.5);
            as_expected.then_some(()).ok_or_else(|| {
                format!(
                    "work publish/consume/deliver/ack {work_rates:?}, redeliver {work_redeliver:?}; \
                     poison deliver/redeliver {poison_rates:?}, consume {poison_consume:?}"
                )
            })
        },
    )
    .await;

    // The API shows the same rates the metrics do.
    let (status, body) = daemon
        .get_json(&format!("/api/v1/queues?vhost={}", vhost.name()))
        .await
        .expect("GET /api/v1/queues");
    assert_eq!(status, 200, "{body}");
    let row = |queue: &str| {
        body["queues"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["queue"] == queue))
            .cloned()
            .unwrap_or_else(|| panic!("no {queue} in {body}"))
    };
    let (work_row, poison_row) = (row(work), row(poison));
    for (row, field) in [
        (&work_row, "deliver_rate"),
        (&work_row, "consume_rate"),
        (&poison_row, "deliver_rate"),
        (&poison_row, "redeliver_rate"),
    ] {
        assert!(
            row[field].as_f64().is_some_and(|r| r > 0.0),
            "{field} > 0 in {row}"
        );
    }
}
