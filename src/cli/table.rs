//! The `rabbitwatch status` table: plain text for a terminal, from the daemon's `/api/v1/queues`.
//!
//! Pure formatting. Names are made safe for a terminal: control characters (escape sequences, newlines)
//! are shown escaped rather than interpreted.

use crate::http::{QueueRow, StreamConsumersBody};

const HEADERS: [&str; 11] = [
    "CLUSTER",
    "VHOST",
    "QUEUE",
    "READY",
    "UNACKED",
    "CONSUMERS",
    "IN/S",
    "OUT/S",
    "GROWTH/S",
    "DRAIN ETA",
    "STATUS",
];

/// Most urgent first, then by growth: the queue to look at is at the top.
fn urgency(status: &str) -> u8 {
    match status {
        "stalled" => 0,
        "no_consumers" => 1,
        "growing" => 2,
        "draining" => 3,
        "insufficient_data" => 4,
        "ok" => 5,
        _ => 6,
    }
}

pub fn terminal_safe(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |r| format!("{r:.1}"))
}

/// `drain_eta_seconds` is null both when unknown and when it will never drain; the status tells which.
/// A stream has nothing to drain: its readers' lag is in the table below.
fn eta(row: &QueueRow) -> String {
    if row.kind == "stream" {
        return "-".to_string();
    }
    match row.drain_eta_seconds {
        Some(0.0) => "0s".to_string(),
        Some(s) => {
            humantime::format_duration(std::time::Duration::from_secs(s.ceil() as u64)).to_string()
        }
        None if row.messages > 0 && row.status != "insufficient_data" => "never".to_string(),
        None => "-".to_string(),
    }
}

pub fn render_table(mut rows: Vec<QueueRow>) -> String {
    rows.sort_by(|a, b| {
        urgency(&a.status)
            .cmp(&urgency(&b.status))
            .then_with(|| {
                b.backlog_growth
                    .unwrap_or(0.0)
                    .total_cmp(&a.backlog_growth.unwrap_or(0.0))
            })
            .then_with(|| (&a.cluster, &a.vhost, &a.queue).cmp(&(&b.cluster, &b.vhost, &b.queue)))
    });
    let cells: Vec<[String; 11]> = rows
        .iter()
        .map(|r| {
            [
                terminal_safe(&r.cluster),
                terminal_safe(&r.vhost),
                terminal_safe(&r.queue),
                r.messages_ready.to_string(),
                r.messages_unacked.to_string(),
                r.consumers.to_string(),
                rate(r.publish_rate),
                rate(r.consume_rate),
                rate(r.backlog_growth),
                eta(r),
                r.status.clone(),
            ]
        })
        .collect();
    let mut out = layout(&HEADERS, &cells, 3..=8);
    if rows.is_empty() {
        out.push_str("(no queues watched yet)\n");
    }
    out
}

