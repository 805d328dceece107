//! [`MemoryStore`]: the embedded store, used when no etcd is configured, so one machine runs a
//! mesh with nothing installed. It keeps etcd's semantics (one store-wide revision bumped per
//! write transaction, `mod_revision` compares, leases, watches from a past revision) so the
//! registry cannot tell the two stores apart.
//!
//! Durability: with [`MemoryStore::open`], every change of the revision is saved to a JSON
//! snapshot file (atomically, mode 0600) *before* the write returns, so an acknowledged write
//! survives a crash. Concurrent writers share one file write (group commit): a writer waiting for
//! the file finds its revision already saved by the write before it. Keys attached to a lease are
//! **not** saved: after a restart their registrants re-register, as they would after the lease
//! expired. Reopening bumps the revision by one (the leased keys vanish "at" that revision) and
//! history starts there, so a watch from before the restart gets [`StoreError::Compacted`].
//!
//! Watches replay a bounded history (the last [`HISTORY_REVISIONS`] revisions) and then follow a
//! broadcast channel; a watcher that falls behind the channel catches up from the history, and
//! gets [`StoreError::Compacted`] only when the history no longer reaches back far enough.
//!
//! Leases expire in a background task that sleeps until the earliest deadline; it holds only a
//! `Weak` reference and ends when the store is dropped.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use super::{
    Event, EventStream, KeyValue, LeaseId, Listing, Revision, Store, StoreError, Txn, TxnOutcome,
};

mod snapshot;
mod state;
#[cfg(test)]
mod tests;

pub use snapshot::SnapshotError;
use snapshot::{Snapshot, write_atomic};
use state::{Batch, Entry, Lease, State};

/// How many revisions of events are kept for watches that start in the past.
pub const HISTORY_REVISIONS: usize = 10_000;
/// Revisions buffered per live watcher before it must catch up from the history.
const LIVE_BUFFER: usize = 1024;
/// etcd's largest lease TTL; beyond it `Instant` arithmetic could overflow.
const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;

/// The embedded store. See the module docs for durability and what is not persisted.
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the lease-expiry task when a new deadline may be the earliest, or the store is gone.
    lease_wake: Arc<Notify>,
    file: Option<SnapshotFile>,
}

struct SnapshotFile {
    path: PathBuf,
    /// The revision last saved; the lock serializes file writes.
    saved: tokio::sync::Mutex<Revision>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent (every mutation is a single
        // insert/remove), so the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Saves the snapshot if `revision` is not saved yet. Waiting writers coalesce: whoever gets
    /// the file lock saves the latest state, covering everyone queued behind it.
    async fn persist(&self, revision: Revision) -> Result<(), StoreError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut saved = file.saved.lock().await;
        if *saved >= revision {
            return Ok(());
        }
        let snapshot = self.lock().snapshot();
        let path = file.path.clone();
        let latest = snapshot.revision;
        tokio::task::spawn_blocking(move || write_atomic(&path, &snapshot.encode()))
            .await
            .map_err(|e| StoreError::Other(format!("snapshot writer task: {e}")))?
            .map_err(|e| {
                tracing::warn!(error = %e, "memory store: snapshot not saved");
                StoreError::Other(format!(
                    "{e} (the write is applied in memory but not saved)"
                ))
            })?;
        *saved = latest;
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the expiry task see the store is gone and end.
        self.lease_wake.notify_one();
    }
}

impl MemoryStore {
    /// A store with no file: everything is lost when it is dropped.
    pub fn new() -> Self {
        Self::with_state(State::new(), None)
    }

