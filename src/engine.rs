//! The alerting loop's I/O side: evaluation → alert state machine → dispatch plan → one store commit.
//!
//! `alerts`, `rules` and `alerts::dispatch` are pure; this module holds their state behind a lock,
//! persists what changed together with the notifications it causes (one transaction, see `store`),
//! wakes the outbox workers, and publishes a read-only copy of the alerts for the API and metrics.
//! A failed commit is logged and retried on the next cycle: nothing in memory is marked as sent
//! unless the store has it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tracing::{error, info};

use crate::alerts::dispatch::{Dispatch, plan};
use crate::alerts::mute::{InhibitRule, Silence, muted};
use crate::alerts::{Alert, AlertTable, FlapPolicy, State, Transition};
use crate::domain::Timestamp;
use crate::rules::{RuleSet, evaluate};
use crate::store::{CycleWrite, GroupState, OutboxEntry, Store, StoreError};
use crate::view::ClusterView;

/// Alert fields whose change must reach the store at once; the rest (values, last_held) is flushed
/// every `FULL_FLUSH_MS` so 10k firing alerts do not rewrite the database every poll.
type Persisted = (State, bool, String, Option<i64>);

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
    wake: Vec<Arc<Notify>>,
    published: ArcSwap<Published>,
    flap: FlapPolicy,
}

fn persisted(a: &Alert) -> Persisted {
    (a.state, a.flapping, a.correlation_id.clone(), a.fired_at)
}

impl Engine {
    /// Resumes from the store: alert states (pending timers included) and what each group was sent.
    pub fn new(
        store: Arc<Store>,
        alerting: Alerting,
        wake: Vec<Arc<Notify>>,
    ) -> Result<Engine, StoreError> {
        let alerts = store.load_alerts()?;
        let silences = store.silences()?;
        let groups = store.load_groups()?;
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
        })
    }

    pub fn alerts(&self) -> Arc<Published> {
        self.published.load_full()
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
    pub fn add_silence(&self, silence: Silence) -> Result<Silence, String> {
        silence.compile()?;
        if silence.ends_at <= silence.starts_at {
            return Err("a silence must end after it starts".into());
        }
        self.store
            .put_silence(&silence)
            .map_err(|e| e.to_string())?;
        info!(silence = %silence.id, matchers = ?silence.matchers, ends_at = silence.ends_at, "silence added");
        self.inner
            .lock()
            .expect("engine lock")
            .silences
            .push(silence.clone());
        Ok(silence)
    }

    /// Ends a silence now; `Ok(false)` if there is no such silence.
    pub fn expire_silence(&self, id: &str, now: Timestamp) -> Result<bool, String> {
        let mut inner = self.inner.lock().expect("engine lock");
        let Some(s) = inner.silences.iter_mut().find(|s| s.id == id) else {
            return Ok(false);
        };
        s.ends_at = s.ends_at.min(now.0);
        self.store.put_silence(s).map_err(|e| e.to_string())?;
        info!(silence = %id, "silence expired");
        self.commit(&mut inner, now);
        Ok(true)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Wakes every outbox worker (after a replay put work in the outbox).
    pub fn wake_all(&self) {
        for w in &self.wake {
            w.notify_one();
        }
    }

    /// Evaluates the rules over a cluster's new view and records what changed.
    pub fn on_cycle(&self, view: &ClusterView, now: Timestamp) {
        let alerting = self.alerting.load();
        let rules = &alerting.rules;
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
        let changed = !upsert.is_empty() || !remove.is_empty() || !flushes.is_empty();
        if changed {
            let enqueue: Vec<OutboxEntry> = flushes
                .iter()
                .filter_map(|f| f.notification.clone())
                .map(|notification| OutboxEntry {
                    notification,
                    attempts: 0,
                    next_attempt_at: now_ms,
                    enqueued_at: now_ms,
                    last_error: None,
                })
                .collect();
            let write = CycleWrite {
                upsert_alerts: upsert,
                remove_alerts: remove.clone(),
                groups: flushes
                    .iter()
                    .map(|f| (f.group_id.clone(), f.state.clone()))
                    .collect(),
                enqueue,
            };
            match self.store.commit_cycle(&write) {
                Ok(ids) => {
                    let written: Vec<(String, Persisted)> = write
                        .upsert_alerts
                        .iter()
                        .map(|a| (a.fingerprint.clone(), persisted(a)))
                        .collect();
                    drop(write);
                    inner.persisted.extend(written);
                    for fp in &remove {
                        inner.persisted.remove(fp);
                    }
                    for f in flushes {
                        inner.groups.insert(f.group_id, f.state);
                    }
                    if full {
                        inner.last_full_flush = now_ms;
                    }
                    if !ids.is_empty() {
                        for w in &self.wake {
                            w.notify_one();
                        }
                    }
                }
                // The store logs going down and coming back once each; per tick is noise.
                Err(e) if e.is_unavailable() => {
                    tracing::debug!(error = %e, "cannot persist alert state; notifications wait until the store accepts writes")
                }
                Err(e) => {
                    error!(error = %e, "cannot persist alert state; notifications wait until the store accepts writes")
                }
            }
        }
        self.published.store(Arc::new(Published {
            alerts: inner.table.alerts.values().cloned().collect(),
            muted,
        }));
    }
}
