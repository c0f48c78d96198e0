//! Embedded, crash-safe state: alerts, alert-group delivery state, receiver handles, silences, the
//! outbox and dead letters.
//!
//! One redb file (`<state.path>/rabbitwatch.redb`); every commit is durable when it returns
//! (`Durability::Immediate`), and the file lock stops two daemons from sharing it. Values are JSON so
//! the schema can evolve; `SCHEMA_VERSION` with `migrate` handles the rest. The store knows the
//! shared vocabulary (`domain`) and its own outbox records; alerts and group states belong to
//! `alerts` and arrive here already serialised (`Record`), so the store never imports the layers
//! above it.
//!
//! Invariants the outbox relies on:
//! - an alert transition and the notifications it causes are written in ONE transaction
//!   (`commit_cycle`): after a crash either both are there or neither is, and the next cycle redoes it;
//! - a notification leaves the outbox only in the transaction that records its delivery or moves it to
//!   the dead letters: a crash before that redelivers it (at-least-once; the idempotency key lets a
//!   receiver drop the duplicate), a crash after it never loses it.
//!
//! When the disk stops accepting writes (a read-only or full file system, an I/O error), every
//! operation fails with a `StoreError` that `is_unavailable()`, nothing is marked as done, and the
//! callers try again later (the engine re-plans its notifications on every tick). The failure and
//! the recovery are logged once each, not per operation. redb refuses every operation after an I/O
//! error until the database is reopened: `probe` (run every few seconds) checks the directory and
//! the database and reopens it when needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::{Notification, Silence};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("alerts");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
const SILENCES: TableDefinition<&str, &[u8]> = TableDefinition::new("silences");
/// Scaler name → its state between cycles (`scale::History` and the last recommendation), so the
/// stabilisation window and the recommendation sequence survive a restart.
const SCALERS: TableDefinition<&str, &[u8]> = TableDefinition::new("scalers");
/// Group id → what the receiver returned for the group's last delivery (a Slack `channel:ts`).
const HANDLES: TableDefinition<&str, &str> = TableDefinition::new("handles");

/// 2: receiver handles moved out of the group records into `handles`.
pub const SCHEMA_VERSION: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state database {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error(
        "state database {path} has schema version {found}, newer than this rabbitwatch understands ({SCHEMA_VERSION}); upgrade rabbitwatch or move the file away"
    )]
    TooNew { path: PathBuf, found: u64 },
    #[error("state database error: {0}")]
    Db(String),
    #[error("corrupt record in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("no dead letter with id {0}")]
    NoSuchDeadLetter(u64),
    #[error("state database {0} is closed after an error; waiting for it to reopen")]
    Closed(PathBuf),
}

impl StoreError {
    /// The storage itself failed (as opposed to one record, or a missing id): the store is down.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Db(_) | StoreError::Open { .. } | StoreError::Closed(_)
        )
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(impl From<$t> for StoreError { fn from(e: $t) -> Self { StoreError::Db(e.to_string()) } })*};
}
db_err!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A notification waiting for delivery, with its retry bookkeeping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub notification: Notification,
    pub attempts: u32,
    /// Milliseconds since the epoch; not before this.
    pub next_attempt_at: i64,
    pub enqueued_at: i64,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub notification: Notification,
    pub attempts: u32,
    pub error: String,
    pub reason: String,
    pub dead_at: i64,
    pub enqueued_at: i64,
}

pub struct Store {
    /// `None` after a reopen failed; `probe` tries again.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    dir: PathBuf,
    health: Mutex<Health>,
}

/// Whether the store accepts writes, for `/readyz` and `/metrics`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreHealth {
    pub writable: bool,
    /// What is wrong, naming the file or directory; `None` when writable.
    pub problem: Option<String>,
    /// Ms since the epoch of the last change of `writable`.
    pub since: i64,
}

#[derive(Debug)]
struct Health {
    /// The last storage error of a database operation, cleared by a successful write.
    db: Option<String>,
    /// Why a new file cannot be created in the state directory, from the last probe.
    dir: Option<String>,
    since: i64,
}

impl Health {
    fn problem(&self) -> Option<String> {
        match (&self.db, &self.dir) {
            (None, None) => None,
            (Some(db), None) => Some(db.clone()),
            (None, Some(dir)) => Some(dir.clone()),
            (Some(db), Some(dir)) => Some(format!("{db}; {dir}")),
        }
    }
}

