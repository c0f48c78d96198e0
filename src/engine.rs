//! The alerting loop's I/O side: evaluation → alert state machine → dispatch plan → one store commit.
//!
//! `alerts`, `rules` and `alerts::dispatch` are pure; this module holds their state behind a lock,
//! persists what changed together with the notifications it causes (one transaction, see `store`),
//! wakes the outbox workers, and publishes a read-only copy of the alerts for the API and metrics.
//!
//! Disk I/O never happens under the lock nor on the async runtime: a cycle builds its write (records
//! already serialised) under the lock and hands it to the one `state-writer` thread, which commits
//! writes in order. A slow disk therefore delays only the writes, never another cluster's cycle.
//! The in-memory state moves on at once; a write the store refuses is kept and retried (merged with
//! the ones after it, in order) until the store takes it, so nothing planned is lost and nothing is
//! planned twice. The outbox sees a notification only once its write is committed, so "sent" is
//! still never recorded before the store has it.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};
use tracing::{error, info, warn};

use crate::alerts::dispatch::{Dispatch, GroupState, ended_groups, plan};
use crate::alerts::mute::{InhibitRule, muted};
use crate::alerts::{Alert, AlertTable, FlapPolicy, State, Transition};
use crate::domain::{Notification, ScalingMetrics, ScalingRequest};
use crate::domain::{Silence, Timestamp};
use crate::rules::{RuleSet, evaluate};
use crate::scale::{
    Decision, Direction, History, Observed, Recommendation, ScalerConfig, ScalerMode, decide,
};
use crate::store::{CycleWrite, OutboxEntry, Store, StoreError, record};
use crate::view::ClusterView;

/// Alert fields whose change must reach the store at once; the rest (values, last_held) is flushed
/// every `FULL_FLUSH_MS` so 10k firing alerts do not rewrite the database every poll. `last_held` of an
/// alert no longer held (kept by `keep_firing_for`) stops moving, and is written once when it stops, so
/// a restart keeps the window exactly; `active_since` of a pending alert is written with it.
type Persisted = (State, bool, String, Option<i64>, Option<i64>);

const FULL_FLUSH_MS: i64 = 60_000;

struct Inner {
    table: AlertTable,
    silences: Vec<Silence>,
    groups: BTreeMap<String, GroupState>,
    persisted: HashMap<String, Persisted>,
    last_full_flush: i64,
}

/// Outcome of the last config reload, for `/metrics`.
#[derive(Debug)]
pub struct ReloadStatus {
    pub ok: std::sync::atomic::AtomicBool,
    /// Ms since the epoch of the last successful load (start-up counts).
    pub last_success: std::sync::atomic::AtomicI64,
}

impl ReloadStatus {
    pub fn new(now: Timestamp) -> Self {
        ReloadStatus {
            ok: std::sync::atomic::AtomicBool::new(true),
            last_success: std::sync::atomic::AtomicI64::new(now.0),
        }
    }
}

/// What reloads can change without a restart.
pub struct Alerting {
    pub rules: RuleSet,
    pub dispatch: Option<Dispatch>,
    pub inhibit: Vec<InhibitRule>,
}

/// The alerts as the API and metrics see them, with whether each is silenced or inhibited.
#[derive(Default)]
pub struct Published {
    pub alerts: Vec<Alert>,
    pub muted: std::collections::HashSet<String>,
}

pub struct Engine {
    alerting: ArcSwap<Alerting>,
    store: Arc<Store>,
    inner: Mutex<Inner>,
    wake: Arc<Vec<Arc<Notify>>>,
    published: ArcSwap<Published>,
    flap: FlapPolicy,
    /// To the `state-writer` thread; it stops when the engine is dropped.
    writer: mpsc::Sender<Job>,
    /// (cluster, rule `file:line`) already warned about reading fields the cluster's stats mode
    /// cannot supply: said once, not every cycle.
    unsupplied_warned: Mutex<std::collections::HashSet<(String, String)>>,
}

