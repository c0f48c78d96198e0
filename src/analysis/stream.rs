//! Stream consumers judged by their offset lag over the window, as Burrow judges Kafka's consumers.
//!
//! A stream's depth is its retained log, not a backlog: whether a stream is healthy is whether each of
//! its readers keeps up. The broker tells, per stream-protocol consumer, its offset and its lag behind
//! the stream's committed offset (`/api/stream/consumers`). This module turns a consumer's window of
//! those readings into a verdict. Pure: the caller passes the window.
//!
//! Verdicts, over a filled window (three quarters of `analysis.window`, as for queues):
//! - `stopped`: the consumer is gone (a named reader no longer subscribed) and is behind;
//! - `stalled`: subscribed, behind, and its offset did not move all window;
//! - `lagging`: its lag never fell across the window and ended higher than it began;
//! - `ok` otherwise, and `insufficient_data` while the window fills.
//!
//! "Behind" is a lag that grew across the window (the stream is fed and the reader is not moving), or
//! one over `LAG_FLOOR`: a reader that stored its offset shows a lag of one or a few messages on a
//! stream nobody writes to (the offset-tracking entry is in the log but never delivered; seen on
//! RabbitMQ 3.10 and 4.3), and that is not a reader to page about.
//!
//! `truncation_eta` is the time until retention (`x-max-length-bytes`, `x-max-age`, policies) removes
//! the consumer's position. Each reading carries the stream's retained log length (`messages`), so the
//! log's first offset is `offset + lag − messages`: retention removing segments moves it. The
//! consumer has `messages − lag` messages between it and that head, which close at
//! `head rate − offset rate` (both least-squares slopes over the window). Before retention removes
//! anything the head does not move, and the ETA is infinite. This needs no publish counter: messages
//! published over the stream protocol are in no per-queue counter on some versions and sources.

use std::collections::VecDeque;

use serde::Serialize;

use super::Params;
use crate::domain::Timestamp;

/// One reading of a consumer: its offset, its lag behind the stream's committed offset, and the
/// stream's retained log length then (`None`: unknown).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LagPoint {
    pub at: Timestamp,
    pub offset: u64,
    pub lag: u64,
    pub messages: Option<u64>,
}

impl LagPoint {
    /// The log's first offset: committed offset − retained length.
    fn head(&self) -> Option<u64> {
        Some((self.offset + self.lag).saturating_sub(self.messages?))
    }
}

/// A consumer's readings over `analysis.window`.
#[derive(Clone, Debug, Default)]
pub struct LagWindow {
    points: VecDeque<LagPoint>,
}

impl LagWindow {
    /// Adds a reading and drops those older than `window_ms`. An offset that went back (the reader
    /// re-subscribed from an earlier position, or the stream was re-declared) starts the window
    /// again: the two positions are not one reader's progress.
    pub fn push(&mut self, p: LagPoint, window_ms: i64) {
        if let Some(last) = self.points.back() {
            if p.at.0 <= last.at.0 {
                return;
            }
            if p.offset < last.offset {
                self.points.clear();
            }
        }
        self.points.push_back(p);
        while self
            .points
            .front()
            .is_some_and(|f| p.at.0 - f.at.0 > window_ms)
        {
            self.points.pop_front();
        }
    }

    pub fn last(&self) -> Option<&LagPoint> {
        self.points.back()
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    fn filled(&self, params: &Params) -> bool {
        match (self.points.front(), self.points.back()) {
            (Some(f), Some(l)) => {
                self.points.len() >= 3 && l.at.0 - f.at.0 >= params.window_ms * 3 / 4
            }
            _ => false,
        }
    }
}

/// A stream consumer's verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStatus {
    Ok,
    Lagging,
    Stalled,
    Stopped,
    /// The reader exposes no offset (an AMQP 0.9.1 or 1.0 consumer of the stream), or the broker
    /// does not list its stream consumers (the `rabbitmq_stream_management` plugin is not enabled).
    Unknown,
    #[default]
    InsufficientData,
}

