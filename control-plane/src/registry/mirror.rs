//! The registry's copy of the store's keys, kept by the same list and watch that feed the
//! index: what `weftctl get` is answered from when the store cannot be read (an etcd cluster
//! without quorum), instead of failing. It costs the bytes of the stored values once more.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{Event, KeyValue, Revision};

#[derive(Debug, Default)]
pub struct Mirror {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    items: BTreeMap<String, KeyValue>,
    revision: Revision,
    synced: bool,
    /// When the control plane first saw the store fail since it last answered.
    lost_at: Option<Instant>,
}

/// The mirror's keys under a prefix, and how stale they may be.
#[derive(Debug)]
pub struct StaleListing {
    pub items: Vec<KeyValue>,
    pub revision: Revision,
    /// How long the store has been failing, as far as the control plane has seen.
    pub unreachable_for: Duration,
}

impl Mirror {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent map (every update is one insert
        // or remove), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// After a complete listing: the store answered.
    pub fn reset(&self, items: &[KeyValue], revision: Revision) {
        let mut s = self.state();
        s.items = items
            .iter()
            .map(|kv| (kv.key.clone(), kv.clone()))
            .collect();
        s.revision = revision;
        s.synced = true;
        s.lost_at = None;
    }

    pub fn apply(&self, events: &[Event]) {
        let mut s = self.state();
        for event in events {
            s.revision = s.revision.max(event.revision());
            match event {
                Event::Put(kv) => {
                    s.items.insert(kv.key.clone(), kv.clone());
                }
                Event::Delete { key, .. } => {
                    s.items.remove(key);
                }
            }
        }
    }

    /// The store failed a request (the first failure since it last answered starts the clock).
    pub fn lost(&self) {
        let mut s = self.state();
        if s.lost_at.is_none() {
            s.lost_at = Some(Instant::now());
        }
    }

    /// The store answered a request.
    pub fn reachable(&self) {
        self.state().lost_at = None;
    }

    /// The keys under `prefix`, or `None` before the first listing (nothing to answer from).
    pub fn list(&self, prefix: &str) -> Option<StaleListing> {
        let s = self.state();
        if !s.synced {
            return None;
        }
        Some(StaleListing {
            items: s
                .items
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, kv)| kv.clone())
                .collect(),
            revision: s.revision,
            unreachable_for: s.lost_at.map_or(Duration::ZERO, |t| t.elapsed()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kv(key: &str, rev: Revision) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: b"{}".to_vec(),
            mod_revision: rev,
            create_revision: rev,
            lease: None,
        }
    }

    #[test]
    fn follows_list_and_events_and_times_the_outage() {
        let m = Mirror::default();
        assert!(m.list("").is_none(), "nothing before the first listing");
        m.reset(&[kv("services/a/x", 3), kv("routes/a/y", 4)], 4);
        m.apply(&[
            Event::Put(kv("services/a/z", 5)),
            Event::Delete {
                key: "services/a/x".into(),
                revision: 6,
            },
        ]);
        let l = m.list("services/").unwrap();
        assert_eq!(l.revision, 6);
        assert_eq!(
            l.items.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
            ["services/a/z"]
        );
        assert_eq!(l.unreachable_for, Duration::ZERO);
        m.lost();
        std::thread::sleep(Duration::from_millis(20));
        m.lost(); // the clock runs from the first failure
        assert!(m.list("").unwrap().unreachable_for >= Duration::from_millis(20));
        m.reachable();
        assert_eq!(m.list("").unwrap().unreachable_for, Duration::ZERO);
    }
}