/// Why a silence was not added.
#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    /// The request is wrong (no matcher, a bad regex, an end before the start): 400.
    #[error("{0}")]
    Invalid(String),
    /// The store cannot take it now (a full or read-only disk): 503, try again.
    #[error("{0}")]
    Unavailable(StoreError),
}

/// Work for the `state-writer` thread, done in the order sent.
enum Job {
    Cycle(CycleWrite),
    Silence(Silence, oneshot::Sender<Result<(), StoreError>>),
    /// Answered once every write sent before it is committed (or refused and kept for retry).
    Flush(oneshot::Sender<()>),
}

/// How long the writer waits before retrying a write the store refused (it also retries as soon as
/// new work arrives).
const WRITE_RETRY: Duration = Duration::from_secs(1);

/// The `state-writer` thread: commits cycle writes in order; a refused one is kept, merged with later
/// ones and retried. Wakes the outbox workers after a commit that enqueued notifications.
fn write_loop(
    store: Arc<Store>,
    jobs: mpsc::Receiver<Job>,
    wake: Arc<Vec<Arc<Notify>>>,
    delay: Duration,
) {
    let mut pending: Option<CycleWrite> = None;
    loop {
        let first = if pending.is_some() {
            match jobs.recv_timeout(WRITE_RETRY) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        };
        let mut flushed = Vec::new();
        for job in first
            .into_iter()
            .chain(std::iter::from_fn(|| jobs.try_recv().ok()))
        {
            match job {
                Job::Cycle(w) => match &mut pending {
                    Some(p) => p.merge(w),
                    None => pending = Some(w),
                },
                Job::Silence(s, reply) => {
                    let _ = reply.send(store.put_silence(&s));
                }
                Job::Flush(reply) => flushed.push(reply),
            }
        }
        if let Some(w) = pending.take() {
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            match store.commit_cycle(&w) {
                Ok(ids) => {
                    if !ids.is_empty() {
                        for n in wake.iter() {
                            n.notify_one();
                        }
                    }
                }
                Err(e) => {
                    // The store logs going down and coming back once each; per retry is noise.
                    if e.is_unavailable() {
                        tracing::debug!(error = %e, "cannot persist alert state; kept and retried, notifications wait until the store accepts writes");
                    } else {
                        error!(error = %e, "cannot persist alert state; kept and retried, notifications wait until the store accepts writes");
                    }
                    pending = Some(w);
                }
            }
        }
        for reply in flushed {
            let _ = reply.send(());
        }
    }
}

fn persisted(a: &Alert) -> Persisted {
    (
        a.state,
        a.flapping,
        a.correlation_id.clone(),
        a.fired_at,
        a.unheld.then_some(a.last_held),
    )
}

impl Engine {
    /// Resumes from the store: alert states (pending timers included) and what each group was sent.
    /// `commit_delay` slows every commit down, for the slow-disk test; zero otherwise.
    pub fn new(
        store: Arc<Store>,
        alerting: Alerting,
        wake: Vec<Arc<Notify>>,
        commit_delay: Duration,
    ) -> Result<Engine, StoreError> {
        let alerts: Vec<Alert> = store.load_alerts()?;
        let silences = store.silences()?;
        for s in &silences {
            if let Err(e) = s.compile() {
                error!(silence = %s.id, error = %e, "stored silence cannot be used; it mutes nothing (expire it and add it again)");
            }
        }
        let groups = store.load_groups()?;
        let wake = Arc::new(wake);
        let (tx, rx) = mpsc::channel();
        {
            let (store, wake) = (store.clone(), wake.clone());
            std::thread::Builder::new()
                .name("state-writer".into())
                .spawn(move || write_loop(store, rx, wake, commit_delay))
                .map_err(|e| {
                    StoreError::Db(format!("cannot start the state writer thread: {e}"))
                })?;
        }
        let persisted = alerts
            .iter()
            .map(|a| (a.fingerprint.clone(), persisted(a)))
            .collect();
        let table = AlertTable {
            alerts: alerts
                .into_iter()
                .map(|a| (a.fingerprint.clone(), a))
                .collect(),
        };
        let published = ArcSwap::from_pointee(Published {
            alerts: table.alerts.values().cloned().collect(),
            muted: Default::default(),
        });
        Ok(Engine {
            unsupplied_warned: Mutex::default(),
            alerting: ArcSwap::from_pointee(alerting),
            store,
            inner: Mutex::new(Inner {
                table,
                silences,
                groups,
                persisted,
                last_full_flush: Timestamp::now().0,
            }),
            wake,
            published,
            flap: FlapPolicy::default(),
            writer: tx,
        })
    }

