//! Alerting end to end: real traffic on the broker makes a rule fire, and what reaches the far side
//! (a fake Slack, a real SMTP listener) is checked, including how delivery copes with Slack failing,
//! rate-limiting or refusing, with a crash in the middle, and with hostile queue names.
//!
//! Every test owns a vhost and a daemon. Time budgets follow from the facts of the setup: polls every
//! 1 s, the broker refreshes queue statistics every 5 s, the dispatcher ticks every 1 s, Slack
//! messages are paced 1 s apart, and the outbox retries after 1 s, 3 s, 9 s, … (±10 %, capped at
//! `max_backoff`, 5 s here).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::util::{
    Daemon, TestVhost, Tuning, always_for, config_for, consume_at_rate, eventually, find,
    free_port, publish_at_rate, publish_n, publish_n_each, run_cli,
};
use crate::util_slack::{CHANNEL_ID, FakeHttp, Lasting, Mode, RETRY_AFTER_SECS, Recorded};
use crate::util_smtp::{ReceivedMail, SmtpSink};

/// The incoming-webhook path the fake Slack serves.
const HOOK: &str = "/hooks/T000";
const POST_MESSAGE: &str = "/api/chat.postMessage";
const UPDATE: &str = "/api/chat.update";
const BOT_TOKEN: &str = "xoxb-rabbitwatch-test";
const HOSTILE_QUEUE: &str = "<!channel> *x* <http://evil|click>";

// ---------------------------------------------------------------------------------------------------
// Setting up: the daemon's alerting config and rule file

/// How the daemon reaches Slack.
enum Slack {
    /// An incoming webhook: every notification is a new message.
    Webhook,
    /// The Web API with a bot token: a resolve updates the firing message.
    Bot,
}

/// The alerting half of a test's config: receivers, route, outbox and the one rule file.
struct Alerting<'a> {
    fake: &'a FakeHttp,
    slack: Slack,
    /// Critical alerts are also mailed here.
    smtp: Option<&'a SmtpSink>,
    group_by: &'static str,
    group_wait: &'static str,
    rules: String,
}

