//! The memory store's state machine: keys, leases, revisions and the event history, with no
//! I/O and no async, so every rule of etcd's data model lives here and is tested directly.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::snapshot::{SavedKey, Snapshot};
use super::{HISTORY_REVISIONS, LIVE_BUFFER};
use crate::store::{Compare, Event, KeyValue, LeaseId, Op, Revision, StoreError, Txn, TxnOutcome};

pub(super) struct State {
    pub(super) revision: Revision,
    /// The oldest revision a watch may start from.
    pub(super) first_available: Revision,
    pub(super) kvs: BTreeMap<String, Entry>,
    pub(super) leases: HashMap<LeaseId, Lease>,
    pub(super) deadlines: BTreeSet<(Instant, LeaseId)>,
    pub(super) next_lease: i64,
    pub(super) history: VecDeque<Arc<Batch>>,
    pub(super) live: broadcast::Sender<Arc<Batch>>,
    pub(super) expiry_task: bool,
}

pub(super) struct Entry {
    pub(super) value: Vec<u8>,
    pub(super) mod_revision: Revision,
    pub(super) create_revision: Revision,
    pub(super) lease: Option<LeaseId>,
}

pub(super) struct Lease {
    pub(super) ttl: Duration,
    pub(super) deadline: Instant,
    pub(super) keys: BTreeSet<String>,
}

/// The events of one revision.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) revision: Revision,
    pub(super) events: Vec<Event>,
}

impl State {
    pub(super) fn new() -> Self {
        // Lease IDs start from the clock so a registrant holding an ID from before a restart
        // cannot renew someone else's new lease.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| (d.as_micros() as i64) & 0x3fff_ffff_ffff_ffff);
        Self {
            revision: 0,
            first_available: 1,
            kvs: BTreeMap::new(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_lease: seed.max(1),
            history: VecDeque::new(),
            live: broadcast::channel(LIVE_BUFFER).0,
            expiry_task: false,
        }
    }

    /// Records the events of one new revision; no events, no new revision (as in etcd).
    pub(super) fn commit(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.revision += 1;
        let batch = Arc::new(Batch {
            revision: self.revision,
            events,
        });
        if self.history.len() == HISTORY_REVISIONS
            && let Some(old) = self.history.pop_front()
        {
            self.first_available = self.first_available.max(old.revision + 1);
        }
        self.history.push_back(batch.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(batch);
    }

    pub(super) fn put(
        &mut self,
        rev: Revision,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Event {
        let old = self.kvs.get(key).and_then(|e| e.lease);
        if let Some(old) = old.filter(|old| Some(*old) != lease)
            && let Some(l) = self.leases.get_mut(&old)
        {
            l.keys.remove(key);
        }
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.insert(key.to_owned());
        }
        let create_revision = self.kvs.get(key).map_or(rev, |e| e.create_revision);
        self.kvs.insert(
            key.to_owned(),
            Entry {
                value: value.clone(),
                mod_revision: rev,
                create_revision,
                lease,
            },
        );
        Event::Put(KeyValue {
            key: key.to_owned(),
            value,
            mod_revision: rev,
            create_revision,
            lease,
        })
    }

    pub(super) fn delete(&mut self, rev: Revision, key: &str) -> Option<Event> {
        let entry = self.kvs.remove(key)?;
        if let Some(l) = entry.lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
        Some(Event::Delete {
            key: key.to_owned(),
            revision: rev,
        })
    }

    pub(super) fn apply(&mut self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        // etcd refuses a txn that puts a key twice, or puts and deletes one key.
        let mut puts = BTreeSet::new();
        for op in &txn.ops {
            if let Op::Put { key, .. } = op
                && !puts.insert(key.as_str())
            {
                return Err(StoreError::Other(format!(
                    "key {key:?} put twice in one txn"
                )));
            }
        }
        for op in &txn.ops {
            if let Op::Delete { key } = op
                && puts.contains(key.as_str())
            {
                return Err(StoreError::Other(format!(
                    "key {key:?} both put and deleted in one txn"
                )));
            }
        }
        for Compare::ModRevision { key, revision } in &txn.compare {
            let current = self.kvs.get(key).map_or(0, |e| e.mod_revision);
            if current != *revision {
                return Ok(TxnOutcome::Conflict);
            }
        }
        // Checked after the compares, as etcd does: a failed compare never reports the lease.
        for op in &txn.ops {
            if let Op::Put {
                lease: Some(id), ..
            } = op
                && !self.leases.contains_key(id)
            {
                return Err(StoreError::LeaseNotFound(*id));
            }
        }
        let rev = self.revision + 1;
        let mut events = Vec::with_capacity(txn.ops.len());
        for op in txn.ops {
            match op {
                Op::Put { key, value, lease } => events.push(self.put(rev, &key, value, lease)),
                Op::Delete { key } => events.extend(self.delete(rev, &key)),
            }
        }
        self.commit(events);
        Ok(TxnOutcome::Committed(self.revision))
    }

    /// Removes a lease and its keys (one revision, if it had keys). False if there was none.
    pub(super) fn remove_lease(&mut self, id: LeaseId) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        self.deadlines.remove(&(lease.deadline, id));
        let rev = self.revision + 1;
        let events = lease
            .keys
            .iter()
            .filter_map(|key| self.delete(rev, key))
            .collect();
        self.commit(events);
        true
    }

    pub(super) fn expire_due(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            tracing::debug!(lease = %id, "memory store: lease expired");
            self.remove_lease(id);
        }
    }

    pub(super) fn history_from(&self, from: Revision) -> VecDeque<Arc<Batch>> {
        // Batches are in revision order; skip the older ones without scanning them all.
        let skip = self.history.partition_point(|b| b.revision < from);
        self.history.iter().skip(skip).cloned().collect()
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            revision: self.revision,
            keys: self
                .kvs
                .iter()
                .filter(|(_, e)| e.lease.is_none())
                .map(|(key, e)| SavedKey {
                    key: key.clone(),
                    value: e.value.clone(),
                    mod_revision: e.mod_revision,
                    create_revision: e.create_revision,
                })
                .collect(),
        }
    }
}