impl StreamStatus {
    pub const ALL: [StreamStatus; 6] = [
        StreamStatus::Ok,
        StreamStatus::Lagging,
        StreamStatus::Stalled,
        StreamStatus::Stopped,
        StreamStatus::Unknown,
        StreamStatus::InsufficientData,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Ok => "ok",
            StreamStatus::Lagging => "lagging",
            StreamStatus::Stalled => "stalled",
            StreamStatus::Stopped => "stopped",
            StreamStatus::Unknown => "unknown",
            StreamStatus::InsufficientData => "insufficient_data",
        }
    }
}

/// A consumer's figures; `None` is unknown, never zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StreamConsumerHealth {
    pub offset_lag: Option<f64>,
    /// Least-squares slope of the lag over the window, msg/s.
    pub lag_growth: Option<f64>,
    /// How fast the consumer's offset advances, msg/s.
    pub offset_rate: Option<f64>,
    pub status: StreamStatus,
    /// Seconds until retention removes the consumer's position; `+Inf` while it does not close in.
    pub truncation_eta: Option<f64>,
}

impl StreamConsumerHealth {
    /// A reader whose lag nobody can know; `status` `unknown`.
    pub fn unknown() -> Self {
        StreamConsumerHealth {
            status: StreamStatus::Unknown,
            ..StreamConsumerHealth::default()
        }
    }
}

/// A lag at or below this that is not growing is not "behind" (see the module doc).
pub const LAG_FLOOR: u64 = 100;

/// Slopes shorter than one statistics interval of RabbitMQ read a single step as a rate.
const MIN_SLOPE_SPAN_MS: i64 = 5_000;

/// Least-squares slope per second of `y` over the window's times; unknown when any point's `y` is.
fn slope(w: &LagWindow, y: impl Fn(&LagPoint) -> Option<u64>) -> Option<f64> {
    let (first, last) = (w.points.front()?, w.points.back()?);
    if w.points.len() < 2 || last.at.0 - first.at.0 < MIN_SLOPE_SPAN_MS {
        return None;
    }
    let n = w.points.len() as f64;
    let y0 = y(first)?;
    let (mut sx, mut sxx, mut sy, mut sxy) = (0.0, 0.0, 0.0, 0.0);
    for p in &w.points {
        let x = p.at.secs_since(first.at);
        let v = y(p)?.wrapping_sub(y0) as i64 as f64;
        sx += x;
        sxx += x * x;
        sy += v;
        sxy += x * v;
    }
    let denom = n * sxx - sx * sx;
    (denom > 0.0).then(|| (n * sxy - sx * sy) / denom)
}

/// Judges one consumer's window. `online`: the broker lists it subscribed now (an offline named
/// consumer's window holds its last offset, with the lag the stream has grown since).
pub fn judge(w: &LagWindow, online: bool, params: &Params) -> StreamConsumerHealth {
    let Some(last) = w.last().copied() else {
        return StreamConsumerHealth::unknown();
    };
    let offset_rate = slope(w, |p| Some(p.offset)).map(|r| r.max(0.0));
    let lag_growth = slope(w, |p| Some(p.lag));
    let truncation_eta = truncation_eta(w, last, if online { offset_rate } else { Some(0.0) });
    let status = status(w, online, params);
    StreamConsumerHealth {
        offset_lag: Some(last.lag as f64),
        lag_growth,
        offset_rate: if online { offset_rate } else { Some(0.0) },
        status,
        truncation_eta,
    }
}

