//! etcd watches that outlive their gRPC stream.
//!
//! A task owns the etcd watch and forwards events through a bounded channel (back-pressure reaches
//! etcd through HTTP/2 flow control; etcd buffers a slow watcher without loss). It remembers the
//! next revision it owes the consumer. When the stream breaks (etcd restart, leader loss, endpoint
//! death) it opens a new watch from that revision on any endpoint, with backoff, so the consumer
//! sees no gap and no duplicate. It gives up with [`StoreError::Unavailable`] after
//! [`EtcdConfig::watch_resume_timeout`](super::EtcdConfig::watch_resume_timeout), and ends with
//! [`StoreError::Compacted`] when etcd no longer has the revision it needs.
//!
//! Deliberate options: `progress_notify` is on, because etcd's progress notifications (sent only
//! to watchers that are caught up) let the task advance its resume revision on a quiet prefix, so
//! a resume after a long quiet spell is not refused as compacted. `prev_kv` is off: the contract's
//! `Delete` event carries no old value, and it would double the bytes of every update.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::{CallError, Inner, Retry};
use crate::store::{Event, EventStream, Revision, StoreError};

/// Batches buffered between the task and a slow consumer.
const BUFFER: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

type Item = Result<Vec<Event>, StoreError>;

/// Opens the watch (trying each endpoint) and hands it to a task.
pub(super) async fn start(
    inner: Arc<Inner>,
    prefix: String,
    from: Revision,
) -> Result<EventStream, StoreError> {
    let next = if from > 0 {
        from
    } else {
        // "From now" must be a concrete revision, or a resume could not say where to continue.
        let key = inner.config.prefix.clone();
        let resp = inner
            .call("watch (read revision)", Retry::Always, |mut c| {
                let key = key.clone();
                async move {
                    c.get(key, Some(GetOptions::new().with_keys_only().with_limit(1)))
                        .await
                }
            })
            .await?;
        resp.header().map_or(0, |h| h.revision()) + 1
    };
    let full = inner.full_key(&prefix);
    let stream = open(&inner, &full, next)
        .await
        .map_err(|why| StoreError::Unavailable(format!("watch {prefix:?}: {why}")))?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let span = tracing::info_span!("etcd_watch", prefix = %prefix);
    let task = WatchTask {
        inner,
        prefix,
        full,
        next,
        tx,
    };
    tokio::spawn(task.run(stream).instrument(span));
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Box::pin(events))
}

/// A new etcd watch from `next`, on the current endpoint or the next that answers; returns
/// after etcd confirmed it was created.
async fn open(inner: &Inner, full: &str, next: Revision) -> Result<WatchStream, String> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(next)
        .with_progress_notify();
    let result = inner
        .call("watch", Retry::Always, |mut c| {
            let (full, options) = (full.to_owned(), options.clone());
            async move {
                let mut stream = c.watch(full, Some(options)).await?;
                // Wait for "created" so a dead endpoint fails here, inside the request timeout.
                match stream.message().await? {
                    Some(resp) if resp.created() => Ok((stream, resp)),
                    Some(_) | None => Err(etcd_client::Error::WatchError(
                        "the watch was not created".to_owned(),
                    )),
                }
            }
        })
        .await;
    match result {
        // A created response can already carry the cancellation (e.g. compacted); the task
        // reads that from the next message.
        Ok((stream, _created)) => Ok(stream),
        Err(CallError::Unavailable(m)) => Err(m),
        Err(CallError::Rejected(e)) => Err(e.to_string()),
        Err(CallError::Invalid(e)) => Err(e.to_string()),
    }
}

struct WatchTask {
    inner: Arc<Inner>,
    prefix: String,
    full: String,
    /// The first revision not yet delivered.
    next: Revision,
    tx: mpsc::Sender<Item>,
}

/// What one etcd response means for the consumer.
enum Step {
    Deliver(Vec<Event>),
    Nothing,
    End(StoreError),
    Broken(String),
}

impl WatchTask {
    async fn run(mut self, mut stream: WatchStream) {
        loop {
            let broken = loop {
                let msg = tokio::select! {
                    msg = stream.message() => msg,
                    () = self.tx.closed() => return,
                };
                let step = match msg {
                    Ok(Some(resp)) => self.step(&resp),
                    Ok(None) => Step::Broken("etcd closed the watch stream".to_owned()),
                    Err(e) => Step::Broken(e.to_string()),
                };
                match step {
                    Step::Deliver(events) => {
                        if self.tx.send(Ok(events)).await.is_err() {
                            return;
                        }
                    }
                    Step::Nothing => {}
                    Step::End(e) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                    Step::Broken(why) => break why,
                }
            };
            tracing::warn!(next = self.next, reason = %broken, "etcd watch broken; resuming");
            match self.resume(&broken).await {
                Some(s) => {
                    tracing::info!(next = self.next, "etcd watch resumed");
                    stream = s;
                }
                None => return,
            }
        }
    }

    /// Reopens the watch from `next`, with backoff, until the resume timeout.
    async fn resume(&self, broken: &str) -> Option<WatchStream> {
        let deadline = Instant::now() + self.inner.config.watch_resume_timeout;
        let mut backoff = BACKOFF_MIN;
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.tx.closed() => return None,
            }
            match open(&self.inner, &self.full, self.next).await {
                Ok(stream) => return Some(stream),
                Err(why) if Instant::now() + backoff >= deadline => {
                    let err = StoreError::Unavailable(format!(
                        "watch {:?} lost at revision {} ({broken}); resuming failed for {:?}: {why}",
                        self.prefix, self.next, self.inner.config.watch_resume_timeout
                    ));
                    let _ = self.tx.send(Err(err)).await;
                    return None;
                }
                Err(why) => {
                    tracing::debug!(%why, "etcd watch resume failed; retrying");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn step(&mut self, resp: &WatchResponse) -> Step {
        if resp.compact_revision() > 0 {
            return Step::End(StoreError::Compacted {
                requested: self.next,
                compacted: resp.compact_revision(),
            });
        }
        if resp.canceled() {
            // e.g. "etcdserver: no leader": another member may serve it.
            return Step::Broken(format!("etcd canceled the watch: {}", resp.cancel_reason()));
        }
        if resp.created() {
            return Step::Nothing;
        }
        if resp.events().is_empty() {
            // A progress notification: every event up to the header revision was sent.
            if let Some(h) = resp.header() {
                self.next = self.next.max(h.revision() + 1);
            }
            return Step::Nothing;
        }
        let mut events = Vec::with_capacity(resp.events().len());
        let mut last = self.next - 1;
        for e in resp.events() {
            let Some(kv) = e.kv() else { continue };
            let revision = kv.mod_revision();
            // After a resume etcd replays from `next`; anything older was delivered already.
            if revision < self.next {
                continue;
            }
            // A delete's kv is a tombstone with version 0 (`Event::event_type` panics on an
            // unknown type, which a network peer could send; the version cannot mislead).
            let event = if kv.version() == 0 {
                match self.inner.relative_key(kv.key()) {
                    Ok(key) => Event::Delete { key, revision },
                    Err(e) => return Step::End(e),
                }
            } else {
                match self.inner.key_value(kv) {
                    Ok(kv) => Event::Put(kv),
                    Err(e) => return Step::End(e),
                }
            };
            last = last.max(revision);
            events.push(event);
        }
        self.next = last + 1;
        if events.is_empty() {
            Step::Nothing
        } else {
            Step::Deliver(events)
        }
    }
}
