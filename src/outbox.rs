//! Delivery of the notifications the store holds: one worker per receiver, the one place that retries.
//!
//! Invariants (see also `store`): an entry leaves the outbox only in the same transaction that records
//! its delivery or its dead letter. Per group, entries go out in order: a firing message in backoff
//! holds back the resolve behind it. Backoff is 1 s, 3 s, 9 s, 27 s, … (factor 3, capped, ±10% jitter),
//! never shorter than the receiver's `Retry-After`. Permanent errors fail early into the dead letters;
//! transient ones retry until `max_attempts` or `max_age`, then become dead letters too. Nothing is
//! dropped silently.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::alerts::dispatch::group_id;
use crate::domain::{Histogram, Timestamp};
use crate::fault::Fault;
use crate::liveness::Beat;
use crate::receivers::Receiver;
use crate::store::{DeadLetter, OutboxEntry, Store, StoreError};

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub max_attempts: u32,
    pub max_age: Duration,
    pub max_backoff: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 12,
            max_age: Duration::from_secs(24 * 3600),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// 1 s × 3^(attempt−1), capped, with ±10% jitter (`jitter` in [0, 1)).
pub fn backoff(attempt: u32, cap: Duration, jitter: f64) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(3u32.saturating_pow(attempt.saturating_sub(1).min(20)));
    base.min(cap).mul_f64(0.9 + 0.2 * jitter)
}

/// Why an entry went to the dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// The receiver said retrying cannot help (fail early).
    Permanent,
    /// Transient failures until `max_attempts` or `max_age` ran out.
    GaveUp,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::GaveUp => "gave_up",
        }
    }
}

/// What to do with an entry whose delivery just failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AfterFailure {
    /// Try again `wait` from now.
    Retry {
        wait: Duration,
    },
    DeadLetter(DeadReason),
}

/// The retry-or-dead-letter decision, pure. `attempts` counts the one that just failed; `jitter` is in
/// [0, 1). A retry never comes sooner than the receiver's `Retry-After`.
pub fn after_failure(
    policy: &Policy,
    attempts: u32,
    enqueued_at: i64,
    retriable: bool,
    retry_after: Option<Duration>,
    now: i64,
    jitter: f64,
) -> AfterFailure {
    if !retriable {
        return AfterFailure::DeadLetter(DeadReason::Permanent);
    }
    if attempts >= policy.max_attempts || now - enqueued_at >= policy.max_age.as_millis() as i64 {
        return AfterFailure::DeadLetter(DeadReason::GaveUp);
    }
    let wait = backoff(attempts, policy.max_backoff, jitter).max(retry_after.unwrap_or_default());
    AfterFailure::Retry { wait }
}

/// Runs a store operation on the blocking pool, so disk I/O never holds an async worker thread.
pub async fn on_disk<T: Send + 'static>(
    store: &Arc<Store>,
    op: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || op(&store))
        .await
        .unwrap_or_else(|e| Err(StoreError::Db(format!("state store task failed: {e}"))))
}

/// Latency buckets (seconds) of `rabbitwatch_notification_latency_seconds`.
pub const LATENCY_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// Counters of one receiver, read by `/metrics`.
#[derive(Debug)]
pub struct ReceiverStats {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Outbox entry → delivery, over `LATENCY_BUCKETS`.
    pub latency: Histogram,
}

impl Default for ReceiverStats {
    fn default() -> Self {
        ReceiverStats {
            delivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            latency: Histogram::new(&LATENCY_BUCKETS),
        }
    }
}

pub type Stats = BTreeMap<String, Arc<ReceiverStats>>;

/// Shared by the workers of receivers that pace together (e.g. one Slack channel).
#[derive(Default)]
pub struct Pacer {
    last: Mutex<BTreeMap<String, tokio::time::Instant>>,
}

impl Pacer {
    async fn wait(&self, key: &str, min: Duration) {
        loop {
            let wait = {
                let mut last = self.last.lock().expect("pacer lock");
                let now = tokio::time::Instant::now();
                match last.get(key) {
                    Some(t) if now < *t + min => Some(*t + min),
                    _ => {
                        last.insert(key.to_string(), now);
                        None
                    }
                }
            };
            match wait {
                Some(until) => tokio::time::sleep_until(until).await,
                None => return,
            }
        }
    }
}

/// The longest an idle worker sleeps before looking at the outbox again (and beating).
pub const IDLE_WAKE: Duration = Duration::from_secs(10);

