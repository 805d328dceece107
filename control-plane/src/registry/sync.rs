//! Keeps the [`Index`] equal to the store: list, then watch from the listed revision (no gap);
//! on compaction or a lost watch, list again and let the index publish only the differences.
//! While the store is unreachable the last published snapshot keeps being served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use weft_proto::mesh::v1 as pb;

use super::codec;
use super::{Index, Mirror, Published};
use crate::metrics::{Metrics, OpLabels};
use crate::model::DefaultInbound;
use crate::store::{Store, StoreError};

/// How long a burst of store events is gathered before one snapshot is published. Short: a
/// registration must reach proxies well within 100 ms.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// Backoff bounds while the store is unreachable.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Registry {
    store: Arc<dyn Store>,
    index: Index,
    tx: watch::Sender<Arc<Published>>,
    metrics: Arc<Metrics>,
    revision: i64,
    /// The store revision the index reflects, updated even when nothing visible changed.
    revision_tx: watch::Sender<i64>,
    /// The TrustBundle resource as the CA directory says (a root rotation changes it).
    bundles: Option<watch::Receiver<pb::TrustBundle>>,
    /// The raw keys, for answering reads while the store is unreachable.
    mirror: Arc<Mirror>,
}

impl Registry {
    /// The receiver gets a new [`Published`] after every change; it starts unsynced.
    /// `default_inbound` is what services that set no `spec.defaultInboundPolicy` get.
    pub fn new(
        store: Arc<dyn Store>,
        trust_bundle: pb::TrustBundle,
        default_inbound: DefaultInbound,
        metrics: Arc<Metrics>,
    ) -> (Self, watch::Receiver<Arc<Published>>) {
        let (tx, rx) = watch::channel(Arc::new(Published::default()));
        let mut index = Index::new(trust_bundle);
        index.set_default_inbound(default_inbound);
        let registry = Registry {
            store,
            index,
            tx,
            metrics,
            revision: 0,
            revision_tx: watch::channel(0).0,
            bundles: None,
            mirror: Arc::new(Mirror::default()),
        };
        (registry, rx)
    }

    /// Publishes each new TrustBundle from `bundles` (store reachable or not).
    pub fn following_trust_bundle(mut self, bundles: watch::Receiver<pb::TrustBundle>) -> Self {
        self.bundles = Some(bundles);
        self
    }

    /// Takes the latest bundle into the index and publishes it.
    fn bundle_changed(&mut self, bundles: &mut watch::Receiver<pb::TrustBundle>) {
        let bundle = bundles.borrow_and_update().clone();
        info!(
            roots = bundle.roots.len(),
            renew_early = !bundle.signing_key_id.is_empty(),
            "publishing a new trust bundle"
        );
        self.index.set_trust_bundle(bundle);
        let synced = self.tx.borrow().synced;
        self.publish(Instant::now(), synced);
    }

    /// Follows the store revision the index reflects (tests and `wait_synced` use it).
    pub fn revisions(&self) -> watch::Receiver<i64> {
        self.revision_tx.subscribe()
    }

    /// The store's keys as this registry last saw them.
    pub fn mirror(&self) -> Arc<Mirror> {
        self.mirror.clone()
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = RETRY_MIN;
        loop {
            let outcome = tokio::select! {
                r = self.sync_once() => r,
                _ = shutdown.changed() => return,
            };
            let err = match outcome {
                Ok(()) => {
                    backoff = RETRY_MIN;
                    continue;
                }
                Err(e) => e,
            };
            match &err {
                StoreError::Compacted { .. } => {
                    info!(error = %err, "watch fell behind compaction; listing again");
                    continue;
                }
                _ => {
                    self.mirror.lost();
                    warn!(error = %err, retry_in = ?backoff, "store unreachable; serving the last state")
                }
            }
            let mut bundles = self.bundles.clone();
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    Ok(()) = changed(&mut bundles) => {
                        if let Some(b) = bundles.as_mut() { self.bundle_changed(b) }
                    }
                    _ = shutdown.changed() => return,
                }
            }
            self.bundles = bundles;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// One list + watch cycle. Returns when the watch ends (the caller lists again).
    async fn sync_once(&mut self) -> Result<(), StoreError> {
        let listed_at = Instant::now();
        let listing = self.store.list("").await.inspect_err(|_| {
            self.store_error("list");
        })?;
        self.metrics.registry_resyncs.inc();
        self.mirror.reset(&listing.items, listing.revision);
        let changes: Vec<_> = listing
            .items
            .iter()
            .filter_map(|kv| codec::decode_put(kv, &self.metrics))
            .collect();
        debug!(
            revision = listing.revision,
            objects = changes.len(),
            "listed the store"
        );
        let mut bundles = self.bundles.clone();
        if let Some(b) = bundles.as_mut() {
            self.index.set_trust_bundle(b.borrow_and_update().clone());
        }
        self.index.reset(changes);
        self.revision = listing.revision;
        self.publish(listed_at, true);

        let mut events = self
            .store
            .watch("", listing.revision + 1)
            .await
            .inspect_err(|_| self.store_error("watch"))?;
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                Ok(()) = changed(&mut bundles) => {
                    if let Some(b) = bundles.as_mut() { self.bundle_changed(b) }
                    continue;
                }
            };
            let Some(batch) = next else {
                self.store_error("watch");
                return Err(StoreError::Unavailable("the watch ended".into()));
            };
            let first_at = Instant::now();
            self.apply(batch?);
            // Gather the rest of the burst, then publish once.
            let deadline = tokio::time::Instant::now() + DEBOUNCE;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    more = events.next() => match more {
                        Some(batch) => self.apply(batch?),
                        None => break,
                    },
                }
            }
            self.publish(first_at, true);
        }
    }

    fn apply(&mut self, batch: Vec<crate::store::Event>) {
        self.mirror.apply(&batch);
        for event in batch {
            self.revision = self.revision.max(event.revision());
            if let Some(change) = codec::decode_event(&event, &self.metrics) {
                self.index.apply(change);
            }
        }
    }

    fn publish(&mut self, observed_at: Instant, synced: bool) {
        let was_synced = self.tx.borrow().synced;
        let snapshot = self.index.flush();
        let unchanged = was_synced && snapshot.generation == self.tx.borrow().snapshot.generation;
        self.metrics.registry_revision.set(self.revision);
        if !unchanged {
            self.tx.send_replace(Arc::new(Published {
                snapshot,
                observed_at: Some(observed_at),
                revision: self.revision,
                synced,
            }));
        }
        self.metrics
            .registry_event_lag
            .observe(observed_at.elapsed().as_secs_f64());
        self.revision_tx.send_replace(self.revision);
    }

    fn store_error(&self, op: &'static str) {
        self.metrics
            .store_errors
            .get_or_create(&OpLabels { op })
            .inc();
    }
}

/// Resolves when `bundles` has a new value; never when there is none to follow.
async fn changed(
    bundles: &mut Option<watch::Receiver<pb::TrustBundle>>,
) -> Result<(), watch::error::RecvError> {
    match bundles {
        Some(b) => b.changed().await,
        None => std::future::pending().await,
    }
}