/// Columns padded to their widest cell, the `numeric` ones right-aligned.
fn layout<const N: usize>(
    headers: &[&str; N],
    cells: &[[String; N]],
    numeric: std::ops::RangeInclusive<usize>,
) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cols.iter().zip(&widths).enumerate() {
            if numeric.contains(&i) {
                l.push_str(&format!("{c:>w$}  "));
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in cells {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// One scaler as `/api/v1/scalers` shows it: what the status table needs of it.
#[derive(Debug, serde::Deserialize)]
pub struct ScalerRow {
    pub name: String,
    pub cluster: String,
    pub vhost: String,
    pub queue: String,
    pub mode: String,
    pub current: Option<u64>,
    pub desired: Option<u64>,
    pub last_decision: Option<serde_json::Value>,
}

const SCALER_HEADERS: [&str; 7] = [
    "SCALER", "CLUSTER", "VHOST", "QUEUE", "CURRENT", "DESIRED", "DECISION",
];

/// The scalers below the queues: consumers now and needed, and the last decision with its reason
/// (in shadow mode a recommendation is computed, not sent). Empty without scalers.
pub fn render_scalers(rows: &[ScalerRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let unknown = || "-".to_string();
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            let d = r.last_decision.as_ref();
            let field = |k: &str| {
                d.and_then(|d| d[k].as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let decision = match field("decision").as_str() {
                "recommend" => format!(
                    "{} to {} ({})",
                    field("direction"),
                    d.and_then(|d| d["desired"].as_u64()).unwrap_or_default(),
                    r.mode
                ),
                "hold" => format!("hold: {}", field("reason")),
                _ => "no cycle yet".to_string(),
            };
            [
                terminal_safe(&r.name),
                terminal_safe(&r.cluster),
                terminal_safe(&r.vhost),
                terminal_safe(&r.queue),
                r.current.map_or_else(unknown, |c| c.to_string()),
                r.desired.map_or_else(unknown, |c| c.to_string()),
                terminal_safe(&decision),
            ]
        })
        .collect();
    format!("\n{}", layout(&SCALER_HEADERS, &cells, 4..=5))
}

/// One canary as `/api/v1/status` shows it under its cluster.
#[derive(Debug, serde::Deserialize)]
pub struct ProbeRow {
    #[serde(default)]
    pub cluster: String,
    pub name: String,
    pub vhost: String,
    pub ok: Option<bool>,
    pub latency_seconds: Option<f64>,
    pub consecutive_failures: u64,
    pub error: Option<String>,
    pub detail: String,
}

const STREAM_HEADERS: [&str; 8] = [
    "STREAM READER",
    "CLUSTER",
    "VHOST",
    "STREAM",
    "LAG",
    "LAG/S",
    "TRUNCATED IN",
    "STATUS",
];

/// The stream readers that need a look (every status but `ok`), the streams with readers whose lag
/// is unknown, and why stream readers could not be read at all. Empty when all is well.
pub fn render_stream_readers(body: &StreamConsumersBody) -> String {
    let mut cells: Vec<[String; 8]> = body
        .consumers
        .iter()
        .filter(|c| c.status != "ok")
        .map(|c| {
            let eta = c.truncation_eta_seconds.map_or_else(
                || "-".to_string(),
                |s| {
                    humantime::format_duration(std::time::Duration::from_secs(s.ceil() as u64))
                        .to_string()
                },
            );
            let status = if c.online {
                c.status.clone()
            } else {
                format!("{} (left)", c.status)
            };
            [
                terminal_safe(&c.consumer),
                terminal_safe(&c.cluster),
                terminal_safe(&c.vhost),
                terminal_safe(&c.stream),
                c.offset_lag
                    .map_or_else(|| "-".to_string(), |l| format!("{l:.0}")),
                rate(c.lag_growth),
                eta,
                status,
            ]
        })
        .collect();
    for u in &body.unknown {
        cells.push([
            format!("{} AMQP reader(s)", u.readers),
            terminal_safe(&u.cluster),
            terminal_safe(&u.vhost),
            terminal_safe(&u.stream),
            "-".to_string(),
            "-".to_string(),
            "-".to_string(),
            "unknown (no offset)".to_string(),
        ]);
    }
    let mut out = String::new();
    if !cells.is_empty() {
        out = format!("\n{}", layout(&STREAM_HEADERS, &cells, 4..=6));
    }
    for e in &body.errors {
        out.push_str(&format!(
            "\nstream readers of {}: unknown ({})\n",
            terminal_safe(&e.cluster),
            terminal_safe(&e.error)
        ));
    }
    out
}

const PROBE_HEADERS: [&str; 6] = [
    "CANARY",
    "CLUSTER",
    "VHOST",
    "STATE",
    "LATENCY",
    "LAST ERROR",
];

/// The canaries below the queues: whether the last round trip made it, how fast, and if not, why.
/// Empty without canaries.
pub fn render_probes(rows: &[ProbeRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let state = match r.ok {
                None => "starting".to_string(),
                Some(true) => "ok".to_string(),
                Some(false) => format!(
                    "{} ({}x)",
                    r.error.as_deref().unwrap_or("failing"),
                    r.consecutive_failures
                ),
            };
            [
                terminal_safe(&r.name),
                terminal_safe(&r.cluster),
                terminal_safe(&r.vhost),
                state,
                r.latency_seconds
                    .map_or_else(|| "-".to_string(), |l| format!("{:.1}ms", l * 1e3)),
                terminal_safe(&r.detail),
            ]
        })
        .collect();
    format!("\n{}", layout(&PROBE_HEADERS, &cells, 4..=4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_readers_that_need_a_look_and_unknown_lag_said_so() {
        let body: StreamConsumersBody = serde_json::from_str(
            r#"{"consumers":[
              {"cluster":"c","vhost":"/","stream":"events","consumer":"billing","named":true,
               "super_stream":false,"subscriptions":1,"online":true,"offset_lag":48768,
               "lag_growth":15.5,"offset_rate":4.5,"status":"lagging","truncation_eta_seconds":600},
              {"cluster":"c","vhost":"/","stream":"events","consumer":"audit","named":true,
               "super_stream":false,"subscriptions":1,"online":true,"offset_lag":0,
               "lag_growth":0,"offset_rate":20,"status":"ok","truncation_eta_seconds":null},
              {"cluster":"c","vhost":"/","stream":"events","consumer":"nightly","named":true,
               "super_stream":false,"subscriptions":0,"online":false,"offset_lag":900,
               "lag_growth":null,"offset_rate":0,"status":"stopped","truncation_eta_seconds":null}],
             "unknown":[{"cluster":"c","vhost":"/","stream":"events","readers":2,"reason":"r"}],
             "errors":[{"cluster":"d","error":"enable the rabbitmq_stream_management plugin"}]}"#,
        )
        .expect("a body");
        let text = render_stream_readers(&body);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[2].contains("billing") && lines[2].contains("48768") && lines[2].contains("10m"),
            "{text}"
        );
        assert!(lines[3].contains("stopped (left)"), "{text}");
        assert!(
            lines[4].contains("2 AMQP reader(s)") && lines[4].contains("unknown"),
            "{text}"
        );
        assert!(
            !text.contains("audit"),
            "readers that keep up are not listed: {text}"
        );
        assert!(
            text.contains(
                "stream readers of d: unknown (enable the rabbitmq_stream_management plugin)"
            ),
            "{text}"
        );
        assert_eq!(render_stream_readers(&StreamConsumersBody::default()), "");
    }

    #[test]
    fn canaries_show_why_they_fail_and_unknown_latency_is_a_dash() {
        let row =
            |name: &str, ok: Option<bool>, latency: Option<f64>, error: Option<&str>| ProbeRow {
                cluster: "main".into(),
                name: name.into(),
                vhost: "/".into(),
                ok,
                latency_seconds: latency,
                consecutive_failures: if ok == Some(false) { 3 } else { 0 },
                error: error.map(str::to_string),
                detail: if ok == Some(false) {
                    "NO_ROUTE\x1b[2J".into()
                } else {
                    String::new()
                },
            };
        let text = render_probes(&[
            row("orders", Some(true), Some(0.0021), None),
            row("billing", Some(false), None, Some("unroutable")),
            row("new", None, None, None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[2].contains("ok") && lines[2].contains("2.1ms"),
            "{text}"
        );
        assert!(
            lines[3].contains("unroutable (3x)") && lines[3].contains(" - "),
            "{text}"
        );
        assert!(
            !text.contains('\x1b'),
            "escapes are not interpreted: {text:?}"
        );
        assert!(lines[4].contains("starting"), "{text}");
        assert_eq!(render_probes(&[]), "");
    }

    fn row(queue: &str, status: &str, growth: f64) -> QueueRow {
        QueueRow {
            cluster: "local".into(),
            vhost: "/".into(),
            queue: queue.into(),
            kind: "classic".into(),
            messages: 10,
            messages_ready: 8,
            messages_unacked: 2,
            consumers: 1,
            publish_rate: Some(40.0),
            consume_rate: Some(15.0),
            deliver_rate: Some(15.0),
            redeliver_rate: Some(0.0),
            backlog_growth: Some(growth),
            drain_eta_seconds: None,
            oldest_message_age_seconds: None,
            idle_for_seconds: None,
            dead_letter_target: None,
            retry_queue: None,
            max_length: None,
            max_length_bytes: None,
            fill_ratio: None,
            status: status.into(),
        }
    }

    #[test]
    fn scalers_show_the_decision_and_unknown_is_not_zero() {
        let rows: Vec<ScalerRow> = serde_json::from_str(
            r#"[{"name":"w","cluster":"c","vhost":"/","queue":"orders","mode":"shadow","current":1,"desired":9,
                 "last_decision":{"decision":"recommend","direction":"up","desired":9,"reason":"…"}},
                {"name":"ghost","cluster":"c","vhost":"/","queue":"gone","mode":"shadow","current":null,"desired":null,
                 "last_decision":{"decision":"hold","reason":"queue_not_found","desired":null}}]"#,
        )
        .unwrap();
        let text = render_scalers(&rows);
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert!(lines[0].starts_with("SCALER"), "{text}");
        assert!(lines[1].contains("up to 9 (shadow)"), "{text}");
        assert!(lines[2].contains("hold: queue_not_found"), "{text}");
        assert!(
            !lines[2].contains(" 0 "),
            "unknown is shown as -, not 0: {text}"
        );
        assert_eq!(render_scalers(&[]), "");
    }

    #[test]
    fn most_urgent_queue_comes_first() {
        let t = render_table(vec![
            row("calm", "ok", 0.0),
            row("hot", "growing", 25.0),
            row("stuck", "stalled", 0.0),
        ]);
        let order: Vec<&str> = t
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        assert_eq!(order, vec!["stuck", "hot", "calm"]);
        assert!(t.contains("never"), "{t}");
    }

    #[test]
    fn escape_sequences_in_names_are_not_interpreted() {
        let t = render_table(vec![row("evil\u{1b}[2Jname\n", "ok", 0.0)]);
        assert!(!t.contains('\u{1b}'));
        assert!(t.contains("evil\\u{1b}[2Jname\\n"), "{t}");
    }
}