    /// A store saved to the JSON snapshot at `path`: loaded now if the file exists (an unreadable
    /// or corrupt file is an error, never silently replaced), and written before each write
    /// returns. Blocking file I/O: call at startup.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SnapshotError> {
        let path = path.as_ref().to_owned();
        let mut state = State::new();
        if let Some(saved) = Snapshot::load(&path)? {
            // Leased keys were not saved: they disappear at a new revision, so nothing that saw
            // the old revision can believe it is still current.
            state.revision = saved.revision + 1;
            for k in saved.keys {
                state.kvs.insert(
                    k.key,
                    Entry {
                        value: k.value,
                        mod_revision: k.mod_revision,
                        create_revision: k.create_revision,
                        lease: None,
                    },
                );
            }
            tracing::info!(path = %path.display(), revision = state.revision, keys = state.kvs.len(), "memory store: snapshot loaded");
        }
        state.first_available = state.revision + 1;
        // Saving now proves the path is writable before anyone relies on it.
        write_atomic(&path, &state.snapshot().encode())?;
        let saved = state.revision;
        Ok(Self::with_state(
            state,
            Some(SnapshotFile {
                path,
                saved: tokio::sync::Mutex::new(saved),
            }),
        ))
    }

    fn with_state(state: State, file: Option<SnapshotFile>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                lease_wake: Arc::new(Notify::new()),
                file,
            }),
        }
    }

    /// Forgets the events of revisions before `revision`: a watch from an earlier revision then
    /// fails with [`StoreError::Compacted`]. As in etcd, compacting a future revision is an error.
    pub fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut st = self.shared.lock();
        if revision > st.revision {
            return Err(StoreError::Other(format!(
                "compact {revision}: a future revision (current {})",
                st.revision
            )));
        }
        let keep = st.history.partition_point(|b| b.revision < revision);
        st.history.drain(..keep);
        st.first_available = st.first_available.max(revision);
        Ok(())
    }

    /// The current store revision.
    pub fn revision(&self) -> Revision {
        self.shared.lock().revision
    }

    /// Expires due leases, then runs `f`; saves the snapshot if the revision moved.
    async fn mutate<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, StoreError> {
        let (out, before, after) = {
            let mut st = self.shared.lock();
            let before = st.revision;
            st.expire_due(Instant::now());
            let out = f(&mut st);
            (out, before, st.revision)
        };
        if after != before {
            self.shared.persist(after).await?;
        }
        Ok(out)
    }

    #[cfg(test)]
    fn downgrade(&self) -> Weak<Shared> {
        Arc::downgrade(&self.shared)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("MemoryStore")
            .field("file", &self.shared.file.as_ref().map(|f| &f.path))
            .field("revision", &st.revision)
            .field("keys", &st.kvs.len())
            .field("leases", &st.leases.len())
            .finish()
    }
}

/// Sleeps until the earliest lease deadline (or a wake-up), expires what is due, repeats; ends
/// when the store is gone.
async fn expire_leases(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let (before, after, next) = {
                let mut st = shared.lock();
                let before = st.revision;
                st.expire_due(Instant::now());
                (before, st.revision, st.deadlines.first().map(|d| d.0))
            };
            if after != before
                && let Err(e) = shared.persist(after).await
            {
                tracing::warn!(error = %e, "memory store: saving lease expiry failed");
            }
            next
        };
        // `notify_one` stores a permit when nobody waits, so a wake-up sent between computing
        // `next` and here is not lost.
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// One watcher: replays `backlog` (history), then follows `live`.
struct Watcher {
    shared: Weak<Shared>,
    prefix: String,
    next: Revision,
    backlog: VecDeque<Arc<Batch>>,
    live: broadcast::Receiver<Arc<Batch>>,
    done: bool,
}

impl Watcher {
    async fn next_events(&mut self) -> Option<Result<Vec<Event>, StoreError>> {
        if self.done {
            return None;
        }
        loop {
            let batch = match self.backlog.pop_front() {
                Some(b) => b,
                None => match self.live.recv().await {
                    Ok(b) => b,
                    Err(RecvError::Lagged(_)) => {
                        if let Err(e) = self.catch_up() {
                            self.done = true;
                            return Some(Err(e));
                        }
                        continue;
                    }
                    Err(RecvError::Closed) => {
                        self.done = true;
                        return Some(Err(StoreError::Unavailable(
                            "memory store closed".to_owned(),
                        )));
                    }
                },
            };
            if batch.revision < self.next {
                continue;
            }
            self.next = batch.revision + 1;
            let events: Vec<Event> = batch
                .events
                .iter()
                .filter(|e| e.key().starts_with(&self.prefix))
                .cloned()
                .collect();
            if !events.is_empty() {
                return Some(Ok(events));
            }
        }
    }