    fn send(&self, job: Job) {
        // The writer lives as long as the engine; a send fails only if it panicked.
        if self.writer.send(job).is_err() {
            error!("the state writer thread is gone; alert state is no longer persisted");
        }
    }

    /// Waits until every write made so far has been committed, or refused and kept for retry.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Flush(tx));
        let _ = rx.await;
    }

    pub fn alerts(&self) -> Arc<Published> {
        self.published.load_full()
    }

    /// Resolves the alerts of clusters this daemon no longer watches (run at start, after the config
    /// and `--shard` decided which clusters are this daemon's), each with the reason.
    pub fn retire_clusters(&self, watched: &[String], now: Timestamp) {
        let mut inner = self.inner.lock().expect("engine lock");
        let retired = inner.table.retire_clusters(watched, now, self.flap);
        for t in &retired {
            if let Some(a) = inner.table.get(t.fingerprint()) {
                info!(alertname = %a.alertname, cluster = %a.cluster, correlation_id = %a.correlation_id,
                    "alert resolved: its cluster is no longer watched by this daemon (removed from the config, or moved to another shard)");
            }
        }
        self.commit(&mut inner, now);
    }

    /// Swaps in new rules, routes and inhibitions (a reload); alerts of removed rules resolve.
    pub fn reload(&self, alerting: Alerting, now: Timestamp) {
        let mut inner = self.inner.lock().expect("engine lock");
        let retired = inner
            .table
            .retire_missing_rules(&alerting.rules, now, self.flap);
        if !retired.is_empty() {
            info!(
                resolved = retired.len(),
                "reload: alerts of removed or disabled rules resolved"
            );
        }
        self.alerting.store(Arc::new(alerting));
        self.commit(&mut inner, now);
    }

    pub fn silences(&self) -> Vec<Silence> {
        self.inner.lock().expect("engine lock").silences.clone()
    }

    /// Validates and stores a silence; it takes effect at the next dispatcher tick (≤ 1 s).
    pub async fn add_silence(&self, silence: Silence) -> Result<Silence, SilenceError> {
        silence.compile().map_err(SilenceError::Invalid)?;
        if silence.ends_at <= silence.starts_at {
            return Err(SilenceError::Invalid(
                "a silence must end after it starts".into(),
            ));
        }
        self.put_silence(silence.clone())
            .await
            .map_err(SilenceError::Unavailable)?;
        info!(silence = %silence.id, matchers = ?silence.matchers, ends_at = silence.ends_at, "silence added");
        self.inner
            .lock()
            .expect("engine lock")
            .silences
            .push(silence.clone());
        Ok(silence)
    }

    /// Ends a silence now; `Ok(false)` if there is no such silence.
    pub async fn expire_silence(&self, id: &str, now: Timestamp) -> Result<bool, StoreError> {
        let expired = {
            let inner = self.inner.lock().expect("engine lock");
            let Some(s) = inner.silences.iter().find(|s| s.id == id) else {
                return Ok(false);
            };
            Silence {
                ends_at: s.ends_at.min(now.0),
                ..s.clone()
            }
        };
        self.put_silence(expired.clone()).await?;
        info!(silence = %id, "silence expired");
        let mut inner = self.inner.lock().expect("engine lock");
        if let Some(s) = inner.silences.iter_mut().find(|s| s.id == id) {
            *s = expired;
        }
        self.commit(&mut inner, now);
        Ok(true)
    }

    async fn put_silence(&self, silence: Silence) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Silence(silence, tx));
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Db("the state writer thread is gone".into())))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Wakes every outbox worker (after a replay put work in the outbox).
    pub fn wake_all(&self) {
        for w in self.wake.iter() {
            w.notify_one();
        }
    }

    /// The rules, routes and inhibitions in force.
    pub fn alerting(&self) -> Arc<Alerting> {
        self.alerting.load_full()
    }

    /// Evaluates the rules over a cluster's new view and records what changed.
    pub fn on_cycle(&self, view: &ClusterView, now: Timestamp) {
        let alerting = self.alerting.load();
        let rules = &alerting.rules;
        if view.up {
            self.warn_unsupplied(rules, view);
        }
        let eval = evaluate(rules, view, now);
        let mut inner = self.inner.lock().expect("engine lock");
        let mut new_id = || uuid::Uuid::now_v7().to_string();
        let transitions = inner.table.step(rules, &eval, now, self.flap, &mut new_id);
        for t in &transitions {
            if let Some(a) = inner.table.get(t.fingerprint()) {
                let what = match t {
                    Transition::Fired(_) => "alert firing",
                    Transition::Resolved(_) => "alert resolved",
                    Transition::StartedFlapping(_) => "alert flapping",
                    Transition::StoppedFlapping(_) => "alert stopped flapping",
                };
                info!(
                    alertname = %a.alertname,
                    cluster = %a.cluster,
                    vhost = a.labels.get("vhost").map(String::as_str).unwrap_or(""),
                    queue = a.labels.get("queue").map(String::as_str).unwrap_or(""),
                    node = a.labels.get("node").map(String::as_str).unwrap_or(""),
                    correlation_id = %a.correlation_id,
                    mode = a.mode.as_str(),
                    "{what}"
                );
            }
        }
        self.commit(&mut inner, now);
    }

    /// Warns once per rule and cluster about a rule that reads fields the cluster's stats mode
    /// cannot supply (rates in depth-only mode): those operands are unknown there for good.
    fn warn_unsupplied(&self, rules: &RuleSet, view: &ClusterView) {
        let found = rules.unsupplied(&view.name, view.stats_mode);
        if found.is_empty() {
            return;
        }
        let mut warned = self
            .unsupplied_warned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (rule, fields) in found {
            let at = format!("{}:{}", rule.file.display(), rule.line);
            if warned.insert((view.name.clone(), at.clone())) {
                warn!(
                    cluster = %view.name,
                    alertname = %rule.alert,
                    rule = %at,
                    fields = %fields.join(","),
                    stats_mode = view.stats_mode.as_str(),
                    "rule reads fields this cluster cannot supply in its stats mode: they stay unknown, and the rule cannot fire through them"
                );
            }
        }
    }

    /// Runs the dispatcher's timers (group_wait, group_interval, repeat_interval).
    pub fn tick(&self, now: Timestamp) {
        let mut inner = self.inner.lock().expect("engine lock");
        self.commit(&mut inner, now);
    }

    fn commit(&self, inner: &mut Inner, now: Timestamp) {
        let now_ms = now.0;
        let alerting = self.alerting.load();
        let muted = muted(&inner.table, &inner.silences, &alerting.inhibit, now_ms);
        let flushes = match &alerting.dispatch {
            Some(d) => plan(d, &inner.table, &inner.groups, &muted, now_ms),
            None => Vec::new(),
        };
        let full = now_ms - inner.last_full_flush >= FULL_FLUSH_MS;
        let upsert: Vec<&Alert> = inner
            .table
            .alerts
            .values()
            .filter(|a| full || inner.persisted.get(&a.fingerprint) != Some(&persisted(a)))
            .collect();
        let remove: Vec<String> = inner
            .persisted
            .keys()
            .filter(|fp| !inner.table.alerts.contains_key(*fp))
            .cloned()
            .collect();
        let mut write = CycleWrite::default();
        for a in upsert {
            write.alerts.insert(a.fingerprint.clone(), Some(record(a)));
        }
        for fp in remove {
            write.alerts.insert(fp, None);
        }
        for f in flushes {
            write
                .groups
                .insert(f.group_id.clone(), Some(record(&f.state)));
            if let Some(notification) = f.notification {
                write.enqueue.push(OutboxEntry {
                    notification,
                    attempts: 0,
                    next_attempt_at: now_ms,
                    enqueued_at: now_ms,
                    last_error: None,
                });
            }
            inner.groups.insert(f.group_id, f.state);
        }
        if full {
            inner.last_full_flush = now_ms;
            let ended: Vec<String> = ended_groups(&inner.groups, &inner.table, now_ms)
                .into_iter()
                .map(String::from)
                .collect();
            for id in ended {
                inner.groups.remove(&id);
                write.groups.insert(id, None);
            }
        }
        if !write.is_empty() {
            for (fp, a) in &write.alerts {
                match a {
                    Some(_) => {
                        let p = persisted(&inner.table.alerts[fp]);
                        inner.persisted.insert(fp.clone(), p);
                    }
                    None => {
                        inner.persisted.remove(fp);
                    }
                }
            }
            self.send(Job::Cycle(write));
        }
        self.published.store(Arc::new(Published {
            alerts: inner.table.alerts.values().cloned().collect(),
            muted,
        }));
    }
}