/// A value of a layer above the store (an alert, a group state), serialised by its owner.
pub type Record = Vec<u8>;

/// Serialises a state record.
pub fn record<T: Serialize>(v: &T) -> Record {
    serde_json::to_vec(v).expect("state records always serialise")
}

/// What one evaluation cycle changes, written atomically. Owned, so it can be built under the
/// engine's lock and committed after the lock is released.
#[derive(Debug, Default)]
pub struct CycleWrite {
    /// Alert fingerprint → its record, or `None` to remove it.
    pub alerts: BTreeMap<String, Option<Record>>,
    /// Group id → its state record, or `None` to forget the group and its receiver handle.
    pub groups: BTreeMap<String, Option<Record>>,
    /// Scaler name → its state record.
    pub scalers: BTreeMap<String, Record>,
    pub enqueue: Vec<OutboxEntry>,
}

impl CycleWrite {
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.groups.is_empty()
            && self.scalers.is_empty()
            && self.enqueue.is_empty()
    }

    /// Folds a later write into this one, as if both were committed in order.
    pub fn merge(&mut self, later: CycleWrite) {
        self.alerts.extend(later.alerts);
        self.groups.extend(later.groups);
        self.scalers.extend(later.scalers);
        self.enqueue.extend(later.enqueue);
    }
}

fn parse<T: for<'de> Deserialize<'de>>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("rabbitwatch.redb");
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let db = open_db(&path)?;
        Ok(Store {
            db: RwLock::new(Some(db)),
            path,
            dir: dir.to_path_buf(),
            health: Mutex::new(Health {
                db: None,
                dir: None,
                since: crate::domain::Timestamp::now().0,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn health(&self) -> StoreHealth {
        let h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let problem = h.problem();
        StoreHealth {
            writable: problem.is_none(),
            problem,
            since: h.since,
        }
    }

    /// Records what an operation found, logging only when the store goes down or comes back.
    fn note(&self, update: impl FnOnce(&mut Health)) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let before = h.problem();
        update(&mut h);
        let after = h.problem();
        match (before, after) {
            (None, Some(problem)) => {
                h.since = crate::domain::Timestamp::now().0;
                tracing::error!(state = %self.path.display(), error = %problem, "state store stopped accepting writes; monitoring goes on, alert state and notifications are kept in memory and written once it recovers");
            }
            (Some(_), None) => {
                h.since = crate::domain::Timestamp::now().0;
                tracing::info!(state = %self.path.display(), "state store accepts writes again");
            }
            _ => {}
        }
    }

    /// Runs `f` on the open database; storage failures mark the store down, a successful write
    /// marks it up.
    fn with_db<T>(
        &self,
        write: bool,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = {
            let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
            match db.as_ref() {
                Some(db) => f(db),
                None => Err(StoreError::Closed(self.path.clone())),
            }
        };
        match &result {
            Err(e) if e.is_unavailable() => {
                let problem = e.to_string();
                self.note(|h| h.db = Some(problem));
            }
            Ok(_) if write => self.note(|h| h.db = None),
            _ => {}
        }
        result
    }

    /// Checks that the state directory takes new files and the database takes commits. After a
    /// failure it reopens the database (redb refuses everything after an I/O error until then), so
    /// the store recovers by itself once the disk does. Blocking: run it off the async threads.
    pub fn probe(&self) -> StoreHealth {
        let file = self.dir.join(".rabbitwatch-write-probe");
        let dir = std::fs::write(&file, b"ok").and_then(|()| std::fs::remove_file(&file));
        let dir_problem = dir.err().map(|e| {
            format!(
                "cannot create files in the state directory {}: {e}",
                self.dir.display()
            )
        });
        self.note(|h| h.dir = dir_problem);
        if self.check_writable().is_err() && self.reopen().is_ok() {
            let _ = self.check_writable();
        }
        self.health()
    }

    /// Closes the database and opens it again.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // The file lock allows one handle: the old one must be gone before the new one opens.
        *db = None;
        match open_db(&self.path) {
            Ok(new) => {
                *db = Some(new);
                // Debug: while the disk stays full this happens every probe; going down and
                // coming back are logged by `note`, once each.
                tracing::debug!(state = %self.path.display(), "state database reopened");
                Ok(())
            }
            Err(e) => {
                tracing::debug!(state = %self.path.display(), error = %e, "state database cannot be reopened yet");
                let problem = e.to_string();
                drop(db);
                self.note(|h| h.db = Some(problem));
                Err(e)
            }
        }
    }
}

impl Store {
    /// What a failed reopen leaves behind: every operation fails as unavailable until `probe`.
    #[cfg(test)]
    pub(crate) fn close_for_test(&self) {
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    let db = Database::create(path).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    migrate(&db, path)?;
    Ok(db)
}

fn migrate(db: &Database, path: &Path) -> Result<(), StoreError> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        let found = meta.get("schema_version")?.map(|v| v.value());
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::TooNew {
                    path: path.to_path_buf(),
                    found: v,
                });
            }
            Some(1) => {
                move_handles_out_of_groups(&tx)?;
                meta.insert("schema_version", SCHEMA_VERSION)?;
            }
            Some(_) => {}
            None => {
                meta.insert("schema_version", SCHEMA_VERSION)?;
            }
        }
        // Create every table so readers never meet a missing one.
        tx.open_table(ALERTS)?;
        tx.open_table(GROUPS)?;
        tx.open_table(OUTBOX)?;
        tx.open_table(DEAD)?;
        tx.open_table(SILENCES)?;
        tx.open_table(HANDLES)?;
        tx.open_table(SCALERS)?;
    }
    tx.commit()?;
    Ok(())
}

