//! What the fuzz targets share: fixed entities to evaluate expressions and render templates against.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rabbitwatch::rules::expr::{Env, FieldId, Scope, Type, Value, field};

/// One fixed queue (a growing backlog with a slow consumer) and, for the other scopes, values picked by
/// field position. Some fields are unknown, as rates are when the broker keeps no statistics, and a few
/// numbers are the awkward ones (0, infinity, NaN) so unknown and IEEE paths are walked too.
pub struct Fixed;

impl Env for Fixed {
    fn get(&self, f: FieldId) -> Option<Value<'_>> {
        use field::queue as q;
        if f.scope() == Scope::Queue {
            return match f {
                q::MESSAGES => Some(Value::Num(1250.0)),
                q::MESSAGES_READY => Some(Value::Num(1200.0)),
                q::MESSAGES_UNACKED => Some(Value::Num(50.0)),
                q::CONSUMERS => Some(Value::Num(1.0)),
                q::PUBLISH_RATE => Some(Value::Num(120.5)),
                q::DELIVER_RATE => Some(Value::Num(80.0)),
                q::ACK_RATE => Some(Value::Num(79.0)),
                q::CONSUME_RATE => Some(Value::Num(80.0)),
                q::REDELIVER_RATE => Some(Value::Num(0.0)),
                q::BACKLOG_GROWTH => Some(Value::Num(40.5)),
                q::DRAIN_ETA => Some(Value::Num(f64::INFINITY)),
                q::OLDEST_MESSAGE_AGE => Some(Value::Num(95.0)),
                q::CONSUMER_UTILISATION => Some(Value::Num(f64::NAN)),
                q::MAX_LENGTH => Some(Value::Num(10_000.0)),
                q::FILL_RATIO => Some(Value::Num(0.125)),
                q::STATUS => Some(Value::Str(Cow::Borrowed("growing"))),
                q::TYPE => Some(Value::Str(Cow::Borrowed("quorum"))),
                q::CLUSTER => Some(Value::Str(Cow::Borrowed("prod-eu"))),
                q::VHOST => Some(Value::Str(Cow::Borrowed("/"))),
                q::QUEUE => Some(Value::Str(Cow::Borrowed("orders.created"))),
                q::DURABLE => Some(Value::Bool(true)),
                // Unknown, as in the daemon (not tracked yet).
                _ => None,
            };
        }
        let i = f.index();
        match f.ty() {
            _ if i % 7 == 6 => None,
            Type::Number => Some(Value::Num(
                [0.0, 3.0, 1e12, -2.5, f64::INFINITY, 0.5][i % 6],
            )),
            Type::String => Some(Value::Str(Cow::Borrowed(
                ["prod-eu", "rabbit@node-1", "full", "/"][i % 4],
            ))),
            Type::Bool => Some(Value::Bool(i.is_multiple_of(2))),
        }
    }
}

/// Labels an alert of `scope` carries, for templates.
pub fn labels(scope: Scope) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("alertname".to_string(), "FuzzAlert".to_string()),
        ("scope".to_string(), scope.as_str().to_string()),
        ("cluster".to_string(), "prod-eu".to_string()),
        ("severity".to_string(), "warning".to_string()),
    ]);
    match scope {
        Scope::Queue => {
            labels.insert("vhost".into(), "/".into());
            labels.insert("queue".into(), "orders.created".into());
        }
        Scope::Node => {
            labels.insert("node".into(), "rabbit@node-1".into());
        }
        Scope::Probe => {
            labels.insert("vhost".into(), "/".into());
        }
        Scope::Cluster => {}
    }
    labels
}

/// Equal values, NaN equal to NaN: a canonical form must evaluate like the expression it came from.
pub fn same_value(a: &Option<Value<'_>>, b: &Option<Value<'_>>) -> bool {
    match (a, b) {
        (Some(Value::Num(x)), Some(Value::Num(y))) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}
