//! Storms: a deployment dies and takes the consumers of 500 queues with it. With the default route
//! (`group_by: [cluster, vhost, alertname]`, `group_wait: 10s`, `group_interval: 1m`) Slack hears
//! about it in a few messages that say how many queues are hit, worst first, and hears it resolve
//! as one; with a bot token the one message is edited as the group changes instead of reposted.
//!
//! The route is the default one, untouched. The one timing shortened is the default pack's
//! `for: 2m` on `QueueNoConsumers` (to 15 s, to keep the test short): every queue's alert goes
//! pending within the same few polls however long `for` is, so the spread the grouping must absorb
//! is the same, only later. Polls are every 1 s (the default is 10 s): alerts spread over more
//! cycles, the harder case for grouping.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{
    CLUSTER, Daemon, TestVhost, Tuning, always_for, config_for, consumers_on_each, eventually,
    find, free_port, publish_n, publish_n_each, purge_each,
};
use crate::util_slack::{FakeHttp, Recorded};

const HOOK: &str = "/hooks/T000";
const POST_MESSAGE: &str = "/api/chat.postMessage";
const UPDATE: &str = "/api/chat.update";
const QUEUES: usize = 500;
/// The queue with the biggest backlog: named first.
const WORST: &str = "orders.042";
/// The claim: at most this many Slack messages in the first `WINDOW` of the incident.
const MAX_MESSAGES: usize = 5;
const WINDOW: Duration = Duration::from_secs(180);

/// The default queue rules, with `QueueNoConsumers`'s `for` set to `wait`.
fn default_queue_rules(wait: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/queue-health.yaml");
    let pack = std::fs::read_to_string(&path).expect("reading the default pack");
    let rule = pack
        .find("- alert: QueueNoConsumers")
        .expect("the default pack has QueueNoConsumers");
    let at = rule
        + pack[rule..]
            .find("for: ")
            .expect("QueueNoConsumers has a `for`");
    let end = at + pack[at..].find('\n').expect("a line end");
    format!("{}for: {wait}{}", &pack[..at], &pack[end..])
}

fn accepted(fake: &FakeHttp, path: &str) -> Vec<Recorded> {
    fake.requests_to(path)
        .into_iter()
        .filter(Recorded::accepted)
        .collect()
}