/// What one receiver's worker needs.
pub struct Worker {
    pub receiver: Arc<Receiver>,
    pub store: Arc<Store>,
    /// Notified when new entries are committed (or replayed).
    pub wake: Arc<Notify>,
    pub pacer: Arc<Pacer>,
    pub policy: Policy,
    pub stats: Arc<ReceiverStats>,
    /// Marked after every pass and every attempt, for the watchdog.
    pub beat: Arc<Beat>,
    /// `HangDelivery`: a delivery that never returns, as a receiver call stuck past every timeout would.
    pub fault: Fault,
}

/// Runs forever: delivers this receiver's due entries, then sleeps until the next is due or `wake`.
pub async fn run_worker(w: Worker) {
    let Worker {
        receiver,
        store,
        wake,
        pacer,
        policy,
        stats,
        beat,
        fault,
    } = w;
    let pass = Pass {
        receiver: &receiver,
        store: &store,
        pacer: &pacer,
        policy,
        stats: &stats,
        beat: &beat,
        hang_deliveries: fault.is(Fault::HangDelivery),
    };
    loop {
        let next = match deliver_due(&pass).await {
            Ok(next) => next,
            Err(e) => {
                // An unavailable store is logged by the store, once; entries stay where they are.
                if e.is_unavailable() {
                    tracing::debug!(receiver = receiver.name(), error = %e, "outbox: state store unavailable; retrying in 5s");
                } else {
                    warn!(receiver = receiver.name(), error = %e, "outbox: state database error; retrying in 5s");
                }
                Some(Timestamp::now().0 + 5_000)
            }
        };
        beat.mark(Timestamp::now());
        let idle_ms = IDLE_WAKE.as_millis() as i64;
        let sleep_ms = next.map_or(idle_ms, |t| (t - Timestamp::now().0).clamp(0, idle_ms));
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
        }
    }
}

/// What one pass over the outbox works with.
#[derive(Clone, Copy)]
struct Pass<'a> {
    receiver: &'a Receiver,
    store: &'a Arc<Store>,
    pacer: &'a Pacer,
    policy: Policy,
    stats: &'a ReceiverStats,
    beat: &'a Beat,
    hang_deliveries: bool,
}

/// One pass over the outbox; returns when the next entry of this receiver is due, if any.
async fn deliver_due(pass: &Pass<'_>) -> Result<Option<i64>, StoreError> {
    let Pass {
        receiver,
        store,
        pacer,
        policy,
        stats,
        beat,
        hang_deliveries,
    } = *pass;
    let entries: Vec<(u64, OutboxEntry)> = on_disk(store, |s| s.outbox())
        .await?
        .into_iter()
        .filter(|(_, e)| e.notification.receiver == receiver.name())
        .collect();
    let mut blocked: HashSet<String> = HashSet::new();
    let mut next_due: Option<i64> = None;
    for (id, mut entry) in entries {
        let group = entry.notification.group_key.clone();
        if blocked.contains(&group) {
            continue;
        }
        let now = Timestamp::now().0;
        if entry.next_attempt_at > now {
            blocked.insert(group);
            next_due =
                Some(next_due.map_or(entry.next_attempt_at, |n| n.min(entry.next_attempt_at)));
            continue;
        }
        if let Some((key, min)) = receiver.pace() {
            pacer.wait(&key, min).await;
        }
        let gid = group_id(receiver.name(), &group);
        let mut n = entry.notification.clone();
        n.previous = {
            let gid = gid.clone();
            on_disk(store, move |s| s.handle(&gid)).await?
        };
        let correlation_id = n
            .alerts
            .first()
            .map(|a| a.correlation_id.clone())
            .unwrap_or_default();
        if hang_deliveries {
            warn!(
                receiver = receiver.name(),
                "RABBITWATCH_FAULT=hang-delivery: this delivery never returns"
            );
            std::future::pending::<()>().await;
        }
        let outcome = receiver.deliver(&n).await;
        beat.mark(Timestamp::now());
        match outcome {
            Ok(delivered) => {
                let handle = delivered.handle;
                on_disk(store, move |s| s.delivered(id, Some((&gid, handle)))).await?;
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                let latency = (Timestamp::now().0 - entry.enqueued_at) as f64 / 1000.0;
                stats.latency.observe(latency);
                info!(receiver = receiver.name(), correlation_id, idempotency_key = %n.idempotency_key, status = ?n.status, alerts = n.alerts.len(), attempts = entry.attempts + 1, "notification delivered");
            }
            Err(err) => {
                entry.attempts += 1;
                let now = Timestamp::now().0;
                let decision = after_failure(
                    &policy,
                    entry.attempts,
                    entry.enqueued_at,
                    err.is_retriable(),
                    err.retry_after(),
                    now,
                    fastrand::f64(),
                );
                match decision {
                    AfterFailure::DeadLetter(why) => {
                        let why = why.as_str();
                        warn!(receiver = receiver.name(), correlation_id, reason = err.reason().as_str(), error = %err, attempts = entry.attempts, why, "notification dead-lettered");
                        let letter = DeadLetter {
                            notification: entry.notification,
                            attempts: entry.attempts,
                            error: err.to_string(),
                            reason: why.to_string(),
                            dead_at: now,
                            enqueued_at: entry.enqueued_at,
                        };
                        on_disk(store, move |s| s.dead_letter(id, &letter)).await?;
                        stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        // A dead letter must not hold its group's later entries back.
                    }
                    AfterFailure::Retry { wait } => {
                        entry.next_attempt_at = now + wait.as_millis() as i64;
                        entry.last_error = Some(err.to_string());
                        let (next, attempts) = (entry.next_attempt_at, entry.attempts);
                        on_disk(store, move |s| s.reschedule(id, &entry)).await?;
                        stats.retried.fetch_add(1, Ordering::Relaxed);
                        warn!(receiver = receiver.name(), correlation_id, reason = err.reason().as_str(), error = %err, attempts, retry_in_ms = wait.as_millis() as u64, "notification failed; will retry");
                        blocked.insert(group);
                        next_due = Some(next_due.map_or(next, |n| n.min(next)));
                    }
                }
            }
        }
    }
    Ok(next_due)
}

