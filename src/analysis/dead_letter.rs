//! Which queues are dead-letter targets, from the topology: the queues that dead-letter somewhere
//! (`x-dead-letter-exchange` or a policy's `dead-letter-exchange`) and the bindings of the exchanges
//! they dead-letter into. Pure: the scrape reads the topology, this only follows it.
//!
//! Routing is followed as the broker would for the parts that decide it from the routing key alone:
//! a direct exchange matches the dead-letter routing key exactly, a topic exchange by its `*`/`#`
//! patterns, a fanout every binding, exchange-to-exchange bindings with the same key. Where the key
//! is not known (no dead-letter routing key: each message keeps its own) or the exchange routes on
//! something else (headers, plugins), every binding counts: the queue *can* receive dead letters.

use std::collections::{HashMap, HashSet};

use crate::domain::QueueKey;
use crate::snapshot::{DeadLettering, Destination, ExchangeKind, Exchanges};

/// What the topology makes of the queues: dead-letter queues, and the wait queues of delayed-retry
/// loops.
///
/// `targets` are the queues that some queue's dead letters reach, except where they come back: a queue `T` that
/// dead-letters back into the queue `S` whose dead letters reach it is a delayed-retry loop (a TTL
/// "wait" queue expiring messages back to the work exchange), and neither end of that loop is a
/// dead-letter queue by it. The work queue is fed by its own retries, the wait queue holds messages
/// that are coming back. A wait queue (its messages expire, and it is in such a loop) republishes
/// retries, not failures: nothing its dead letters reach is a dead-letter queue by it (a queue bound
/// beside the work queue to the work exchange gets the retried copies too). A queue both in such a
/// loop and reached by some other queue that it does not feed back is still a target.
///
/// The default exchange `""` as dead-letter exchange sends each message to the queue its routing key
/// names: with a dead-letter routing key that queue is a target; without one each message goes back
/// by its own routing key (usually to the queue it came from), which names no queue we could know,
/// so nothing is marked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Roles {
    /// Queues some queue's dead letters reach, outside retry loops.
    pub targets: HashSet<QueueKey>,
    /// Queues whose messages expire back to where they came from (a TTL and a dead-letter exchange
    /// leading back to a queue that dead-letters into them): they hold retries on purpose and are
    /// expected to have no consumer.
    pub retry_queues: HashSet<QueueKey>,
}

/// Both roles, in one pass over the topology.
pub fn roles(dead_letterings: &[DeadLettering], exchanges: &Exchanges) -> Roles {
    // Many queues share one dead-letter exchange and key: each walk is done once.
    let mut walks: HashMap<(&str, &str, Option<&str>), HashSet<QueueKey>> = HashMap::new();
    for dl in dead_letterings {
        let key = dl.routing_key.as_deref();
        walks
            .entry((&dl.queue.vhost, &dl.exchange, key))
            .or_insert_with(|| reached(&dl.queue.vhost, &dl.exchange, key, exchanges));
    }
    // Where each queue's dead letters go, by the walk they share.
    let reaches: HashMap<&QueueKey, &HashSet<QueueKey>> = dead_letterings
        .iter()
        .map(|dl| {
            let walk = &walks[&(&*dl.queue.vhost, &*dl.exchange, dl.routing_key.as_deref())];
            (&dl.queue, walk)
        })
        .collect();
    let loops_back =
        |from: &QueueKey, to: &QueueKey| reaches.get(to).is_some_and(|back| back.contains(from));
    let mut targets = HashSet::new();
    let mut retry_queues = HashSet::new();
    for dl in dead_letterings {
        let (source, reached) = (&dl.queue, reaches[&dl.queue]);
        let waits = dl.expires && reached.iter().any(|t| loops_back(source, t));
        if waits {
            retry_queues.insert(source.clone());
            continue;
        }
        for target in reached.iter() {
            if !loops_back(source, target) {
                targets.insert(target.clone());
            }
        }
    }
    Roles {
        targets,
        retry_queues,
    }
}

/// The queues that messages dead-lettered to `exchange` with `key` (`None`: their own keys) reach.
fn reached(
    vhost: &std::sync::Arc<str>,
    exchange: &str,
    key: Option<&str>,
    exchanges: &Exchanges,
) -> HashSet<QueueKey> {
    let mut found = HashSet::new();
    let queue = |name: &str| QueueKey {
        vhost: vhost.clone(),
        name: name.into(),
    };
    if exchange.is_empty() {
        if let Some(k) = key {
            found.insert(queue(k));
        }
        return found;
    }
    let mut seen: HashSet<&str> = HashSet::new();
    let mut todo: Vec<&str> = vec![exchange];
    while let Some(name) = todo.pop() {
        if !seen.insert(name) {
            continue;
        }
        let Some(x) = exchanges.get(&(vhost.clone(), name.into())) else {
            continue;
        };
        let Some(kind) = x.kind else {
            // Missing: the broker drops what is dead-lettered to it.
            continue;
        };
        for b in &x.bindings {
            if !routes(kind, &b.routing_key, key) {
                continue;
            }
            match &b.destination {
                Destination::Queue(q) => {
                    found.insert(queue(q));
                }
                Destination::Exchange(x) => todo.push(x),
            }
        }
    }
    found
}