/// The message's header line.
fn header(message: &Recorded) -> String {
    message.json()["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The text of the first block that names one of our queues: the worst one, shown first.
fn first_queue_named(message: &Recorded) -> String {
    let body = message.json();
    body["attachments"][0]["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["text"]["text"].as_str().unwrap_or_default().to_owned())
        .find(|t| t.contains("orders."))
        .unwrap_or_default()
}

/// At most `MAX_MESSAGES` posts on each Slack, updates bounded too (one per `group_interval`).
fn within_bounds(slack: &FakeHttp) -> Result<(), String> {
    let (hook, posts, updates) = (
        accepted(slack, HOOK).len(),
        accepted(slack, POST_MESSAGE).len(),
        accepted(slack, UPDATE).len(),
    );
    if hook <= MAX_MESSAGES && posts <= MAX_MESSAGES && updates <= MAX_MESSAGES {
        Ok(())
    } else {
        Err(format!(
            "{hook} webhook messages, {posts} chat.postMessage, {updates} chat.update: {:#?}",
            slack
                .requests()
                .iter()
                .map(|r| (r.path.clone(), header(r)))
                .collect::<Vec<_>>()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_queues_losing_their_consumers_page_a_few_slack_messages_that_count_them() {
    let vhost = TestVhost::create().await;
    let slack = FakeHttp::start().await;
    let amqp = vhost.amqp_url();
    let queues: Vec<String> = (0..QUEUES).map(|i| format!("orders.{i:03}")).collect();
    publish_n_each(&amqp, &queues, 10).await;
    publish_n(&amqp, WORST, 190).await;
    // The deployment: a consumer on every queue, each holding one message.
    let fleet = consumers_on_each(&amqp, &queues, 1).await;

    let alerting = format!(
        r##"rules: [rules.yaml]
receivers:
  - name: slack-webhook
    slack: {{ webhook_url: "{}" }}
  - name: slack-bot
    slack: {{ bot_token_file: token.txt, channel: "#ops", api_url: "{}" }}
route:
  receiver: slack-webhook
  routes:
    - {{ receiver: slack-bot, continue: true }}
    - {{ receiver: slack-webhook }}
"##,
        slack.url(HOOK),
        slack.url("/api")
    );
    let config = config_for(vhost.name(), free_port(), &Tuning::default()) + &alerting;
    let daemon = Daemon::start_with_files(
        &config,
        &[
            ("rules.yaml", &default_queue_rules("15s")),
            ("token.txt", "xoxb-storm"),
        ],
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the daemon seeing a consumer on each of the 500 queues",
        async || {
            let samples = daemon.metrics().await?;
            let consumed = queues
                .iter()
                .filter(|q| {
                    find(
                        &samples,
                        "rabbitwatch_queue_consumers",
                        &[("cluster", CLUSTER), ("vhost", vhost.name()), ("queue", q)],
                    ) == Some(1.0)
                })
                .count();
            (consumed == QUEUES)
                .then_some(())
                .ok_or_else(|| format!("{consumed} of {QUEUES} queues with their consumer"))
        },
    )
    .await;

    fleet.crash().await;
    let crashed = Instant::now();
    // `for` (15 s) + the broker's 5 s statistics step + `group_wait` (10 s), with room.
    eventually(
        Duration::from_secs(90),
        "the first message on each Slack",
        async || {
            within_bounds(&slack)?;
            let first = |path| accepted(&slack, path).first().map(|r| r.at);
            match (first(HOOK), first(POST_MESSAGE)) {
                (Some(_), Some(_)) => Ok(()),
                _ => Err("not yet".to_owned()),
            }
        },
    )
    .await;
    let first = slack
        .requests()
        .iter()
        .filter(|r| r.accepted() && r.path != "/api/auth.test")
        .map(|r| r.at)
        .min()
        .expect("a first message");
    eprintln!(
        "storm: first message {:.1}s after the crash",
        first.duration_since(crashed).as_secs_f64()
    );
    always_for(
        WINDOW.saturating_sub(first.elapsed()),
        "few Slack messages while 500 queues have no consumers",
        async || within_bounds(&slack),
    )
    .await;

    let hook = accepted(&slack, HOOK);
    let posts = accepted(&slack, POST_MESSAGE);
    let updates = accepted(&slack, UPDATE);
    eprintln!(
        "storm: in the first {WINDOW:?}: {} webhook messages, {} chat.postMessage, {} chat.update",
        hook.len(),
        posts.len(),
        updates.len()
    );
    let last_hook = hook.last().expect("a webhook message");
    let stated = format!(
        "🚨 [FIRING:{QUEUES}] QueueNoConsumers: {QUEUES} queues in vhost {} on {CLUSTER}",
        vhost.name()
    );
    assert_eq!(header(last_hook), stated, "{}", last_hook.text());
    assert!(
        last_hook
            .text()
            .contains(&format!("{QUEUES} queues affected, worst first")),
        "{}",
        last_hook.text()
    );
    assert!(
        first_queue_named(last_hook).contains(WORST),
        "the biggest backlog first: {}",
        first_queue_named(last_hook)
    );
    assert!(last_hook.text().contains(" more"), "{}", last_hook.text());
    // With a bot token: one message, edited as the group changes.
    assert_eq!(posts.len(), 1, "one chat.postMessage for one incident");
    let posted: Value = serde_json::from_str(&posts[0].reply).expect("the fake answered JSON");
    for update in &updates {
        assert_eq!(
            update.json()["ts"],
            posted["ts"],
            "edits the posted message"
        );
    }
    let latest = updates.last().unwrap_or(&posts[0]);
    assert_eq!(header(latest), stated, "{}", latest.text());

    // The deployment's backlog is dealt with: the group resolves, as one message.
    purge_each(&amqp, &queues).await;
    let resolved = format!(
        "✅ [RESOLVED:{QUEUES}] QueueNoConsumers: {QUEUES} queues in vhost {} on {CLUSTER}",
        vhost.name()
    );
    eventually(
        Duration::from_secs(120),
        "the resolve on both Slacks",
        async || {
            let hook = accepted(&slack, HOOK);
            let updates = accepted(&slack, UPDATE);
            match (hook.last(), updates.last()) {
                (Some(h), Some(u)) if header(h) == resolved && header(u) == resolved => Ok(()),
                (h, u) => Err(format!(
                    "last webhook message {:?}, last update {:?}",
                    h.map(header),
                    u.map(header)
                )),
            }
        },
    )
    .await;
    let after = accepted(&slack, HOOK).len() - hook.len();
    assert!(
        after <= 2,
        "the resolve in at most two messages (a first few queues may recover a poll early): {after}"
    );
    assert_eq!(
        accepted(&slack, POST_MESSAGE).len(),
        1,
        "the resolve edits the one message"
    );
}