/// The scalers' state between cycles and what each decided last. `scale::decide` is pure; this
/// runs it on every cycle of the scaler's cluster, logs each recommendation once, enqueues it for
/// the scaler's webhook receiver in `mode: active` (through the outbox: signed, retried, dead-
/// lettered, replayable), and publishes a read-only copy for `/metrics` and `/api/v1/scalers`.
///
/// Each scaler's `History` and last recommendation are persisted through the state writer, in the
/// same transaction as the recommendation they go with (and at least every minute), so the
/// stabilisation window and the recommendation `sequence` survive a restart.
pub struct Scaling {
    scalers: Vec<ScalerConfig>,
    /// `analysis.window`: decisions wait for rates that stand on this much history.
    window: Duration,
    state: Mutex<Vec<ScalerState>>,
    published: ArcSwap<Vec<ScalerStatus>>,
}

/// What is persisted of a scaler between cycles.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ScalerRecord {
    history: History,
    last: Option<ScalingRequest>,
}

#[derive(Default)]
struct ScalerState {
    record: ScalerRecord,
    up: u64,
    down: u64,
    persisted_at: i64,
}

/// One scaler as `/metrics` and the API show it.
#[derive(Clone, Debug, Serialize)]
pub struct ScalerStatus {
    pub name: String,
    pub cluster: String,
    pub vhost: String,
    pub queue: String,
    pub mode: ScalerMode,
    pub min: u32,
    pub max: u32,
    /// The queue's consumers, when the latest listing has the queue.
    pub current: Option<u64>,
    /// This cycle's desired count (`Decision::desired`); `None` when an input is unknown.
    pub desired: Option<u32>,
    /// The last cycle's decision; `None` before the cluster's first cycle (since the start).
    pub last_decision: Option<Decision>,
    /// Seconds since the epoch of that decision.
    pub decided_at: Option<f64>,
    /// Recommendations made since the start, by direction.
    pub recommendations_up: u64,
    pub recommendations_down: u64,
    /// The last recommendation, as the webhook receives it (kept across restarts).
    pub last_recommendation: Option<ScalingRequest>,
}