/// Whether an exchange of `kind` sends a message with routing key `key` (`None`: any key) along a
/// binding with key `binding_key`.
fn routes(kind: ExchangeKind, binding_key: &str, key: Option<&str>) -> bool {
    match (kind, key) {
        (_, None) | (ExchangeKind::Fanout | ExchangeKind::Other, _) => true,
        (ExchangeKind::Direct, Some(k)) => k == binding_key,
        (ExchangeKind::Topic, Some(k)) => {
            let pattern: Vec<&str> = binding_key.split('.').collect();
            let words: Vec<&str> = k.split('.').collect();
            topic_matches(&pattern, &words)
        }
    }
}

/// AMQP topic matching: `*` is exactly one word, `#` zero or more.
fn topic_matches(pattern: &[&str], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((&"#", rest)) => (0..=words.len()).any(|skip| topic_matches(rest, &words[skip..])),
        Some((&p, rest)) => match words.split_first() {
            Some((&w, more)) => (p == "*" || p == w) && topic_matches(rest, more),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::snapshot::{Binding, Exchange};

    fn dl(vhost: &str, queue: &str, exchange: &str, key: Option<&str>) -> DeadLettering {
        DeadLettering {
            queue: QueueKey {
                vhost: vhost.into(),
                name: queue.into(),
            },
            exchange: exchange.into(),
            routing_key: key.map(Into::into),
            expires: false,
        }
    }

    /// A queue whose messages expire (`x-message-ttl`) into `exchange`.
    fn wait(vhost: &str, queue: &str, exchange: &str, key: Option<&str>) -> DeadLettering {
        DeadLettering {
            expires: true,
            ..dl(vhost, queue, exchange, key)
        }
    }

    fn to_queue(q: &str, key: &str) -> Binding {
        Binding {
            destination: Destination::Queue(q.into()),
            routing_key: key.into(),
        }
    }

    fn to_exchange(x: &str, key: &str) -> Binding {
        Binding {
            destination: Destination::Exchange(x.into()),
            routing_key: key.into(),
        }
    }

    fn exchanges(list: &[(&str, &str, Option<ExchangeKind>, Vec<Binding>)]) -> Exchanges {
        list.iter()
            .map(|(vhost, name, kind, bindings)| {
                (
                    (Arc::from(*vhost), Box::from(*name)),
                    Exchange {
                        kind: *kind,
                        bindings: bindings.clone(),
                    },
                )
            })
            .collect()
    }

    fn names(targets: &HashSet<QueueKey>) -> Vec<String> {
        let mut v: Vec<String> = targets.iter().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    use ExchangeKind::{Direct, Fanout, Other, Topic};

    /// Each case: the dead-letter settings, the exchanges read, the targets expected.
    #[test]
    fn targets_table() {
        let orders_dlx = || {
            exchanges(&[(
                "shop",
                "orders.dlx",
                Some(Direct),
                vec![
                    to_queue("orders.failed", "failed"),
                    to_queue("orders.audit", "audit"),
                ],
            )])
        };
        let cases: Vec<(&str, Vec<DeadLettering>, Exchanges, Vec<&str>)> = vec![
            (
                "1 nothing dead-letters: no targets",
                vec![],
                orders_dlx(),
                vec![],
            ),
            (
                "2 a direct DLX with a dead-letter routing key reaches only the matching binding",
                vec![dl("shop", "orders", "orders.dlx", Some("failed"))],
                orders_dlx(),
                vec!["shop/orders.failed"],
            ),
            (
                "3 without a dead-letter routing key every binding of the DLX can receive",
                vec![dl("shop", "orders", "orders.dlx", None)],
                orders_dlx(),
                vec!["shop/orders.audit", "shop/orders.failed"],
            ),
            (
                "4 a key no binding has reaches nothing",
                vec![dl("shop", "orders", "orders.dlx", Some("other"))],
                orders_dlx(),
                vec![],
            ),
            (
                "5 a fanout DLX reaches every bound queue whatever the key",
                vec![dl("/", "jobs", "jobs.dlx", Some("x"))],
                exchanges(&[(
                    "/",
                    "jobs.dlx",
                    Some(Fanout),
                    vec![to_queue("jobs.parked", ""), to_queue("jobs.log", "y")],
                )]),
                vec!["//jobs.log", "//jobs.parked"],
            ),
            (
                "6 the default exchange with a key targets the queue it names",
                vec![dl("/", "jobs", "", Some("jobs.parked"))],
                Exchanges::new(),
                vec!["//jobs.parked"],
            ),
            (
                "7 the default exchange without a key names no queue we can know",
                vec![dl("/", "jobs", "", None)],
                Exchanges::new(),
                vec![],
            ),
            (
                "8 a DLX that does not exist drops the messages",
                vec![dl("/", "jobs", "gone", None)],
                exchanges(&[("/", "gone", None, vec![])]),
                vec![],
            ),
            (
                "9 topic patterns: * is one word, # any number",
                vec![dl("/", "a", "t", Some("dead.orders.eu"))],
                exchanges(&[(
                    "/",
                    "t",
                    Some(Topic),
                    vec![
                        to_queue("all", "#"),
                        to_queue("one-word", "dead.*"),
                        to_queue("two-words", "dead.*.*"),
                        to_queue("tail", "dead.#"),
                        to_queue("eu", "#.eu"),
                        to_queue("us", "#.us"),
                    ],
                )]),
                vec!["//all", "//eu", "//tail", "//two-words"],
            ),
            (
                "10 exchange-to-exchange bindings are followed with the same key, loops end",
                vec![dl("/", "a", "dlx", Some("k"))],
                exchanges(&[
                    ("/", "dlx", Some(Fanout), vec![to_exchange("inner", "")]),
                    (
                        "/",
                        "inner",
                        Some(Direct),
                        vec![
                            to_queue("yes", "k"),
                            to_queue("no", "j"),
                            to_exchange("dlx", "k"),
                        ],
                    ),
                ]),
                vec!["//yes"],
            ),
            (
                "11 headers exchanges route on what we do not model: every binding counts",
                vec![dl("/", "a", "h", Some("k"))],
                exchanges(&[("/", "h", Some(Other), vec![to_queue("h1", "")])]),
                vec!["//h1"],
            ),
            (
                "12 a DLX of the same name in another vhost is another exchange",
                vec![dl("other", "orders", "orders.dlx", Some("failed"))],
                orders_dlx(),
                vec![],
            ),
            (
                "13 a delayed-retry loop: work dead-letters to a TTL wait queue that expires back to the work exchange; neither is a DLQ, the parking queue is",
                vec![
                    dl("/", "work", "retry", None),
                    wait("/", "work.wait", "work-x", Some("work")),
                    dl("/", "billing", "parking", None),
                ],
                exchanges(&[
                    ("/", "retry", Some(Fanout), vec![to_queue("work.wait", "")]),
                    ("/", "work-x", Some(Direct), vec![to_queue("work", "work")]),
                    ("/", "parking", Some(Fanout), vec![to_queue("parked", "")]),
                ]),
                vec!["//parked"],
            ),
            (
                "14 the same loop through the default exchange with keys",
                vec![
                    dl("/", "work", "", Some("work.wait")),
                    dl("/", "work.wait", "", Some("work")),
                ],
                Exchanges::new(),
                vec![],
            ),
            (
                "16 a wait queue expiring back with the messages' own keys: a queue bound beside the work queue gets the retried copies, and is no DLQ",
                vec![
                    dl("/", "work", "retry", None),
                    wait("/", "work.wait", "work-x", None),
                ],
                exchanges(&[
                    ("/", "retry", Some(Fanout), vec![to_queue("work.wait", "")]),
                    (
                        "/",
                        "work-x",
                        Some(Topic),
                        vec![to_queue("work", "orders.#"), to_queue("audit", "#")],
                    ),
                ]),
                vec![],
            ),
            (
                "17 the same without a TTL: not a wait queue, so what else it reaches is a target",
                vec![
                    dl("/", "work", "retry", None),
                    dl("/", "work.wait", "work-x", None),
                ],
                exchanges(&[
                    ("/", "retry", Some(Fanout), vec![to_queue("work.wait", "")]),
                    (
                        "/",
                        "work-x",
                        Some(Topic),
                        vec![to_queue("work", "orders.#"), to_queue("audit", "#")],
                    ),
                ]),
                vec!["//audit"],
            ),
            (
                "15 a queue in a loop that another queue also dead-letters into is still a target",
                vec![
                    dl("/", "work", "", Some("work.wait")),
                    dl("/", "work.wait", "", Some("work")),
                    dl("/", "other", "", Some("work.wait")),
                ],
                Exchanges::new(),
                vec!["//work.wait"],
            ),
        ];
        let retry = roles(
            &[
                dl("/", "work", "retry", None),
                wait("/", "work.wait", "work-x", None),
                wait("/", "delayed", "elsewhere", None),
            ],
            &exchanges(&[
                ("/", "retry", Some(Fanout), vec![to_queue("work.wait", "")]),
                ("/", "work-x", Some(Topic), vec![to_queue("work", "#")]),
                ("/", "elsewhere", Some(Fanout), vec![to_queue("next", "")]),
            ]),
        );
        assert_eq!(
            names(&retry.retry_queues),
            ["//work.wait"],
            "a TTL queue expiring onward to a queue that does not feed it is no retry queue"
        );
        assert_eq!(names(&retry.targets), ["//next"]);
        for (name, dls, xs, want) in cases {
            assert_eq!(names(&roles(&dls, &xs).targets), want, "case {name}");
        }
    }

    #[test]
    fn topic_matching_follows_amqp() {
        let m = |p: &str, k: &str| routes(Topic, p, Some(k));
        assert!(m("#", ""));
        assert!(m("a.#", "a"));
        assert!(m("#.a.#", "x.a.y.z"));
        assert!(!m("a.*", "a"));
        assert!(!m("a.*", "a.b.c"));
        assert!(m("*.b.*", "a.b.c"));
        assert!(!m("a", "a.b"));
    }
}