/// Marks a dead letter for redelivery.
pub async fn replay(store: &Arc<Store>, id: u64) -> Result<u64, StoreError> {
    let now = Timestamp::now().0;
    on_disk(store, move |s| s.replay(id, now)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_failure_decides_retry_or_dead_letter() {
        let policy = Policy {
            max_attempts: 4,
            max_age: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(60),
        };
        let secs = Duration::from_secs;
        let retry = |wait| AfterFailure::Retry { wait };
        let dead = AfterFailure::DeadLetter;
        // (attempts, enqueued_at, retriable, retry_after, now, expected)
        let table = [
            // 1. a permanent error fails early, whatever is left of the budget
            (1, 0, false, None, 0, dead(DeadReason::Permanent)),
            // 2. the first transient failure waits 1 s, the second 3 s, the third 9 s
            (1, 0, true, None, 0, retry(secs(1))),
            (2, 0, true, None, 0, retry(secs(3))),
            (3, 0, true, None, 0, retry(secs(9))),
            // 3. Retry-After longer than the backoff wins; shorter does not
            (1, 0, true, Some(secs(30)), 0, retry(secs(30))),
            (3, 0, true, Some(secs(2)), 0, retry(secs(9))),
            // 4. the last attempt, or an entry older than max_age, gives up
            (4, 0, true, None, 0, dead(DeadReason::GaveUp)),
            (1, 0, true, None, 3_600_000, dead(DeadReason::GaveUp)),
            (1, 0, true, None, 3_599_999, retry(secs(1))),
        ];
        for (i, (attempts, enqueued, retriable, after, now, want)) in table.into_iter().enumerate()
        {
            let got = after_failure(&policy, attempts, enqueued, retriable, after, now, 0.5);
            assert_eq!(got, want, "row {}", i + 1);
        }
    }

    #[test]
    fn backoff_triples_and_is_capped() {
        let cap = Duration::from_secs(60);
        let secs: Vec<u64> = (1..=6).map(|a| backoff(a, cap, 0.5).as_secs()).collect();
        assert_eq!(secs, vec![1, 3, 9, 27, 60, 60]);
    }

    #[test]
    fn backoff_jitter_stays_within_ten_percent() {
        let cap = Duration::from_secs(600);
        assert_eq!(backoff(3, cap, 0.0), Duration::from_secs(9).mul_f64(0.9));
        assert_eq!(
            backoff(3, cap, 0.999_999),
            Duration::from_secs(9).mul_f64(0.9 + 0.2 * 0.999_999)
        );
    }
}