/// Scaler state is written at least this often, so the stabilisation window survives a restart.
const SCALER_FLUSH_MS: i64 = 60_000;

impl Scaling {
    /// Resumes each scaler from the store.
    pub fn new(
        scalers: Vec<ScalerConfig>,
        window: Duration,
        store: &Store,
    ) -> Result<Self, StoreError> {
        let mut stored: BTreeMap<String, ScalerRecord> = store.load_scalers()?;
        let state: Vec<ScalerState> = scalers
            .iter()
            .map(|c| ScalerState {
                record: stored.remove(&c.name).unwrap_or_default(),
                ..ScalerState::default()
            })
            .collect();
        let published = scalers
            .iter()
            .zip(&state)
            .map(|(c, st)| status(c, st, None))
            .collect();
        Ok(Scaling {
            window,
            state: Mutex::new(state),
            published: ArcSwap::from_pointee(published),
            scalers,
        })
    }

    pub fn statuses(&self) -> Arc<Vec<ScalerStatus>> {
        self.published.load_full()
    }

    /// Runs every scaler of `view`'s cluster on its new view; what is to be kept or sent goes to the
    /// engine's state writer.
    pub fn on_cycle(&self, view: &ClusterView, now: Timestamp, engine: &Engine) {
        if !self.scalers.iter().any(|c| c.cluster == view.name) {
            return;
        }
        let mut state = self.state.lock().expect("scaling lock");
        let mut published: Vec<ScalerStatus> = (*self.published.load_full()).clone();
        let mut write = CycleWrite::default();
        for (i, cfg) in self.scalers.iter().enumerate() {
            if cfg.cluster != view.name {
                continue;
            }
            let observed = Observed::from_view(view, &cfg.vhost, &cfg.queue, self.window, now);
            let st = &mut state[i];
            let decision = decide(cfg, &observed, &mut st.record.history, now);
            let mut persist = now.0 - st.persisted_at >= SCALER_FLUSH_MS;
            if let Decision::Recommend(r) = &decision {
                match r.direction {
                    Direction::Up => st.up += 1,
                    Direction::Down => st.down += 1,
                }
                let request = scaling_request(cfg, r, now);
                let sent = cfg.mode == ScalerMode::Active;
                info!(
                    scaler = %cfg.name,
                    cluster = %cfg.cluster,
                    vhost = %cfg.vhost,
                    queue = %cfg.queue,
                    mode = cfg.mode.as_str(),
                    direction = r.direction.as_str(),
                    current = r.current,
                    desired = r.desired,
                    sequence = r.sequence,
                    idempotency_key = %request.idempotency_key,
                    reason = %r.reason,
                    "{}",
                    if sent {
                        "scaling recommendation sent to the outbox"
                    } else {
                        "scaling recommendation (shadow: not sent)"
                    }
                );
                if sent {
                    let notification = Notification::scaling(&cfg.receiver, request.clone(), now.0);
                    write.enqueue.push(OutboxEntry {
                        notification,
                        attempts: 0,
                        next_attempt_at: now.0,
                        enqueued_at: now.0,
                        last_error: None,
                    });
                }
                st.record.last = Some(request);
                persist = true;
            }
            if persist {
                write.scalers.insert(cfg.name.clone(), record(&st.record));
                st.persisted_at = now.0;
            }
            let current = observed.queue.map(|q| q.consumers);
            published[i] = ScalerStatus {
                current,
                decided_at: Some(now.as_secs_f64()),
                ..status(cfg, st, Some(decision))
            };
        }
        self.published.store(Arc::new(published));
        if !write.is_empty() {
            engine.send(Job::Cycle(write));
        }
    }
}