/// Schema 1 kept a group's receiver handle inside its record (`"handle"`); copy each into `handles`.
/// The old field stays in the record and is ignored when read.
fn move_handles_out_of_groups(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let groups = tx.open_table(GROUPS)?;
    let mut handles = tx.open_table(HANDLES)?;
    for r in groups.iter()? {
        let (k, v) = r?;
        let old: serde_json::Value = parse("groups", v.value())?;
        if let Some(h) = old.get("handle").and_then(|h| h.as_str()) {
            handles.insert(k.value(), h)?;
        }
    }
    Ok(())
}

impl Store {
    /// A cheap write that proves the database accepts commits (for `/readyz`).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.with_db(true, |db| {
            let tx = db.begin_write()?;
            {
                let mut meta = tx.open_table(META)?;
                meta.insert("last_probe", crate::domain::Timestamp::now().0 as u64)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// A record that no longer parses is reported and skipped, never allowed to block the rest.
    pub fn load_alerts<A: DeserializeOwned>(&self) -> Result<Vec<A>, StoreError> {
        self.with_db(false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(ALERTS)?;
            let mut out = Vec::new();
            for r in t.iter()? {
                let (k, v) = r?;
                match parse("alerts", v.value()) {
                    Ok(a) => out.push(a),
                    Err(e) => {
                        tracing::error!(fingerprint = k.value(), error = %e, "skipping unreadable alert record")
                    }
                }
            }
            Ok(out)
        })
    }