    /// After falling behind the live channel: replay from the history, if it still reaches.
    fn catch_up(&mut self) -> Result<(), StoreError> {
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| StoreError::Unavailable("memory store closed".to_owned()))?;
        let st = shared.lock();
        if self.next < st.first_available {
            return Err(StoreError::Compacted {
                requested: self.next,
                compacted: st.first_available,
            });
        }
        // Under the same lock as the history read, so no revision falls between the two.
        self.backlog = st.history_from(self.next);
        self.live = st.live.subscribe();
        Ok(())
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        Box::pin(async move {
            let st = self.shared.lock();
            Ok(st.kvs.get(key).map(|e| KeyValue {
                key: key.to_owned(),
                value: e.value.clone(),
                mod_revision: e.mod_revision,
                create_revision: e.create_revision,
                lease: e.lease,
            }))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(async move {
            let st = self.shared.lock();
            let items = st
                .kvs
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, e)| KeyValue {
                    key: k.clone(),
                    value: e.value.clone(),
                    mod_revision: e.mod_revision,
                    create_revision: e.create_revision,
                    lease: e.lease,
                })
                .collect();
            Ok(Listing {
                revision: st.revision,
                items,
            })
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, StoreError>> {
        Box::pin(async move { self.mutate(|st| st.apply(txn)).await? })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from: Revision,
    ) -> BoxFuture<'a, Result<EventStream, StoreError>> {
        Box::pin(async move {
            let st = self.shared.lock();
            // As in etcd, a start revision of 0 (or less) means "from the next write".
            let from = if from <= 0 { st.revision + 1 } else { from };
            if from < st.first_available {
                return Err(StoreError::Compacted {
                    requested: from,
                    compacted: st.first_available,
                });
            }
            let watcher = Watcher {
                shared: Arc::downgrade(&self.shared),
                prefix: prefix.to_owned(),
                next: from,
                backlog: st.history_from(from),
                // Subscribed under the lock the history was read under: no gap, no overlap.
                live: st.live.subscribe(),
                done: false,
            };
            drop(st);
            let stream = futures_util::stream::unfold(watcher, |mut w| async move {
                w.next_events().await.map(|item| (item, w))
            });
            Ok(Box::pin(stream) as EventStream)
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(async move {
            let secs = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1);
            if secs > MAX_LEASE_TTL_SECS {
                return Err(StoreError::Other(format!(
                    "lease TTL {secs}s is above the maximum {MAX_LEASE_TTL_SECS}s"
                )));
            }
            let ttl = Duration::from_secs(secs);
            let (id, spawn) = self
                .mutate(|st| {
                    let id = LeaseId(st.next_lease);
                    st.next_lease += 1;
                    let deadline = Instant::now() + ttl;
                    st.leases.insert(
                        id,
                        Lease {
                            ttl,
                            deadline,
                            keys: BTreeSet::new(),
                        },
                    );
                    st.deadlines.insert((deadline, id));
                    // Spawned on first use, so `new()` needs no runtime.
                    let spawn = !st.expiry_task;
                    st.expiry_task = true;
                    (id, spawn)
                })
                .await?;
            if spawn {
                tokio::spawn(expire_leases(
                    Arc::downgrade(&self.shared),
                    self.shared.lease_wake.clone(),
                ));
            }
            self.shared.lease_wake.notify_one();
            Ok(id)
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.mutate(|st| {
                let l = st
                    .leases
                    .get_mut(&lease)
                    .ok_or(StoreError::LeaseNotFound(lease))?;
                let old = l.deadline;
                l.deadline = Instant::now() + l.ttl;
                let new = l.deadline;
                // A later deadline never needs the expiry task woken: it wakes at the old one
                // and finds nothing due.
                st.deadlines.remove(&(old, lease));
                st.deadlines.insert((new, lease));
                Ok(())
            })
            .await?
        })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.mutate(|st| {
                st.remove_lease(lease);
            })
            .await
        })
    }
}