/// The recommendation as the webhook receives it (docs/scaling.md).
fn scaling_request(cfg: &ScalerConfig, r: &Recommendation, now: Timestamp) -> ScalingRequest {
    let millis = std::time::UNIX_EPOCH + Duration::from_millis(now.0.max(0) as u64);
    ScalingRequest {
        version: 1,
        scaler: cfg.name.clone(),
        cluster: cfg.cluster.clone(),
        vhost: cfg.vhost.clone(),
        queue: cfg.queue.clone(),
        current: r.current,
        desired: r.desired,
        min: cfg.min,
        max: cfg.max,
        direction: r.direction.as_str().to_string(),
        reason: r.reason.clone(),
        metrics: ScalingMetrics {
            publish_rate: r.inputs.publish_rate,
            consume_rate: r.inputs.consume_rate,
            messages_ready: r.inputs.messages_ready,
            per_consumer_rate: r.inputs.per_consumer_rate,
            per_consumer_rate_source: r.inputs.per_consumer_rate_source.as_str().to_string(),
        },
        sequence: r.sequence,
        idempotency_key: format!("scaler:{}:{}", cfg.name, r.sequence),
        timestamp: humantime::format_rfc3339_millis(millis).to_string(),
    }
}

fn status(cfg: &ScalerConfig, st: &ScalerState, decision: Option<Decision>) -> ScalerStatus {
    ScalerStatus {
        name: cfg.name.clone(),
        cluster: cfg.cluster.clone(),
        vhost: cfg.vhost.clone(),
        queue: cfg.queue.clone(),
        mode: cfg.mode,
        min: cfg.min,
        max: cfg.max,
        current: None,
        desired: decision.as_ref().and_then(Decision::desired),
        last_decision: decision,
        decided_at: None,
        recommendations_up: st.up,
        recommendations_down: st.down,
        last_recommendation: st.record.last.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(dir: &std::path::Path) -> (Arc<Store>, Engine) {
        let store = Arc::new(Store::open(dir).unwrap());
        let alerting = Alerting {
            rules: RuleSet::default(),
            dispatch: None,
            inhibit: Vec::new(),
        };
        let engine = Engine::new(store.clone(), alerting, Vec::new(), Duration::ZERO).unwrap();
        (store, engine)
    }

    fn silence(ends_at: i64) -> Silence {
        Silence {
            id: "s1".into(),
            matchers: vec!["alertname=Backlog".into()],
            starts_at: 0,
            ends_at,
            created_by: String::new(),
            comment: String::new(),
        }
    }

    #[tokio::test]
    async fn groups_ended_a_day_ago_leave_the_store_and_recent_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now().0;
        {
            let store = Store::open(dir.path()).unwrap();
            let group = |last_sent_at: i64| {
                Some(record(&GroupState {
                    notified: BTreeMap::new(),
                    last_sent_at: Some(last_sent_at),
                    sequence: 2,
                }))
            };
            let ids = store
                .commit_cycle(&CycleWrite {
                    groups: [
                        ("r\u{0}old".to_string(), group(now - 25 * 3_600_000)),
                        ("r\u{0}recent".to_string(), group(now - 3_600_000)),
                    ]
                    .into(),
                    enqueue: vec![],
                    ..Default::default()
                })
                .unwrap();
            assert!(ids.is_empty());
        }
        let (store, engine) = engine(dir.path());
        // The next full flush (a minute after start) forgets the group that ended over a day ago.
        engine.tick(Timestamp(now + 30_000));
        engine.flush().await;
        let groups: BTreeMap<String, GroupState> = store.load_groups().unwrap();
        assert_eq!(groups.len(), 2, "not before the full flush");
        engine.tick(Timestamp(now + 61_000));
        engine.flush().await;
        let groups: BTreeMap<String, GroupState> = store.load_groups().unwrap();
        assert_eq!(groups.keys().collect::<Vec<_>>(), ["r\u{0}recent"]);
    }

    #[tokio::test]
    async fn a_silence_the_store_cannot_take_is_unavailable_not_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let (store, engine) = engine(dir.path());
        assert!(matches!(
            engine.add_silence(silence(0)).await,
            Err(SilenceError::Invalid(_))
        ));
        store.close_for_test();
        match engine.add_silence(silence(1_000)).await {
            Err(SilenceError::Unavailable(e)) => assert!(e.is_unavailable(), "{e}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(
            engine.silences().is_empty(),
            "nothing kept that was not stored"
        );
        store.probe();
        engine.add_silence(silence(1_000)).await.unwrap();
        assert_eq!(store.silences().unwrap().len(), 1);
    }
}