fn status(w: &LagWindow, online: bool, params: &Params) -> StreamStatus {
    let (Some(first), Some(last)) = (w.points.front(), w.points.back()) else {
        return StreamStatus::Unknown;
    };
    let behind = last.lag > LAG_FLOOR || last.lag > first.lag;
    if !online {
        return if behind {
            StreamStatus::Stopped
        } else {
            StreamStatus::Ok
        };
    }
    if !w.filled(params) {
        return StreamStatus::InsufficientData;
    }
    if last.lag == 0 {
        return StreamStatus::Ok;
    }
    if behind && last.offset == first.offset && w.points.iter().all(|p| p.lag > 0) {
        return StreamStatus::Stalled;
    }
    let mut never_fell = true;
    let mut prev = first.lag;
    for p in w.points.iter().skip(1) {
        never_fell &= p.lag >= prev;
        prev = p.lag;
    }
    if never_fell && last.lag > first.lag {
        StreamStatus::Lagging
    } else {
        StreamStatus::Ok
    }
}

/// See the module doc. `None` when the log's length or the rates are unknown.
fn truncation_eta(w: &LagWindow, last: LagPoint, offset_rate: Option<f64>) -> Option<f64> {
    let messages = last.messages?;
    // The consumer's position is already gone: what it reads next is the log's new head.
    if last.lag >= messages {
        return Some(0.0);
    }
    let head_rate = slope(w, LagPoint::head)?.max(0.0);
    let headroom = (messages - last.lag) as f64;
    let closing = head_rate - offset_rate?;
    // Retention removes whole segments: a head moving slower than this is noise, not a trend.
    Some(if closing > 0.01 {
        headroom / closing
    } else {
        f64::INFINITY
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: Params = Params { window_ms: 60_000 };

    fn window(points: &[(i64, u64, u64)]) -> LagWindow {
        let with_log: Vec<(i64, u64, u64, Option<u64>)> =
            points.iter().map(|&(t, o, l)| (t, o, l, None)).collect();
        window_with_log(&with_log)
    }

    /// Points of (seconds, offset, lag, the stream's retained messages).
    fn window_with_log(points: &[(i64, u64, u64, Option<u64>)]) -> LagWindow {
        let mut w = LagWindow::default();
        for &(secs, offset, lag, messages) in points {
            w.push(
                LagPoint {
                    at: Timestamp(secs * 1000),
                    offset,
                    lag,
                    messages,
                },
                PARAMS.window_ms,
            );
        }
        w
    }

    /// Burrow-style table: each window, online or not, with its verdict.
    #[test]
    fn status_table() {
        type Case<'a> = (&'a str, &'a [(i64, u64, u64)], bool, StreamStatus);
        let cases: &[Case] = &[
            (
                "1 keeps up: lag back to zero",
                &[(0, 100, 0), (20, 500, 3), (40, 900, 0), (60, 1300, 0)],
                true,
                StreamStatus::Ok,
            ),
            (
                "2 reads but slower than the stream grows: lag rises every sample",
                &[(0, 100, 50), (20, 300, 250), (40, 500, 450), (60, 700, 650)],
                true,
                StreamStatus::Lagging,
            ),
            (
                "3 behind but catching up",
                &[
                    (0, 100, 900),
                    (20, 500, 700),
                    (40, 900, 500),
                    (60, 1300, 300),
                ],
                true,
                StreamStatus::Ok,
            ),
            (
                "4 behind and not moving",
                &[
                    (0, 100, 200),
                    (20, 100, 600),
                    (40, 100, 1000),
                    (60, 100, 1400),
                ],
                true,
                StreamStatus::Stalled,
            ),
            (
                "5 behind, not moving, stream idle: still stalled (messages wait for it)",
                &[
                    (0, 100, 200),
                    (20, 100, 200),
                    (40, 100, 200),
                    (60, 100, 200),
                ],
                true,
                StreamStatus::Stalled,
            ),
            (
                "6b caught up but for its own offset-tracking entry, the stream idle",
                &[(0, 100, 1), (20, 100, 1), (40, 100, 1), (60, 100, 1)],
                true,
                StreamStatus::Ok,
            ),
            (
                "6c a named reader gone a few messages behind on an idle stream",
                &[(0, 100, 8), (20, 100, 8)],
                false,
                StreamStatus::Ok,
            ),
            (
                "6 caught up and the stream idle",
                &[(0, 100, 0), (20, 100, 0), (40, 100, 0), (60, 100, 0)],
                true,
                StreamStatus::Ok,
            ),
            (
                "7 a named reader gone while the stream moved on",
                &[(0, 100, 0), (20, 100, 400)],
                false,
                StreamStatus::Stopped,
            ),
            (
                "8 a named reader gone, nothing published since",
                &[(0, 100, 0), (20, 100, 0)],
                false,
                StreamStatus::Ok,
            ),
            (
                "9 window still filling",
                &[(0, 100, 50), (20, 300, 250)],
                true,
                StreamStatus::InsufficientData,
            ),
            (
                "10 one dip in a rising lag is not lagging",
                &[(0, 100, 50), (20, 300, 250), (40, 600, 100), (60, 700, 650)],
                true,
                StreamStatus::Ok,
            ),
        ];
        for (name, points, online, want) in cases {
            let h = judge(&window(points), *online, &PARAMS);
            assert_eq!(h.status, *want, "case {name}");
        }
    }

    #[test]
    fn figures_are_slopes_over_the_window_and_unknown_is_never_zero() {
        let w = window(&[(0, 0, 0), (20, 200, 200), (40, 400, 400), (60, 600, 600)]);
        let h = judge(&w, true, &PARAMS);
        assert_eq!(h.offset_lag, Some(600.0));
        assert_eq!(h.lag_growth.map(f64::round), Some(10.0));
        assert_eq!(h.offset_rate.map(f64::round), Some(10.0));
        assert_eq!(h.truncation_eta, None, "the log's length unknown: unknown");
        let empty = judge(&LagWindow::default(), true, &PARAMS);
        assert_eq!(empty, StreamConsumerHealth::unknown());
        assert_eq!(empty.offset_lag, None);
    }

    #[test]
    fn truncation_eta_closes_once_retention_moves_the_head() {
        // 10/s read, 50/s published, the log held at 5000 messages by retention (its head, offset +
        // lag − messages, moves 50/s), 3400 behind at the end: 1600 messages of headroom closing at
        // 40/s = 40 s.
        let full = window_with_log(&[
            (0, 10_000, 1800, Some(5000)),
            (20, 10_200, 2600, Some(5000)),
            (40, 10_400, 3400, Some(5000)),
        ]);
        let eta = judge(&full, true, &PARAMS).truncation_eta;
        assert_eq!(eta.map(f64::round), Some(40.0));
        // Nothing removed yet (the log grows with the stream): the head stands still.
        let growing = window_with_log(&[
            (0, 10_000, 1800, Some(11_800)),
            (20, 10_200, 2600, Some(12_800)),
            (40, 10_400, 3400, Some(13_800)),
        ]);
        assert_eq!(
            judge(&growing, true, &PARAMS).truncation_eta,
            Some(f64::INFINITY)
        );
        // Already overtaken.
        let gone = window_with_log(&[(0, 0, 1800, Some(1000)), (20, 10, 1900, Some(1000))]);
        assert_eq!(judge(&gone, true, &PARAMS).truncation_eta, Some(0.0));
        // A reader that left reads nothing: the head alone closes in.
        let left = window_with_log(&[
            (0, 4000, 1800, Some(5000)),
            (20, 4000, 2800, Some(5000)),
            (40, 4000, 3800, Some(5000)),
        ]);
        assert_eq!(
            judge(&left, false, &PARAMS).truncation_eta.map(f64::round),
            Some(24.0)
        );
    }

    #[test]
    fn an_offset_going_back_restarts_the_window() {
        let mut w = window(&[(0, 500, 0), (20, 900, 0)]);
        w.push(
            LagPoint {
                at: Timestamp(40_000),
                offset: 10,
                lag: 890,
                messages: None,
            },
            PARAMS.window_ms,
        );
        assert_eq!(w.len(), 1);
    }
}