    pub fn load_groups<G: DeserializeOwned>(&self) -> Result<BTreeMap<String, G>, StoreError> {
        self.with_db(false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(GROUPS)?;
            t.iter()?
                .map(|r| {
                    let (k, v) = r?;
                    Ok((k.value().to_string(), parse("groups", v.value())?))
                })
                .collect()
        })
    }

    /// Every scaler's stored state; a record that no longer parses is reported and skipped (that
    /// scaler starts afresh, which holds rather than scales).
    pub fn load_scalers<T: DeserializeOwned>(&self) -> Result<BTreeMap<String, T>, StoreError> {
        self.with_db(false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(SCALERS)?;
            let mut out = BTreeMap::new();
            for r in t.iter()? {
                let (k, v) = r?;
                match parse("scalers", v.value()) {
                    Ok(s) => {
                        out.insert(k.value().to_string(), s);
                    }
                    Err(e) => {
                        tracing::error!(scaler = k.value(), error = %e, "skipping unreadable scaler state")
                    }
                }
            }
            Ok(out)
        })
    }

    /// What the receiver returned for the group's last delivery (a Slack `channel:ts`).
    pub fn handle(&self, group_id: &str) -> Result<Option<String>, StoreError> {
        self.with_db(false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(HANDLES)?;
            Ok(t.get(group_id)?.map(|v| v.value().to_string()))
        })
    }

    /// Writes alert changes, group states and new outbox entries in one transaction; returns the
    /// outbox ids assigned.
    pub fn commit_cycle(&self, w: &CycleWrite) -> Result<Vec<u64>, StoreError> {
        self.with_db(true, |db| {
            let tx = db.begin_write()?;
            let mut ids = Vec::new();
            {
                let mut alerts = tx.open_table(ALERTS)?;
                for (fp, a) in &w.alerts {
                    match a {
                        Some(a) => alerts.insert(fp.as_str(), a.as_slice())?,
                        None => alerts.remove(fp.as_str())?,
                    };
                }
                let mut groups = tx.open_table(GROUPS)?;
                let mut handles = tx.open_table(HANDLES)?;
                for (id, g) in &w.groups {
                    match g {
                        Some(g) => {
                            groups.insert(id.as_str(), g.as_slice())?;
                        }
                        None => {
                            groups.remove(id.as_str())?;
                            handles.remove(id.as_str())?;
                        }
                    }
                }
                let mut scalers = tx.open_table(SCALERS)?;
                for (name, r) in &w.scalers {
                    scalers.insert(name.as_str(), r.as_slice())?;
                }
                let mut outbox = tx.open_table(OUTBOX)?;
                let mut meta = tx.open_table(META)?;
                let mut next = meta.get("next_id")?.map_or(1, |v| v.value());
                for e in &w.enqueue {
                    outbox.insert(next, record(e).as_slice())?;
                    ids.push(next);
                    next += 1;
                }
                meta.insert("next_id", next)?;
            }
            tx.commit()?;
            Ok(ids)
        })
    }

    /// Every entry in the outbox, oldest first. An entry that no longer parses is reported and
    /// skipped (it stays counted in `rabbitwatch_outbox_pending`); it must not block the others.
    pub fn outbox(&self) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        self.with_db(false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(OUTBOX)?;
            let mut out = Vec::new();
            for r in t.iter()? {
                let (k, v) = r?;
                match parse("outbox", v.value()) {
                    Ok(e) => out.push((k.value(), e)),
                    Err(e) => {
                        tracing::error!(id = k.value(), error = %e, "skipping unreadable outbox entry")
                    }
                }
            }
            Ok(out)
        })
    }

    /// Records a delivery: the entry leaves the outbox and the group remembers the receiver's handle.
    pub fn delivered(
        &self,
        id: u64,
        group: Option<(&str, Option<String>)>,
    ) -> Result<(), StoreError> {
        self.with_db(true, |db| {
            let tx = db.begin_write()?;
            {
                let mut outbox = tx.open_table(OUTBOX)?;
                outbox.remove(id)?;
                if let Some((gid, Some(handle))) = group {
                    tx.open_table(HANDLES)?.insert(gid, handle.as_str())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub fn reschedule(&self, id: u64, entry: &OutboxEntry) -> Result<(), StoreError> {
        self.with_db(true, |db| {
            let tx = db.begin_write()?;
            {
                let mut outbox = tx.open_table(OUTBOX)?;
                outbox.insert(id, record(entry).as_slice())?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Moves an entry from the outbox to the dead letters (same id).
    pub fn dead_letter(&self, id: u64, letter: &DeadLetter) -> Result<(), StoreError> {
        self.with_db(true, |db| {
            let tx = db.begin_write()?;
            {
                let mut outbox = tx.open_table(OUTBOX)?;
                outbox.remove(id)?;
                let mut dead = tx.open_table(DEAD)?;
                dead.insert(id, record(letter).as_slice())?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub fn dead_letters(&self) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        self.with_db(false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(DEAD)?;
            t.iter()?
                .map(|r| {
                    let (k, v) = r?;
                    Ok((k.value(), parse("dead_letters", v.value())?))
                })
                .collect()
        })
    }

    /// Moves a dead letter back into the outbox for immediate delivery; returns its new outbox id.
    pub fn replay(&self, id: u64, now: i64) -> Result<u64, StoreError> {
        self.with_db(true, |db| {
            let tx = db.begin_write()?;
            let new_id;
            {
                let mut dead = tx.open_table(DEAD)?;
                let letter: DeadLetter = match dead.remove(id)? {
                    Some(v) => parse("dead_letters", v.value())?,
                    None => return Err(StoreError::NoSuchDeadLetter(id)),
                };
                let mut meta = tx.open_table(META)?;
                new_id = meta.get("next_id")?.map_or(1, |v| v.value());
                meta.insert("next_id", new_id + 1)?;
                let entry = OutboxEntry {
                    notification: letter.notification,
                    attempts: 0,
                    next_attempt_at: now,
                    enqueued_at: now,
                    last_error: None,
                };
                let mut outbox = tx.open_table(OUTBOX)?;
                outbox.insert(new_id, record(&entry).as_slice())?;
            }
            tx.commit()?;
            Ok(new_id)
        })
    }

    pub fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        self.with_db(false, |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(SILENCES)?;
            t.iter()?.map(|r| parse("silences", r?.1.value())).collect()
        })
    }

    pub fn put_silence(&self, s: &Silence) -> Result<(), StoreError> {
        self.with_db(true, |db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(SILENCES)?;
                t.insert(s.id.as_str(), record(s).as_slice())?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// (outbox entries, dead letters)
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.with_db(false, |db| {
            let tx = db.begin_read()?;
            Ok((tx.open_table(OUTBOX)?.len()?, tx.open_table(DEAD)?.len()?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AlertStatus, AlertSummary, GroupStatus};

    fn note(key: &str) -> Notification {
        Notification {
            receiver: "r".into(),
            group_key: key.into(),
            status: GroupStatus::Firing,
            group_labels: BTreeMap::new(),
            common_labels: BTreeMap::new(),
            common_annotations: BTreeMap::new(),
            alerts: vec![],
            idempotency_key: format!("{key}:firing:1"),
            flapping: false,
            previous: None,
            amends: false,
            created_at: 0,
            scaling: None,
        }
    }

    fn entry(key: &str) -> OutboxEntry {
        OutboxEntry {
            notification: note(key),
            attempts: 0,
            next_attempt_at: 0,
            enqueued_at: 0,
            last_error: None,
        }
    }

    #[test]
    fn outbox_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let ids = s
                .commit_cycle(&CycleWrite {
                    enqueue: vec![entry("a"), entry("b")],
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(ids, vec![1, 2]);
            s.delivered(1, None).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let left: Vec<String> = s
            .outbox()
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.notification.group_key)
            .collect();
        assert_eq!(left, vec!["b"]);
        let ids = s
            .commit_cycle(&CycleWrite {
                enqueue: vec![entry("c")],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ids, vec![3], "ids are never reused");
    }

    #[test]
    fn dead_letters_are_listed_and_replayed_into_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = s
            .commit_cycle(&CycleWrite {
                enqueue: vec![entry("a")],
                ..Default::default()
            })
            .unwrap()[0];
        let e = &s.outbox().unwrap()[0].1;
        s.dead_letter(
            id,
            &DeadLetter {
                notification: e.notification.clone(),
                attempts: 1,
                error: "invalid_payload".into(),
                reason: "permanent".into(),
                dead_at: 5,
                enqueued_at: 0,
            },
        )
        .unwrap();
        assert_eq!(s.counts().unwrap(), (0, 1));
        let new_id = s.replay(id, 10).unwrap();
        assert_eq!(s.counts().unwrap(), (1, 0));
        assert!(new_id > id);
        assert!(matches!(
            s.replay(id, 10),
            Err(StoreError::NoSuchDeadLetter(_))
        ));
    }

    #[test]
    fn notifications_with_infinite_values_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut e = entry("inf");
        e.notification.alerts.push(AlertSummary {
            status: AlertStatus::Firing,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            starts_at: 0,
            ends_at: None,
            correlation_id: "c".into(),
            fingerprint: "f".into(),
            values: [("drain_eta".to_string(), f64::INFINITY)].into(),
        });
        s.commit_cycle(&CycleWrite {
            enqueue: vec![e],
            ..Default::default()
        })
        .unwrap();
        let back = s.outbox().unwrap();
        assert_eq!(
            back[0].1.notification.alerts[0].values["drain_eta"],
            f64::INFINITY
        );
    }

    #[test]
    fn a_closed_database_marks_the_store_down_until_a_probe_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.health().writable);
        // What a failed reopen leaves behind.
        *s.db.write().unwrap() = None;
        let err = s
            .commit_cycle(&CycleWrite {
                enqueue: vec![entry("held")],
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        let down = s.health();
        assert!(!down.writable);
        assert!(
            down.problem
                .as_deref()
                .unwrap()
                .contains("rabbitwatch.redb"),
            "{down:?}"
        );
        let up = s.probe();
        assert!(up.writable, "{up:?}");
        assert!(up.since >= down.since);
        s.commit_cycle(&CycleWrite {
            enqueue: vec![entry("after")],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.counts().unwrap(),
            (1, 0),
            "only what was committed is there"
        );
    }

    #[test]
    fn a_second_daemon_cannot_open_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        assert!(Store::open(dir.path()).is_err());
    }

    #[test]
    fn a_later_cycle_does_not_erase_a_delivered_handle() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let gid = "r\u{0}g";
        let id = s
            .commit_cycle(&CycleWrite {
                groups: [(gid.to_string(), Some(b"{\"sequence\":1}".to_vec()))].into(),
                enqueue: vec![entry("g")],
                ..Default::default()
            })
            .unwrap()[0];
        s.delivered(id, Some((gid, Some("C1:1.0".into())))).unwrap();
        // The engine planned the resolve from its copy, made before the delivery.
        s.commit_cycle(&CycleWrite {
            groups: [(gid.to_string(), Some(b"{\"sequence\":2}".to_vec()))].into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.handle(gid).unwrap().as_deref(), Some("C1:1.0"));
        let groups: BTreeMap<String, serde_json::Value> = s.load_groups().unwrap();
        assert_eq!(groups[gid]["sequence"], 2);
    }

    #[test]
    fn a_forgotten_group_leaves_neither_its_record_nor_its_handle() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (gid, other) = ("r\u{0}g", "r\u{0}h");
        let ids = s
            .commit_cycle(&CycleWrite {
                groups: [
                    (gid.to_string(), Some(b"{\"sequence\":1}".to_vec())),
                    (other.to_string(), Some(b"{\"sequence\":4}".to_vec())),
                ]
                .into(),
                enqueue: vec![entry("g"), entry("h")],
                ..Default::default()
            })
            .unwrap();
        s.delivered(ids[0], Some((gid, Some("C1:1.0".into()))))
            .unwrap();
        s.delivered(ids[1], Some((other, Some("C1:2.0".into()))))
            .unwrap();
        s.commit_cycle(&CycleWrite {
            groups: [(gid.to_string(), None)].into(),
            ..Default::default()
        })
        .unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        let groups: BTreeMap<String, serde_json::Value> = s.load_groups().unwrap();
        assert_eq!(groups.keys().collect::<Vec<_>>(), [other]);
        assert_eq!(s.handle(gid).unwrap(), None);
        assert_eq!(s.handle(other).unwrap().as_deref(), Some("C1:2.0"));
    }

    #[test]
    fn schema_1_handles_move_to_their_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rabbitwatch.redb");
        {
            // A schema-1 file: the handle lived inside the group record.
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                tx.open_table(META)
                    .unwrap()
                    .insert("schema_version", 1)
                    .unwrap();
                let mut g = tx.open_table(GROUPS).unwrap();
                g.insert("r\u{0}g", br#"{"notified":{"f":"firing"},"last_sent_at":5,"sequence":3,"handle":"C1:9.9"}"#.as_slice())
                    .unwrap();
                g.insert(
                    "r\u{0}h",
                    br#"{"notified":{},"last_sent_at":null,"sequence":1,"handle":null}"#.as_slice(),
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.handle("r\u{0}g").unwrap().as_deref(), Some("C1:9.9"));
        assert_eq!(s.handle("r\u{0}h").unwrap(), None);
        let groups: BTreeMap<String, serde_json::Value> = s.load_groups().unwrap();
        assert_eq!(groups["r\u{0}g"]["sequence"], 3);
    }

    #[test]
    fn group_handles_are_remembered_on_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = s
            .commit_cycle(&CycleWrite {
                enqueue: vec![entry("g")],
                ..Default::default()
            })
            .unwrap()[0];
        s.delivered(id, Some(("r\u{0}g", Some("C1:123.4".into()))))
            .unwrap();
        assert_eq!(s.handle("r\u{0}g").unwrap().as_deref(), Some("C1:123.4"));
    }
}
