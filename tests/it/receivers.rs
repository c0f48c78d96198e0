//! Receivers against real listeners: an in-test HTTP server that answers like Slack (and like a
//! webhook consumer), including Slack's error bodies and 429 `Retry-After`, and a real SMTP
//! listener. Each test checks what the far side received and how failures are classified.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rabbitwatch::domain::{AlertStatus, AlertSummary, GroupStatus, Notification, Secret};
use rabbitwatch::receivers::{
    DeliveryError, EmailConfig, EmailReceiver, Receiver, SlackConfig, SlackReceiver, WebhookConfig,
    WebhookReceiver,
};
use reqwest::Url;
use serde_json::Value;
use sha2::Sha256;

use crate::util::{free_port, http_client};
use crate::util_slack::{FakeHttp, Mode, TS};
use crate::util_smtp::SmtpSink;

const HOSTILE_SLACK: &str = "<!channel> *x* <http://evil|click>";
const HOSTILE_EMAIL: &str = "x\r\nBcc: victim@example.com";

// ---------------------------------------------------------------------------------------------------
// Notifications

fn alert(queue: &str, severity: &str, status: AlertStatus) -> AlertSummary {
    AlertSummary {
        status,
        labels: strings(&[
            ("alertname", "QueueBacklogGrowing"),
            ("cluster", "local"),
            ("vhost", "/"),
            ("queue", queue),
            ("severity", severity),
            ("scope", "queue"),
        ]),
        annotations: BTreeMap::from([
            (
                "summary".to_owned(),
                format!("Backlog growing on {queue} (/)"),
            ),
            (
                "description".to_owned(),
                "120/s in, 80/s out, 1234 ready".to_owned(),
            ),
            (
                "runbook_url".to_owned(),
                "https://wiki.example.com/runbooks/backlog".to_owned(),
            ),
        ]),
        starts_at: 1_700_000_000_000,
        ends_at: (status == AlertStatus::Resolved).then_some(1_700_000_600_000),
        correlation_id: "0190a5b2-7c1e-7000-8000-00000000c0de".to_owned(),
        fingerprint: "5f1c2a9e0b7d4c31".to_owned(),
        values: BTreeMap::from([
            ("publish_rate".to_owned(), 120.0),
            ("consume_rate".to_owned(), 80.0),
            ("messages".to_owned(), 1234.0),
            ("consumers".to_owned(), 2.0),
            ("drain_eta".to_owned(), f64::INFINITY),
        ]),
    }
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn notification(queue: &str, status: GroupStatus) -> Notification {
    let alert_status = match status {
        GroupStatus::Firing => AlertStatus::Firing,
        GroupStatus::Resolved => AlertStatus::Resolved,
    };
    let a = alert(queue, "critical", alert_status);
    let state = if status == GroupStatus::Firing {
        "firing:1"
    } else {
        "resolved:2"
    };
    Notification {
        receiver: "test".to_owned(),
        group_key: format!("{{}}:{{queue=\"{queue}\"}}"),
        status,
        group_labels: strings(&[("queue", queue)]),
        common_labels: a.labels.clone(),
        common_annotations: BTreeMap::new(),
        idempotency_key: format!("{}:{state}", a.correlation_id),
        alerts: vec![a],
        flapping: false,
        previous: None,
        amends: false,
        created_at: 1_700_000_000_000,
        scaling: None,
    }
}

fn bot(fake: &FakeHttp) -> SlackReceiver {
    let cfg = SlackConfig {
        bot_token: Some(Secret::new("xoxb-test-token".to_owned())),
        channel: Some("#ops".to_owned()),
        api_url: fake.url("/api"),
        ..SlackConfig::default()
    };
    SlackReceiver::new("ops-slack", cfg, http_client()).expect("a valid Slack config")
}

fn slack_webhook(fake: &FakeHttp) -> SlackReceiver {
    let cfg = SlackConfig {
        webhook_url: Some(fake.url("/services/T0/B0/secret")),
        dashboard_url: Some("https://grafana.example.com/d/rabbitmq".to_owned()),
        ..SlackConfig::default()
    };
    SlackReceiver::new("ops-slack", cfg, http_client()).expect("a valid Slack config")
}

fn transient_with(e: &DeliveryError, reason: &str, retry_after: Option<Duration>) {
    assert!(e.is_retriable(), "expected transient {reason}, got {e:?}");
    assert_eq!(e.reason().as_str(), reason, "{e:?}");
    assert_eq!(e.retry_after(), retry_after, "{e:?}");
}

fn permanent_with(e: &DeliveryError, reason: &str, message_contains: &str) {
    assert!(!e.is_retriable(), "expected permanent {reason}, got {e:?}");
    assert_eq!(e.reason().as_str(), reason, "{e:?}");
    assert!(e.to_string().contains(message_contains), "{e}");
}

/// The texts Slack parses as mrkdwn: top-level `text`, attachment `fallback`, `mrkdwn` objects.
fn mrkdwn_texts(v: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if map.get("type").and_then(Value::as_str) == Some("mrkdwn")
                    && let Some(text) = map.get("text").and_then(Value::as_str)
                {
                    out.push(text.to_owned());
                }
                if let Some(text) = map.get("fallback").and_then(Value::as_str) {
                    out.push(text.to_owned());
                }
                map.values().for_each(|value| walk(value, out));
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out: Vec<String> = v["text"].as_str().map(str::to_owned).into_iter().collect();
    walk(v, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------------
// Slack

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_bot_posts_when_firing_and_updates_the_same_message_on_resolve() {
    let fake = FakeHttp::start().await;
    let slack = bot(&fake);

    let firing = notification("orders", GroupStatus::Firing);
    let delivered = slack.deliver(&firing).await.expect("posting");
    assert_eq!(delivered.handle.as_deref(), Some("C1:1700000000.000100"));

    let mut resolved = notification("orders", GroupStatus::Resolved);
    resolved.previous = delivered.handle.clone();
    let updated = slack.deliver(&resolved).await.expect("updating");
    assert_eq!(updated.handle, delivered.handle);

    let requests = fake.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/api/chat.postMessage", "/api/chat.update"]);

    let (post, update) = (&requests[0], &requests[1]);
    assert_eq!(post.header("authorization"), Some("Bearer xoxb-test-token"));
    assert_eq!(
        post.header("idempotency-key"),
        Some(firing.idempotency_key.as_str())
    );
    assert_eq!(
        update.header("idempotency-key"),
        Some(resolved.idempotency_key.as_str())
    );
    let (post, update) = (post.json(), update.json());
    assert_eq!(post["channel"], "#ops");
    assert_eq!(
        post["attachments"][0]["color"], "#E01E5A",
        "critical is red"
    );
    assert!(
        post["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("[FIRING:1] QueueBacklogGrowing orders (/) on local")
    );
    assert_eq!(update["channel"], "C1", "the channel id Slack answered");
    assert_eq!(update["ts"], TS);
    assert_eq!(
        update["attachments"][0]["color"], "#2EB67D",
        "resolved is green"
    );
    assert!(update["text"].as_str().unwrap().contains("RESOLVED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_resolve_is_posted_anew_when_the_original_message_is_gone() {
    let fake = FakeHttp::start().await;
    fake.set("/api/chat.update", Mode::SlackError("message_not_found"));
    let mut resolved = notification("orders", GroupStatus::Resolved);
    resolved.previous = Some("C1:1600000000.000001".to_owned());

    let delivered = bot(&fake).deliver(&resolved).await.expect("the resolve");

    assert_eq!(delivered.handle.as_deref(), Some("C1:1700000000.000100"));
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/api/chat.update", "/api/chat.postMessage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_web_api_errors_are_classified_by_whether_retrying_can_help() {
    let fake = FakeHttp::start().await;
    let slack = bot(&fake);
    let firing = notification("orders", GroupStatus::Firing);
    let post = "/api/chat.postMessage";

    for code in ["invalid_payload", "channel_not_found", "invalid_auth"] {
        fake.set(post, Mode::SlackError(code));
        let e = slack.deliver(&firing).await.unwrap_err();
        permanent_with(&e, "slack_api", code);
    }

    fake.set(post, Mode::RateLimited);
    let e = slack.deliver(&firing).await.unwrap_err();
    transient_with(&e, "rate_limited", Some(Duration::from_secs(2)));

    fake.set(post, Mode::Status(500, "oops"));
    let e = slack.deliver(&firing).await.unwrap_err();
    transient_with(&e, "http_5xx", None);

    fake.set(post, Mode::SlackError("ratelimited"));
    let e = slack.deliver(&firing).await.unwrap_err();
    assert!(
        e.is_retriable() && e.reason().as_str() == "rate_limited",
        "{e:?}"
    );

    // Every attempt carried the idempotency key.
    for request in fake.requests() {
        assert_eq!(
            request.header("idempotency-key"),
            Some(firing.idempotency_key.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_webhook_errors_are_classified_by_whether_retrying_can_help() {
    let fake = FakeHttp::start().await;
    let slack = slack_webhook(&fake);
    let firing = notification("orders", GroupStatus::Firing);
    let hook = "/services/T0/B0/secret";

    assert_eq!(slack.deliver(&firing).await.expect("posting").handle, None);

    fake.set(hook, Mode::SlackError("invalid_payload"));
    permanent_with(
        &slack.deliver(&firing).await.unwrap_err(),
        "http_4xx",
        "invalid_payload",
    );
    for (status, body) in [
        (403, "action_prohibited"),
        (404, "no_service"),
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
    ] {
        fake.set(hook, Mode::Status(status, body));
        let e = slack.deliver(&firing).await.unwrap_err();
        permanent_with(&e, "http_4xx", body);
        // The webhook URL is a credential: it must not leak into errors (and so into logs).
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    fake.set(hook, Mode::RateLimited);
    transient_with(
        &slack.deliver(&firing).await.unwrap_err(),
        "rate_limited",
        Some(Duration::from_secs(2)),
    );
    fake.set(hook, Mode::Status(503, "unavailable"));
    transient_with(&slack.deliver(&firing).await.unwrap_err(), "http_5xx", None);

    for request in fake.requests() {
        assert_eq!(
            request.header("idempotency-key"),
            Some(firing.idempotency_key.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_unreachable_is_transient_and_does_not_leak_the_webhook_url() {
    let _ = http_client(); // installs the ring provider
    let url = Url::parse(&format!(
        "http://127.0.0.1:{}/services/T0/B0/secret",
        free_port()
    ))
    .unwrap();
    let cfg = SlackConfig {
        webhook_url: Some(url),
        ..SlackConfig::default()
    };
    let slack = SlackReceiver::new("ops-slack", cfg, http_client()).unwrap();
    let e = slack
        .deliver(&notification("orders", GroupStatus::Firing))
        .await
        .unwrap_err();
    transient_with(&e, "connect", None);
    assert!(!e.to_string().contains("secret"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_hostile_queue_name_arrives_as_inert_text() {
    let fake = FakeHttp::start().await;
    let hostile = notification(HOSTILE_SLACK, GroupStatus::Firing);
    slack_webhook(&fake)
        .deliver(&hostile)
        .await
        .expect("posting");
    bot(&fake).deliver(&hostile).await.expect("posting");

    for request in fake.requests() {
        let raw = String::from_utf8(request.body.to_vec()).unwrap();
        assert!(!raw.contains("<!channel>"), "a mention got through: {raw}");
        assert!(!raw.contains("<http://evil"), "a link got through: {raw}");
        // Shown, escaped, as the literal name it is.
        assert!(
            raw.contains("&lt;!channel&gt; *x* &lt;http://evil|click&gt;"),
            "{raw}"
        );
        for text in mrkdwn_texts(&request.json()) {
            assert!(!text.contains("*x*"), "bold in mrkdwn: {text:?}");
            assert!(!text.contains("<!"), "mention in mrkdwn: {text:?}");
            assert!(
                !text.contains("<http://evil") && !text.contains("|click>"),
                "untrusted link in mrkdwn: {text:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_message_carries_fields_links_and_correlation_id() {
    let fake = FakeHttp::start().await;
    let firing = notification("orders", GroupStatus::Firing);
    slack_webhook(&fake)
        .deliver(&firing)
        .await
        .expect("posting");
    let body = String::from_utf8(fake.only_request().body.to_vec()).unwrap();
    for expected in [
        "Cluster: local",
        "Queue: orders (vhost /)",
        "Severity: critical",
        "Rates: 120/s in, 80/s out",
        "Backlog: 1234 messages",
        "Consumers: 2",
        "Drain ETA: never",
        "Backlog growing on orders (/)",
        "<https://wiki.example.com/runbooks/backlog|Runbook>",
        "<https://grafana.example.com/d/rabbitmq|Dashboard>",
        "correlation_id: 0190a5b2-7c1e-7000-8000-00000000c0de",
    ] {
        assert!(body.contains(expected), "missing {expected:?} in {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_is_paced_per_channel_through_the_receiver_enum() {
    let fake = FakeHttp::start().await;
    let receiver = Receiver::Slack(bot(&fake));
    assert_eq!(receiver.name(), "ops-slack");
    assert_eq!(receiver.kind(), "slack");
    assert_eq!(
        receiver.pace(),
        Some(("slack:#ops".to_owned(), Duration::from_secs(1)))
    );
    let delivered = receiver
        .deliver(&notification("orders", GroupStatus::Firing))
        .await
        .expect("posting");
    assert!(delivered.handle.is_some());
}

// ---------------------------------------------------------------------------------------------------
// Webhook

fn webhook(fake: &FakeHttp, secret: Option<&str>, timeout: Duration) -> WebhookReceiver {
    WebhookReceiver::new(
        "autoscaler",
        WebhookConfig {
            url: fake.url("/scale"),
            hmac_secret: secret.map(|s| Secret::new(s.to_owned())),
            timeout,
            max_alerts: 0,
            external_url: None,
        },
        http_client(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_body_is_alertmanager_shaped_and_its_signature_verifies() {
    let fake = FakeHttp::start().await;
    let n = notification("orders", GroupStatus::Firing);
    webhook(&fake, Some("s3cret"), Duration::from_secs(5))
        .deliver(&n)
        .await
        .expect("delivering");

    let request = fake.only_request();
    assert_eq!(request.path, "/scale");
    assert_eq!(
        request.header("idempotency-key"),
        Some(n.idempotency_key.as_str())
    );
    let signature = request
        .header("x-rabbitwatch-signature")
        .expect("a signature header");
    let hex = signature.strip_prefix("sha256=").expect("sha256=<hex>");
    let mut mac = <Hmac<Sha256>>::new_from_slice(b"s3cret").unwrap();
    mac.update(&request.body);
    mac.verify_slice(&hex::decode(hex).expect("hex"))
        .expect("the signature matches the exact body received");

    let body = request.json();
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "test");
    assert_eq!(body["groupLabels"]["queue"], "orders");
    assert_eq!(body["commonLabels"]["alertname"], "QueueBacklogGrowing");
    assert_eq!(body["alerts"][0]["startsAt"], "2023-11-14T22:13:20.000Z");
    assert_eq!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(body["alerts"][0]["fingerprint"], "5f1c2a9e0b7d4c31");
    assert_eq!(body["alerts"][0]["values"]["publish_rate"], 120.0);
    assert_eq!(
        body["correlation_id"],
        "0190a5b2-7c1e-7000-8000-00000000c0de"
    );
    assert_eq!(body["idempotency_key"], n.idempotency_key.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_without_a_secret_is_not_signed() {
    let fake = FakeHttp::start().await;
    webhook(&fake, None, Duration::from_secs(5))
        .deliver(&notification("orders", GroupStatus::Resolved))
        .await
        .expect("delivering");
    let request = fake.only_request();
    assert_eq!(request.header("x-rabbitwatch-signature"), None);
    assert_eq!(request.json()["status"], "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_failures_are_classified_like_http_says() {
    let fake = FakeHttp::start().await;
    let hook = webhook(&fake, None, Duration::from_millis(500));
    let n = notification("orders", GroupStatus::Firing);

    fake.set("/scale", Mode::RateLimited);
    transient_with(
        &hook.deliver(&n).await.unwrap_err(),
        "rate_limited",
        Some(Duration::from_secs(2)),
    );
    fake.set("/scale", Mode::Status(408, "slow"));
    transient_with(&hook.deliver(&n).await.unwrap_err(), "timeout", None);
    fake.set("/scale", Mode::Status(502, "bad gateway"));
    transient_with(&hook.deliver(&n).await.unwrap_err(), "http_5xx", None);
    fake.set("/scale", Mode::Status(422, "unknown queue"));
    permanent_with(
        &hook.deliver(&n).await.unwrap_err(),
        "http_4xx",
        "unknown queue",
    );
    fake.set("/scale", Mode::Hang);
    transient_with(&hook.deliver(&n).await.unwrap_err(), "timeout", None);
}

// ---------------------------------------------------------------------------------------------------
// Email

fn email(sink_url: &str) -> EmailReceiver {
    EmailReceiver::new(
        "oncall-email",
        EmailConfig {
            smtp_url: sink_url.to_owned(),
            from: "rabbitwatch@example.com".to_owned(),
            to: vec!["oncall@example.com".to_owned()],
            username: None,
            password: None,
            subject_prefix: None,
            external_url: None,
        },
    )
    .expect("a valid email config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_reaches_a_real_smtp_listener_with_subject_body_and_keys() {
    let sink = SmtpSink::start().await;
    let receiver = email(&sink.url());
    receiver.verify().await.expect("the sink answers");
    let n = notification("orders", GroupStatus::Firing);

    let delivered = receiver.deliver(&n).await.expect("sending");

    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let mail = &messages[0];
    assert_eq!(mail.from, "rabbitwatch@example.com");
    assert_eq!(mail.to, ["oncall@example.com"]);
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("[FIRING:1] QueueBacklogGrowing orders (/) on local")
    );
    assert_eq!(
        mail.header("X-Correlation-Id").as_deref(),
        Some("0190a5b2-7c1e-7000-8000-00000000c0de")
    );
    assert_eq!(
        mail.header("X-Rabbitwatch-Idempotency-Key").as_deref(),
        Some(n.idempotency_key.as_str())
    );
    assert_eq!(mail.header("Message-ID"), delivered.handle);
    let body = mail.body();
    for expected in [
        "QueueBacklogGrowing orders (/) on local (firing)",
        "summary: Backlog growing on orders (/)",
        "description: 120/s in, 80/s out, 1234 ready",
        "runbook_url: https://wiki.example.com/runbooks/backlog",
        "queue = orders",
        "severity = critical",
        "publish_rate = 120",
        "Drain ETA: never",
        "Correlation id: 0190a5b2-7c1e-7000-8000-00000000c0de",
    ] {
        assert!(body.contains(expected), "missing {expected:?} in\n{body}");
    }

    // The resolve threads under the firing message.
    let mut resolved = notification("orders", GroupStatus::Resolved);
    resolved.previous = delivered.handle.clone();
    receiver
        .deliver(&resolved)
        .await
        .expect("sending the resolve");
    let messages = sink.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].header("In-Reply-To"), delivered.handle);
    assert!(
        messages[1]
            .header("Subject")
            .unwrap()
            .starts_with("[RESOLVED:1]")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_hostile_queue_name_adds_no_header_and_no_recipient() {
    let sink = SmtpSink::start().await;
    email(&sink.url())
        .deliver(&notification(HOSTILE_EMAIL, GroupStatus::Firing))
        .await
        .expect("sending");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let mail = &messages[0];
    assert_eq!(
        mail.to,
        ["oncall@example.com"],
        "no extra envelope recipient"
    );
    assert!(mail.headers("Bcc").is_empty(), "{:?}", mail.header_lines());
    let subject = mail.header("Subject").unwrap();
    assert!(
        subject.contains("x Bcc: victim@example.com (/) on local"),
        "the name stays inside the subject: {subject}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_refusals_are_classified_by_reply_code() {
    let n = notification("orders", GroupStatus::Firing);
    type Refuse = fn(&SmtpSink, u16);
    let cases: [(Refuse, u16, bool, &str); 4] = [
        (SmtpSink::reject_rcpt, 550, false, "smtp_5xx"),
        (SmtpSink::reject_rcpt, 451, true, "smtp_4xx"),
        (SmtpSink::reject_data, 554, false, "smtp_5xx"),
        (SmtpSink::reject_data, 451, true, "smtp_4xx"),
    ];
    for (reject, code, retriable, reason) in cases {
        let sink = SmtpSink::start().await;
        reject(&sink, code);
        let e = email(&sink.url()).deliver(&n).await.unwrap_err();
        assert_eq!(e.is_retriable(), retriable, "{code}: {e:?}");
        assert_eq!(e.reason().as_str(), reason, "{code}: {e:?}");
        assert!(sink.messages().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_to_a_server_that_is_not_there_is_transient() {
    let receiver = email(&format!("smtp://127.0.0.1:{}", free_port()));
    let e = receiver.verify().await.unwrap_err();
    assert!(e.is_retriable(), "{e:?}");
    let e = receiver
        .deliver(&notification("orders", GroupStatus::Firing))
        .await
        .unwrap_err();
    assert!(e.is_retriable(), "{e:?}");
    assert_eq!(e.reason().as_str(), "connect", "{e:?}");
}