impl<'a> Alerting<'a> {
    fn webhook(fake: &'a FakeHttp, rules: String) -> Alerting<'a> {
        Alerting {
            fake,
            slack: Slack::Webhook,
            smtp: None,
            group_by: "[cluster, vhost, queue, alertname]",
            group_wait: "0s",
            rules,
        }
    }

    fn bot(fake: &'a FakeHttp, rules: String) -> Alerting<'a> {
        Alerting {
            slack: Slack::Bot,
            ..Alerting::webhook(fake, rules)
        }
    }

    fn mailing_critical_to(self, smtp: &'a SmtpSink) -> Alerting<'a> {
        Alerting {
            smtp: Some(smtp),
            ..self
        }
    }

    fn yaml(&self) -> String {
        let slack = match self.slack {
            Slack::Webhook => format!(r#"{{ webhook_url: "{}" }}"#, self.fake.url(HOOK)),
            Slack::Bot => format!(
                r##"{{ bot_token_file: token.txt, channel: "#ops", api_url: "{}" }}"##,
                self.fake.url("/api")
            ),
        };
        let mut yaml = format!(
            r#"rules: [rules.yaml]
receivers:
  - name: slack
    slack: {slack}
"#
        );
        if let Some(smtp) = self.smtp {
            yaml += &format!(
                r#"  - name: mail
    email: {{ smtp_url: "{}", from: "rw@example.com", to: ["oncall@example.com"] }}
"#,
                smtp.url()
            );
        }
        yaml += &format!(
            r#"route:
  receiver: slack
  group_by: {}
  group_wait: {}
  group_interval: 1s
  repeat_interval: 4h
"#,
            self.group_by, self.group_wait
        );
        if self.smtp.is_some() {
            // The first matching child route takes an alert, as in Alertmanager, and `continue: true`
            // goes on to the next: the catch-all second child keeps critical alerts in Slack too.
            yaml += r#"  routes:
    - { matchers: ["severity=critical"], receiver: mail, continue: true }
    - { receiver: slack }
"#;
        }
        yaml + "outbox: { max_attempts: 12, max_age: 1h, max_backoff: 5s }\n"
    }
}

/// The daemon watching `vhost`, alerting as `alerting` says.
async fn start_daemon(vhost: &TestVhost, tuning: &Tuning, alerting: &Alerting<'_>) -> Daemon {
    let config = config_for(vhost.name(), free_port(), tuning) + &alerting.yaml();
    Daemon::start_with_files(
        &config,
        &[("rules.yaml", &alerting.rules), ("token.txt", BOT_TOKEN)],
    )
    .await
}

/// A rule file with one queue rule, `Backlog`, firing as soon as more than 50 messages are ready.
fn ready_rule(severity: &str, mode: &str) -> String {
    format!(
        r#"groups:
  - name: t
    rules:
      - alert: Backlog
        scope: queue
        expr: messages_ready > 50
        for: 0s
        mode: {mode}
        labels: {{ severity: {severity} }}
        annotations:
          summary: "Backlog on {{{{ queue }}}} ({{{{ vhost }}}})"
          description: "{{{{ messages_ready }}}} ready"
"#
    )
}

// ---------------------------------------------------------------------------------------------------
// Observing: what Slack received, what the daemon says

/// The requests to `path` that the fake accepted: messages Slack would show.
fn delivered(fake: &FakeHttp, path: &str) -> Vec<Recorded> {
    fake.requests_to(path)
        .into_iter()
        .filter(Recorded::accepted)
        .collect()
}

/// Exactly `n` messages delivered to `path`, or why not; more than `n` fails the test at once.
fn exactly(fake: &FakeHttp, path: &str, n: usize) -> Result<Vec<Recorded>, String> {
    let got = delivered(fake, path);
    assert!(
        got.len() <= n,
        "expected {n} message(s) on {path}, got {}: {:#?}",
        got.len(),
        texts(&got)
    );
    if got.len() == n {
        Ok(got)
    } else {
        Err(format!(
            "{} of {n} message(s) on {path} so far; attempts: {:?}",
            got.len(),
            fake.requests_to(path)
                .iter()
                .map(|r| r.status)
                .collect::<Vec<_>>()
        ))
    }
}

fn texts(requests: &[Recorded]) -> Vec<String> {
    requests.iter().map(Recorded::text).collect()
}

/// `Idempotency-Key: <correlation_id>:<firing|resolved>:<sequence>`, split.
fn idempotency_key(request: &Recorded) -> (String, String, u64) {
    let key = request
        .header("idempotency-key")
        .unwrap_or_else(|| panic!("no Idempotency-Key on {}", request.text()));
    let parts: Vec<&str> = key.rsplitn(3, ':').collect();
    let [sequence, state, correlation_id] = parts[..] else {
        panic!("Idempotency-Key {key:?} is not correlation_id:state:sequence");
    };
    let sequence = sequence
        .parse()
        .unwrap_or_else(|_| panic!("the sequence in Idempotency-Key {key:?} is not a number"));
    (correlation_id.to_owned(), state.to_owned(), sequence)
}

/// The correlation ids in a Slack message's context line.
fn slack_correlation_ids(request: &Recorded) -> Vec<String> {
    let re = regex::Regex::new(r"correlation_id: ((?:[0-9a-f-]{36}(?:, )?)+)").expect("a regex");
    let text = request.text();
    let found = re
        .captures(&text)
        .unwrap_or_else(|| panic!("no correlation id in the Slack message: {text}"));
    found[1].split(", ").map(str::to_owned).collect()
}

/// The one correlation id of a single-alert Slack message.
fn slack_correlation_id(request: &Recorded) -> String {
    let ids = slack_correlation_ids(request);
    assert_eq!(ids.len(), 1, "one alert, one correlation id: {ids:?}");
    ids[0].clone()
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

/// The alert `alertname` on `queue` as the API shows it, once it is in `state`.
async fn alert_in_state(
    daemon: &Daemon,
    alertname: &str,
    queue: &str,
    state: &str,
) -> Result<Value, String> {
    let all = alerts(daemon).await?;
    let alert = all
        .iter()
        .find(|a| a["alertname"] == alertname && a["labels"]["queue"] == queue)
        .ok_or_else(|| format!("no {alertname} alert on {queue:?}: {all:?}"))?;
    if alert["state"] == state {
        Ok(alert.clone())
    } else {
        Err(format!("{alertname} on {queue:?} is {}", alert["state"]))
    }
}

/// `GET /api/v1/deadletters`.
async fn dead_letters(daemon: &Daemon) -> Result<Vec<Value>, String> {
    let (status, body) = daemon.get_json("/api/v1/deadletters").await?;
    if status != 200 {
        return Err(format!("/api/v1/deadletters answered {status}: {body}"));
    }
    body["dead_letters"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("/api/v1/deadletters has no dead_letters list: {body}"))
}

async fn metric(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    find(&daemon.metrics().await?, name, labels)
        .ok_or_else(|| format!("no {name}{labels:?} in /metrics"))
}

fn seconds_between(earlier: &Recorded, later: &Recorded) -> f64 {
    later.at.duration_since(earlier.at).as_secs_f64()
}

// ---------------------------------------------------------------------------------------------------
// One incident, one correlation id

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_fires_once_and_resolves_once_with_the_same_correlation_id() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let rules = r#"groups:
  - name: t
    rules:
      - alert: Backlog
        scope: queue
        expr: publish_rate > consume_rate * 1.1 and backlog_growth > 0 and messages_ready > 100
        clear: backlog_growth <= 0
        for: 10s
        labels: { severity: warning }
        annotations: { summary: "Backlog on {{ queue }} ({{ vhost }})", description: "{{ messages_ready }} ready" }
"#;
    let tuning = Tuning {
        window: "20s",
        ..Tuning::default()
    };
    let daemon = start_daemon(&vhost, &tuning, &Alerting::webhook(&slack, rules.into())).await;
    let queue = "orders";
    let publisher = publish_at_rate(&vhost.amqp_url(), queue, 40).await;
    let _consumer = consume_at_rate(&vhost.amqp_url(), queue, 10).await;

    // Window fill (20 s) + `for` (10 s) + 2 polls + the broker's 5 s statistics step, with room.
    let firing = eventually(
        Duration::from_secs(60),
        "one Slack message for the growing backlog",
        async || exactly(&slack, HOOK, 1),
    )
    .await
    .remove(0);
    let (correlation_id, state, firing_sequence) = idempotency_key(&firing);
    assert_eq!(state, "firing");
    assert_eq!(slack_correlation_id(&firing), correlation_id);
    let text = firing.text();
    for expected in [queue, vhost.name(), "FIRING", "Backlog on orders"] {
        assert!(text.contains(expected), "no {expected:?} in {text}");
    }
    let alert = alert_in_state(&daemon, "Backlog", queue, "firing")
        .await
        .expect("the API shows the alert firing");
    assert_eq!(alert["correlation_id"], correlation_id.as_str());

    // Once nothing is published, the consumer works the backlog off and growth turns negative.
    publisher.stop().await;
    let resolved = eventually(
        Duration::from_secs(60),
        "a second Slack message, the resolve",
        async || exactly(&slack, HOOK, 2),
    )
    .await
    .remove(1);
    let (resolved_id, state, resolved_sequence) = idempotency_key(&resolved);
    assert_eq!(state, "resolved");
    assert_eq!(resolved_id, correlation_id, "the same incident");
    assert!(resolved_sequence > firing_sequence);
    assert_eq!(slack_correlation_id(&resolved), correlation_id);
    assert!(resolved.text().contains("RESOLVED"), "{}", resolved.text());
    let alert = alert_in_state(&daemon, "Backlog", queue, "resolved")
        .await
        .expect("the API shows the alert resolved");
    assert_eq!(alert["correlation_id"], correlation_id.as_str());

    always_for(
        Duration::from_secs(5),
        "the firing and the resolved message, nothing more",
        async || {
            let requests = slack.requests();
            (requests.len() == 2)
                .then_some(())
                .ok_or_else(|| format!("{:#?}", texts(&requests)))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_token_resolve_updates_the_original_message() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let alerting = Alerting::bot(&slack, ready_rule("warning", "active"));
    let _daemon = start_daemon(&vhost, &Tuning::default(), &alerting).await;
    let queue = "orders";
    publish_n(&vhost.amqp_url(), queue, 60).await;

    let post = eventually(
        Duration::from_secs(20),
        "one chat.postMessage",
        async || exactly(&slack, POST_MESSAGE, 1),
    )
    .await
    .remove(0);
    assert_eq!(
        post.header("authorization"),
        Some(format!("Bearer {BOT_TOKEN}").as_str())
    );
    assert_eq!(post.json()["channel"], "#ops");
    let answered: Value = serde_json::from_str(&post.reply).expect("the fake answered JSON");

    // Consumed: nothing ready any more.
    let _consumer = consume_at_rate(&vhost.amqp_url(), queue, 200).await;
    let update = eventually(
        Duration::from_secs(20),
        "one chat.update for the resolve",
        async || {
            // A resolve posted as a new message fails here at once.
            exactly(&slack, POST_MESSAGE, 1)?;
            exactly(&slack, UPDATE, 1)
        },
    )
    .await
    .remove(0);
    let body = update.json();
    assert_eq!(
        body["ts"], answered["ts"],
        "the message chat.postMessage created"
    );
    assert_eq!(body["channel"], CHANNEL_ID);
    assert!(update.text().contains("RESOLVED"), "{}", update.text());
    let (firing_id, _, _) = idempotency_key(&post);
    let (resolved_id, state, _) = idempotency_key(&update);
    assert_eq!(
        (resolved_id.as_str(), state.as_str()),
        (firing_id.as_str(), "resolved")
    );
    assert_eq!(slack_correlation_id(&update), firing_id);

    always_for(
        Duration::from_secs(3),
        "one post and one update, no new message for the resolve",
        async || {
            let paths: Vec<String> = slack.requests().into_iter().map(|r| r.path).collect();
            (paths == [POST_MESSAGE, UPDATE])
                .then_some(())
                .ok_or_else(|| format!("{paths:?}"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_token_edits_the_group_message_as_queues_join_instead_of_posting_again() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let alerting = Alerting {
        group_by: "[cluster, vhost, alertname]",
        ..Alerting::bot(&slack, ready_rule("warning", "active"))
    };
    let _daemon = start_daemon(&vhost, &Tuning::default(), &alerting).await;
    publish_n(&vhost.amqp_url(), "orders", 60).await;
    let post = eventually(
        Duration::from_secs(20),
        "one chat.postMessage for the first queue",
        async || exactly(&slack, POST_MESSAGE, 1),
    )
    .await
    .remove(0);
    assert!(
        post.text().contains("[FIRING:1] Backlog orders"),
        "{}",
        post.text()
    );

    // A second queue joins the incident: the message is edited to say two.
    publish_n(&vhost.amqp_url(), "invoices", 80).await;
    let update = eventually(
        Duration::from_secs(20),
        "one chat.update saying two queues",
        async || {
            exactly(&slack, POST_MESSAGE, 1)?;
            exactly(&slack, UPDATE, 1)
        },
    )
    .await
    .remove(0);
    let answered: Value = serde_json::from_str(&post.reply).expect("the fake answered JSON");
    assert_eq!(update.json()["ts"], answered["ts"], "the posted message");
    let text = update.text();
    assert!(text.contains("[FIRING:2] Backlog: 2 queues"), "{text}");
    assert!(
        text.find("Backlog on invoices").unwrap_or(usize::MAX)
            < text.find("Backlog on orders").unwrap_or(0),
        "the bigger backlog first: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_incident_is_also_emailed_with_correlation_header() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let smtp = SmtpSink::start().await;
    let alerting =
        Alerting::webhook(&slack, ready_rule("critical", "active")).mailing_critical_to(&smtp);
    let _daemon = start_daemon(&vhost, &Tuning::default(), &alerting).await;
    let queue = "payments";
    publish_n(&vhost.amqp_url(), queue, 60).await;

    let message = eventually(Duration::from_secs(20), "one Slack message", async || {
        exactly(&slack, HOOK, 1)
    })
    .await
    .remove(0);
    let mail = eventually(Duration::from_secs(20), "one mail", async || {
        match smtp.messages().as_slice() {
            [mail] => Ok(mail.clone()),
            [] => Err("no mail yet".to_owned()),
            more => panic!("expected one mail, got {more:#?}"),
        }
    })
    .await;

    assert_eq!(mail.to, ["oncall@example.com"]);
    let subject = mail.header("Subject").expect("a subject");
    assert!(
        subject.contains("Backlog") && subject.contains(queue),
        "the subject names the alert and the queue: {subject}"
    );
    let body = mail.body();
    assert!(
        body.contains(&format!("Backlog on {queue} ({})", vhost.name())),
        "the summary is in the body:\n{body}"
    );
    assert_eq!(
        mail.header("X-Correlation-Id"),
        Some(slack_correlation_id(&message)),
        "the mail and the Slack message name the same incident"
    );
}

// ---------------------------------------------------------------------------------------------------
// Delivery when Slack fails

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_500_for_20s_then_200_is_delivered_once_after_recovery() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    slack.script(
        HOOK,
        &[(
            Mode::Status(500, "internal_error"),
            Lasting::For(Duration::from_secs(20)),
        )],
        Mode::Ok,
    );
    let daemon = start_daemon(
        &vhost,
        &Tuning::default(),
        &Alerting::webhook(&slack, ready_rule("warning", "active")),
    )
    .await;
    publish_n(&vhost.amqp_url(), "orders", 60).await;

    // Retries after ~1 s, 3 s, then 5 s (9 s capped at max_backoff) each: the 200 comes ~24 s in.
    let message = eventually(
        Duration::from_secs(20 + 45),
        "one message delivered once Slack recovered",
        async || exactly(&slack, HOOK, 1),
    )
    .await
    .remove(0);
    let attempts = slack.requests_to(HOOK);
    let first = &attempts[0];
    assert!(
        seconds_between(first, &message) >= 20.0,
        "delivered only after the 20 s of 500s"
    );
    for attempt in &attempts {
        assert_eq!(
            attempt.header("idempotency-key"),
            first.header("idempotency-key"),
            "every attempt is the same notification"
        );
    }
    let gaps: Vec<f64> = attempts
        .windows(2)
        .map(|pair| seconds_between(&pair[0], &pair[1]))
        .collect();
    for (gap, backoff) in gaps.iter().zip([1.0, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0]) {
        assert!(
            (backoff * 0.9 - 0.05..=backoff * 1.1 + 1.0).contains(gap),
            "backoff 1 s, 3 s, then capped at 5 s (±10 %); the gaps were {gaps:.2?}"
        );
    }

    always_for(Duration::from_secs(5), "no second delivery", async || {
        let attempts_now = slack.requests_to(HOOK).len();
        (attempts_now == attempts.len())
            .then_some(())
            .ok_or_else(|| format!("{attempts_now} requests, {} before", attempts.len()))
    })
    .await;
    let failures = (attempts.len() - 1) as f64;
    let labels = |outcome| [("receiver", "slack"), ("outcome", outcome)];
    assert_eq!(
        metric(
            &daemon,
            "rabbitwatch_notifications_total",
            &labels("delivered")
        )
        .await,
        Ok(1.0)
    );
    assert_eq!(
        metric(
            &daemon,
            "rabbitwatch_notifications_total",
            &labels("retried")
        )
        .await,
        Ok(failures)
    );
    assert_eq!(
        metric(&daemon, "rabbitwatch_outbox_pending", &[]).await,
        Ok(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_429_retry_after_is_honoured() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    slack.script(HOOK, &[(Mode::RateLimited, Lasting::Times(1))], Mode::Ok);
    let _daemon = start_daemon(
        &vhost,
        &Tuning::default(),
        &Alerting::webhook(&slack, ready_rule("warning", "active")),
    )
    .await;
    publish_n(&vhost.amqp_url(), "orders", 60).await;

    eventually(
        Duration::from_secs(25),
        "the message delivered after the 429",
        async || exactly(&slack, HOOK, 1),
    )
    .await;
    let attempts = slack.requests_to(HOOK);
    assert_eq!(attempts.len(), 2, "one 429, then the delivery");
    assert_eq!(attempts[0].status, Some(429));
    let waited = seconds_between(&attempts[0], &attempts[1]);
    // The outbox's own first backoff is ~1 s; Retry-After says 2 s.
    assert!(
        waited >= RETRY_AFTER_SECS as f64,
        "retried {waited:.2} s after a 429 with Retry-After: {RETRY_AFTER_SECS}"
    );
    assert!(
        waited < RETRY_AFTER_SECS as f64 + 2.0,
        "retried {waited:.2} s after the 429: not promptly once Retry-After passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payload_is_dead_lettered_and_replay_delivers_it() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    slack.set(HOOK, Mode::SlackError("invalid_payload"));
    let daemon = start_daemon(
        &vhost,
        &Tuning::default(),
        &Alerting::webhook(&slack, ready_rule("warning", "active")),
    )
    .await;
    let queue = "orders";
    publish_n(&vhost.amqp_url(), queue, 60).await;

    let letter = eventually(
        Duration::from_secs(20),
        "one dead letter",
        async || match dead_letters(&daemon).await?.as_slice() {
            [letter] => Ok(letter.clone()),
            [] => Err("no dead letter yet".to_owned()),
            more => panic!("expected one dead letter, got {more:#?}"),
        },
    )
    .await;
    assert_eq!(letter["reason"], "permanent");
    assert_eq!(letter["attempts"], 1, "a permanent error is not retried");
    assert!(
        letter["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid_payload")),
        "{letter}"
    );
    let notification = &letter["notification"];
    assert_eq!(notification["receiver"], "slack");
    assert_eq!(notification["alerts"][0]["labels"]["queue"], queue);
    let alert = alert_in_state(&daemon, "Backlog", queue, "firing")
        .await
        .expect("the alert is firing");
    let correlation_id = alert["correlation_id"].as_str().expect("a correlation id");
    assert_eq!(notification["alerts"][0]["correlation_id"], correlation_id);
    let attempts = slack.requests_to(HOOK);
    assert_eq!(attempts.len(), 1, "failed early, no retries");
    assert_eq!(
        metric(&daemon, "rabbitwatch_dead_letters", &[]).await,
        Ok(1.0)
    );
    assert_eq!(
        metric(
            &daemon,
            "rabbitwatch_notifications_total",
            &[("receiver", "slack"), ("outcome", "dead_lettered")]
        )
        .await,
        Ok(1.0)
    );

    let id = letter["id"].as_u64().expect("a numeric id");
    let listed = run_cli(
        &["deadletters", "list", "--url", daemon.base_url()],
        daemon.dir(),
    );
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let line = stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id.to_string().as_str()))
        .unwrap_or_else(|| panic!("dead letter {id} not listed:\n{stdout}"));
    for expected in ["slack", "permanent", correlation_id, "invalid_payload"] {
        assert!(line.contains(expected), "no {expected:?} in {line:?}");
    }

    slack.set(HOOK, Mode::Ok);
    let (status, body) = daemon
        .post(&format!("/api/v1/deadletters/{id}/replay"))
        .await
        .expect("POST replay");
    assert_eq!(status, 202, "{body}");
    let message = eventually(
        Duration::from_secs(10),
        "the replayed notification delivered",
        async || exactly(&slack, HOOK, 1),
    )
    .await
    .remove(0);
    assert_eq!(
        message.header("idempotency-key"),
        attempts[0].header("idempotency-key"),
        "the same notification"
    );
    eventually(
        Duration::from_secs(5),
        "no dead letters left",
        async || match metric(&daemon, "rabbitwatch_dead_letters", &[]).await? {
            0.0 if dead_letters(&daemon).await?.is_empty() => Ok(()),
            n => Err(format!("rabbitwatch_dead_letters {n}")),
        },
    )
    .await;
    always_for(
        Duration::from_secs(3),
        "delivered exactly once",
        async || exactly(&slack, HOOK, 1).map(drop),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_notification_in_the_outbox_delivers_it_after_restart() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    slack.set(HOOK, Mode::Status(500, "internal_error"));
    let mut daemon = start_daemon(
        &vhost,
        &Tuning::default(),
        &Alerting::webhook(&slack, ready_rule("warning", "active")),
    )
    .await;
    let queue = "orders";
    publish_n(&vhost.amqp_url(), queue, 60).await;

    eventually(
        Duration::from_secs(25),
        "the firing notification retrying in the outbox",
        async || {
            let attempts = slack.requests_to(HOOK).len();
            let pending = metric(&daemon, "rabbitwatch_outbox_pending", &[]).await?;
            (attempts >= 2 && pending == 1.0)
                .then_some(())
                .ok_or_else(|| format!("{attempts} attempts, rabbitwatch_outbox_pending {pending}"))
        },
    )
    .await;
    daemon.kill9();
    let failed_key = slack.requests_to(HOOK)[0]
        .header("idempotency-key")
        .map(str::to_owned);
    slack.set(HOOK, Mode::Ok);
    daemon.restart().await;

    let firing = eventually(
        Duration::from_secs(15),
        "the firing message delivered after the restart",
        async || exactly(&slack, HOOK, 1),
    )
    .await
    .remove(0);
    assert_eq!(
        firing.header("idempotency-key").map(str::to_owned),
        failed_key,
        "the notification from before the crash, not a new one"
    );
    let (correlation_id, state, _) = idempotency_key(&firing);
    assert_eq!(state, "firing");
    always_for(
        Duration::from_secs(3),
        "no duplicate firing message",
        async || exactly(&slack, HOOK, 1).map(drop),
    )
    .await;

    let _consumer = consume_at_rate(&vhost.amqp_url(), queue, 200).await;
    let resolved = eventually(Duration::from_secs(20), "the resolve", async || {
        exactly(&slack, HOOK, 2)
    })
    .await
    .remove(1);
    let (resolved_id, state, _) = idempotency_key(&resolved);
    assert_eq!(state, "resolved");
    assert_eq!(
        resolved_id, correlation_id,
        "the incident survived the crash"
    );
    assert_eq!(slack_correlation_id(&resolved), correlation_id);
}

// ---------------------------------------------------------------------------------------------------
// Trying a rule, hostile names, many queues

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rule_is_visible_but_sends_nothing() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let daemon = start_daemon(
        &vhost,
        &Tuning::default(),
        &Alerting::webhook(&slack, ready_rule("warning", "shadow")),
    )
    .await;
    let queue = "orders";
    publish_n(&vhost.amqp_url(), queue, 60).await;

    let alert = eventually(
        Duration::from_secs(20),
        "the shadow alert firing in the API",
        async || alert_in_state(&daemon, "Backlog", queue, "firing").await,
    )
    .await;
    assert_eq!(alert["mode"], "shadow");
    let labels = [
        ("alertname", "Backlog"),
        ("state", "firing"),
        ("mode", "shadow"),
    ];
    assert_eq!(
        metric(&daemon, "rabbitwatch_alerts", &labels).await,
        Ok(1.0)
    );
    always_for(Duration::from_secs(5), "Slack hears nothing", async || {
        let requests = slack.requests();
        requests
            .is_empty()
            .then_some(())
            .ok_or_else(|| format!("{:#?}", texts(&requests)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queue_name_is_inert_in_slack_and_email() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let smtp = SmtpSink::start().await;
    let alerting =
        Alerting::webhook(&slack, ready_rule("critical", "active")).mailing_critical_to(&smtp);
    let daemon = start_daemon(&vhost, &Tuning::default(), &alerting).await;
    publish_n(&vhost.amqp_url(), HOSTILE_QUEUE, 60).await;

    let message = eventually(Duration::from_secs(20), "one Slack message", async || {
        exactly(&slack, HOOK, 1)
    })
    .await
    .remove(0);
    let alert = alert_in_state(&daemon, "Backlog", HOSTILE_QUEUE, "firing")
        .await
        .expect("the alert carries the name unchanged");
    assert_eq!(alert["labels"]["queue"], HOSTILE_QUEUE);
    let raw = message.text();
    assert!(!raw.contains("<!channel>"), "a mention got through: {raw}");
    assert!(!raw.contains("<http://evil"), "a link got through: {raw}");
    assert!(
        raw.contains("&lt;!channel&gt; *x* &lt;http://evil|click&gt;"),
        "the name is shown, escaped: {raw}"
    );

    let mail: ReceivedMail = eventually(Duration::from_secs(20), "one mail", async || {
        smtp.messages()
            .first()
            .cloned()
            .ok_or_else(|| "no mail yet".to_owned())
    })
    .await;
    assert_eq!(mail.to, ["oncall@example.com"], "no extra recipient");
    let head = mail.data.split("\r\n\r\n").next().unwrap_or_default();
    let subject_lines: Vec<&str> = head
        .split("\r\n")
        .filter(|line| line.to_ascii_lowercase().starts_with("subject:"))
        .collect();
    assert_eq!(subject_lines.len(), 1, "{head}");
    let subject = mail.header("Subject").expect("a subject");
    assert!(
        subject.contains(HOSTILE_QUEUE),
        "the name stays inside the subject, as text: {subject}"
    );
    let names: BTreeSet<String> = mail
        .header_lines()
        .iter()
        .filter_map(|line| {
            line.split_once(':')
                .map(|(name, _)| name.to_ascii_lowercase())
        })
        .collect();
    for injected in ["bcc", "cc", "reply-to"] {
        assert!(!names.contains(injected), "{injected} header in {head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_queues_at_once_are_grouped_into_one_message() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let alerting = Alerting {
        group_by: "[alertname]",
        // The broker's statistics reach 100 queues over ~5 s; the group waits for all of them.
        group_wait: "15s",
        ..Alerting::webhook(&slack, ready_rule("warning", "active"))
    };
    let daemon = start_daemon(&vhost, &Tuning::default(), &alerting).await;
    let queues: Vec<String> = (0..100).map(|i| format!("q{i:03}")).collect();
    publish_n_each(&vhost.amqp_url(), &queues, 60).await;

    let message = eventually(
        Duration::from_secs(40),
        "one Slack message for the group",
        async || exactly(&slack, HOOK, 1),
    )
    .await
    .remove(0);
    let text = message.text();
    assert!(
        text.contains(&format!(
            "[FIRING:100] Backlog: 100 queues in vhost {}",
            vhost.name()
        )),
        "{text}"
    );
    assert!(text.contains("100 queues affected, worst first"), "{text}");
    // Equal backlogs rank by name: the first five in full, the next forty a line each.
    let shown: BTreeSet<&str> = queues
        .iter()
        .map(String::as_str)
        .filter(|queue| text.contains(&format!("Backlog on {queue} (")))
        .collect();
    assert_eq!(
        shown,
        queues[..5].iter().map(String::as_str).collect(),
        "five alerts shown in full"
    );
    assert!(text.contains("• q005 — 60 ready, 0 consumers"), "{text}");
    assert!(text.contains("and 55 more"), "{text}");
    assert_eq!(slack_correlation_ids(&message).len(), 5);
    assert_eq!(
        metric(
            &daemon,
            "rabbitwatch_alerts",
            &[("alertname", "Backlog"), ("state", "firing")]
        )
        .await,
        Ok(100.0)
    );
    always_for(Duration::from_secs(3), "still one message", async || {
        exactly(&slack, HOOK, 1).map(drop)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_in_separate_groups_are_paced_a_second_apart_and_none_is_lost() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let _daemon = start_daemon(
        &vhost,
        &Tuning::default(),
        &Alerting::webhook(&slack, ready_rule("warning", "active")),
    )
    .await;
    let queues: Vec<String> = (0..10).map(|i| format!("q{i:02}")).collect();
    publish_n_each(&vhost.amqp_url(), &queues, 60).await;

    let messages = eventually(
        Duration::from_secs(40),
        "ten Slack messages, one per queue",
        async || exactly(&slack, HOOK, 10),
    )
    .await;
    let gaps: Vec<f64> = messages
        .windows(2)
        .map(|pair| seconds_between(&pair[0], &pair[1]))
        .collect();
    assert!(
        gaps.iter().all(|gap| *gap >= 0.9),
        "Slack messages at least 1 s apart; the gaps were {gaps:.2?}"
    );
    let seen: BTreeSet<String> = messages
        .iter()
        .map(|m| {
            let text = m.text();
            queues
                .iter()
                .find(|queue| text.contains(&format!("Backlog on {queue} (")))
                .unwrap_or_else(|| panic!("no queue of ours in {text}"))
                .clone()
        })
        .collect();
    assert_eq!(seen, queues.iter().cloned().collect(), "every queue, once");
    always_for(Duration::from_secs(3), "no more than ten", async || {
        exactly(&slack, HOOK, 10).map(drop)
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------
// Rule unit tests through the CLI

#[test]
fn test_rules_cli_passes_the_default_pack_and_fails_a_wrong_expectation_readably() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pack = run_cli(
        &[
            "test",
            "rules",
            "rules/tests/broker.yaml",
            "rules/tests/canary.yaml",
            "rules/tests/queue-health.yaml",
        ],
        root,
    );
    let stdout = String::from_utf8_lossy(&pack.stdout);
    assert!(
        pack.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&pack.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");

    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(
        dir.path().join("rules.yaml"),
        ready_rule("warning", "active"),
    )
    .expect("writing the rules");
    std::fs::write(
        dir.path().join("wrong.yaml"),
        r#"rule_files: [rules.yaml]
evaluation_interval: 10s
tests:
  - name: the summary names the queue
    input_series:
      - queue: { cluster: prod, vhost: /, queue: orders }
        values: { messages_ready: "200x10" }
    alert_rule_test:
      - eval_time: 30s
        alertname: Backlog
        exp_alerts:
          - exp_labels: { queue: orders, severity: warning }
            exp_annotations: { summary: "Backlog on invoices (/)" }
"#,
    )
    .expect("writing the rule test");
    let wrong = run_cli(&["test", "rules", "wrong.yaml"], dir.path());
    let stdout = String::from_utf8_lossy(&wrong.stdout);
    assert_eq!(wrong.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("the summary names the queue"),
        "{stdout}"
    );
    let line_with = |word: &str| {
        stdout
            .lines()
            .find(|line| line.trim_start().starts_with(word))
            .unwrap_or_else(|| panic!("no {word:?} line in:\n{stdout}"))
            .trim()
            .to_owned()
    };
    assert_eq!(
        line_with("expected:"),
        r#"expected: "Backlog on invoices (/)""#
    );
    assert_eq!(line_with("got:"), r#"got: "Backlog on orders (/)""#);
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}
