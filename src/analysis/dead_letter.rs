//! Which queues are dead-letter targets, from the topology: the queues that dead-letter somewhere
//! (`x-dead-letter-exchange` or a policy's `dead-letter-exchange`) and the bindings of the exchanges
//! they dead-letter into. Pure: the scrape reads the topology, this only follows it.
//!
//! Routing is followed as the broker would for the parts that decide it from the routing key alone:
//! a direct exchange matches the dead-letter routing key exactly, a topic exchange by its `*`/`#`
//! patterns, a fanout every binding, exchange-to-exchange bindings with the same key. Where the key
//! is not known (no dead-letter routing key: each message keeps its own) or the exchange routes on
//! something else (headers, plugins), every binding counts: the queue *can* receive dead letters.

use std::collections::HashSet;

use crate::domain::QueueKey;
use crate::snapshot::{DeadLettering, Destination, ExchangeKind, Exchanges};

/// The queues that some queue's dead letters reach.
///
/// The default exchange `""` as dead-letter exchange sends each message to the queue its routing key
/// names: with a dead-letter routing key that queue is a target; without one each message goes back
/// by its own routing key (usually to the queue it came from), which names no queue we could know,
/// so nothing is marked.
pub fn dead_letter_targets(
    dead_letterings: &[DeadLettering],
    exchanges: &Exchanges,
) -> HashSet<QueueKey> {
    let mut targets = HashSet::new();
    // Many queues share one dead-letter exchange and key: each walk is done once.
    let mut walked: HashSet<(&str, &str, Option<&str>)> = HashSet::new();
    for dl in dead_letterings {
        let vhost = &dl.queue.vhost;
        let key = dl.routing_key.as_deref();
        if !walked.insert((vhost, &dl.exchange, key)) {
            continue;
        }
        if dl.exchange.is_empty() {
            if let Some(k) = key {
                targets.insert(QueueKey {
                    vhost: vhost.clone(),
                    name: k.into(),
                });
            }
            continue;
        }
        let mut seen: HashSet<&str> = HashSet::new();
        let mut todo: Vec<&str> = vec![&dl.exchange];
        while let Some(name) = todo.pop() {
            if !seen.insert(name) {
                continue;
            }
            let Some(exchange) = exchanges.get(&(vhost.clone(), name.into())) else {
                continue;
            };
            let Some(kind) = exchange.kind else {
                // Missing: the broker drops what is dead-lettered to it.
                continue;
            };
            for b in &exchange.bindings {
                if !routes(kind, &b.routing_key, key) {
                    continue;
                }
                match &b.destination {
                    Destination::Queue(q) => {
                        targets.insert(QueueKey {
                            vhost: vhost.clone(),
                            name: q.clone(),
                        });
                    }
                    Destination::Exchange(x) => todo.push(x),
                }
            }
        }
    }
    targets
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
        ];
        for (name, dls, xs, want) in cases {
            assert_eq!(names(&dead_letter_targets(&dls, &xs)), want, "case {name}");
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
