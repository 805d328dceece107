//! [`EtcdStore`]: the [`Store`] over an etcd v3 cluster, for production.
//!
//! Keys are stored as `prefix + key`; everything returned is relative to the prefix.
//!
//! **Endpoints.** etcd-client's balanced channel does not route around a dead endpoint, so the
//! store builds one client per endpoint (clients connect lazily: building them needs no etcd) and
//! sends each request to the *current* endpoint. A transport failure, a timeout or `UNAVAILABLE`
//! moves the request to the next endpoint (each at most once per request), and whichever endpoint
//! answers becomes current. When none answers the request fails with
//! [`StoreError::Unavailable`] naming every endpoint tried. Every attempt is bounded by
//! [`EtcdConfig::request_timeout`], so a blackholed endpoint costs bounded time.
//!
//! **Retries of writes.** Reads, lease grants (a duplicate lease just expires), keep-alives and
//! revokes are retried freely. A txn is retried on another endpoint only when the failure proves
//! it was never sent (the connection could not be made). Before sending a txn to an endpoint that
//! has not answered recently, the store probes it with a read, so a dead or blackholed endpoint
//! is skipped before the txn is risked. A txn that fails after it may have been sent returns
//! `Unavailable` ("outcome unknown"): the caller re-reads and retries (its compares then tell
//! whether the first attempt landed).
//!
//! **Watches** are resumed inside the store: see `etcd/watch.rs`.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Client, CompareOp, ConnectOptions, GetOptions, TxnOp};
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::{
    Compare, EventStream, KeyValue, LeaseId, Listing, Op, Revision, Store, StoreError, Txn,
    TxnOutcome,
};

mod watch;

/// How long an answer from an endpoint vouches for it: a txn sent within this time of the last
/// answer skips the probe.
const VERIFIED_FOR: Duration = Duration::from_secs(10);
/// Keys per page when listing, so a large registry never hits the 4 MiB gRPC message limit.
const LIST_PAGE: i64 = 1000;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `http://10.0.0.1:2379`. Requests go to one at a
    /// time and move to the next on failure; list every member.
    pub endpoints: Vec<String>,
    /// Prepended to every key; the store never reads or writes outside it. Default `/weft/`.
    pub prefix: String,
    /// Bound on one request to one endpoint (and on establishing a watch there). Default 5 s.
    pub request_timeout: Duration,
    /// Bound on opening a TCP connection to one endpoint. Default 2 s.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval while a stream (watch, keep-alive) is open; detects a
    /// silently dead connection. etcd refuses pings more often than every 5 s. Default 10 s.
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may go unanswered before the connection is declared dead.
    /// Default 5 s.
    pub keep_alive_timeout: Duration,
    /// How long a broken watch keeps trying to resume (with backoff, on any endpoint) before its
    /// stream ends with [`StoreError::Unavailable`]. Default 60 s.
    pub watch_resume_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/weft/".to_owned(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            watch_resume_timeout: Duration::from_secs(60),
        }
    }
}

/// The etcd-backed store. Cheap to share behind an `Arc`.
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: EtcdConfig,
    endpoints: Vec<Endpoint>,
    /// Index of the endpoint that answered last; requests start there.
    current: AtomicUsize,
}

struct Endpoint {
    url: String,
    client: Client,
    last_ok: Mutex<Option<Instant>>,
}

/// Why a request failed.
#[derive(Debug)]
enum CallError {
    /// No endpoint answered; the message names each endpoint and its failure.
    Unavailable(String),
    /// etcd answered with an error.
    Rejected(etcd_client::Error),
    /// etcd answered, but with something the contract cannot hold (a key outside the prefix).
    Invalid(StoreError),
}

/// Whether a request may be repeated after it might have reached etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Always,
    /// Only when it provably never left this process (txns).
    IfNotSent,
}

impl EtcdStore {
    /// Builds one lazily connecting client per endpoint: no request is made here, so the store
    /// can be created while etcd is still starting.
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Other(
                "etcd: no endpoints configured".to_owned(),
            ));
        }
        if config.prefix.is_empty() {
            return Err(StoreError::Other(
                "etcd: the key prefix must not be empty".to_owned(),
            ));
        }
        let options = ConnectOptions::new()
            .with_timeout(config.request_timeout)
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(config.keep_alive_interval, config.keep_alive_timeout)
            // etcd answers pings on a connection without streams with GOAWAY "too many pings".
            .with_keep_alive_while_idle(false)
            // A member cut off from the leader then refuses requests and cancels watches
            // ("no leader") instead of serving stale data or a silent watch; both move on.
            .with_require_leader(true);
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for url in &config.endpoints {
            let client = Client::connect([url.as_str()], Some(options.clone()))
                .await
                .map_err(|e| StoreError::Other(format!("etcd endpoint {url}: {e}")))?;
            endpoints.push(Endpoint {
                url: url.clone(),
                client,
                last_ok: Mutex::new(None),
            });
        }
        tracing::info!(endpoints = ?config.endpoints, prefix = %config.prefix, "etcd store configured");
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                endpoints,
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// Compacts etcd's history up to `revision` (physically): a watch from an earlier revision
    /// then fails with [`StoreError::Compacted`]. For tests and maintenance tools.
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner
            .call("compact", Retry::Always, move |mut c| async move {
                c.compact(
                    revision,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await
            })
            .await?;
        Ok(())
    }
}

impl Inner {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.config.prefix)
    }

    fn relative_key(&self, full: &[u8]) -> Result<String, StoreError> {
        full.strip_prefix(self.config.prefix.as_bytes())
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                StoreError::Other(format!(
                    "etcd returned key {:?} outside prefix {:?} or not UTF-8",
                    String::from_utf8_lossy(full),
                    self.config.prefix
                ))
            })
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: self.relative_key(kv.key())?,
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
            lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
        })
    }

    fn mark_ok(&self, index: usize) {
        if let Some(ep) = self.endpoints.get(index) {
            *ep.last_ok.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
        let before = self.current.swap(index, Ordering::Relaxed);
        if before != index {
            tracing::info!(endpoint = %self.endpoints[index].url, "etcd: switched endpoint");
        }
    }

    fn recently_ok(&self, index: usize) -> bool {
        self.endpoints[index]
            .last_ok
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < VERIFIED_FOR)
    }

    fn forget(&self, index: usize) {
        *self.endpoints[index]
            .last_ok
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Runs `f` on the current endpoint, then each other endpoint once, until one answers.
    async fn call<T, F, Fut>(&self, what: &str, retry: Retry, mut f: F) -> Result<T, CallError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let timeout = self.config.request_timeout;
        let mut tried = Vec::new();
        for i in (start..n).chain(0..start) {
            let ep = &self.endpoints[i];
            if retry == Retry::IfNotSent
                && !self.recently_ok(i)
                && let Err(why) = self.probe(i).await
            {
                tracing::debug!(endpoint = %ep.url, %why, "etcd: probe failed, trying the next endpoint");
                tried.push(format!("{}: {why}", ep.url));
                continue;
            }
            let failure = match tokio::time::timeout(timeout, f(ep.client.clone())).await {
                Ok(Ok(v)) => {
                    self.mark_ok(i);
                    return Ok(v);
                }
                Ok(Err(e)) if !is_transient(&e) => {
                    self.mark_ok(i);
                    return Err(CallError::Rejected(e));
                }
                Ok(Err(e)) => (never_sent(&e), e.to_string()),
                Err(_) => (false, format!("no answer within {timeout:?}")),
            };
            self.forget(i);
            let (not_sent, why) = failure;
            tracing::warn!(endpoint = %ep.url, %why, what, "etcd request failed");
            tried.push(format!("{}: {why}", ep.url));
            if retry == Retry::IfNotSent && !not_sent {
                // Move on for the next request, but do not risk applying this one twice.
                self.current.store((i + 1) % n, Ordering::Relaxed);
                return Err(CallError::Unavailable(format!(
                    "{what} (outcome unknown: it may have been applied): {}",
                    tried.join("; ")
                )));
            }
        }
        Err(CallError::Unavailable(format!(
            "{what}: no etcd endpoint answered: {}",
            tried.join("; ")
        )))
    }

    /// A cheap read that proves endpoint `index` answers now.
    async fn probe(&self, index: usize) -> Result<(), String> {
        let mut client = self.endpoints[index].client.clone();
        let key = self.config.prefix.clone();
        let timeout = self.config.request_timeout;
        let read = client.get(key, Some(GetOptions::new().with_keys_only().with_limit(1)));
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(_)) => {
                self.mark_ok(index);
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn list_once(&self, prefix: &str) -> Result<Listing, CallError> {
        let full = self.full_key(prefix);
        let end = range_end(full.as_bytes());
        let mut listing = Listing::default();
        let mut from = full.into_bytes();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            // Later pages read at the first page's revision: one consistent listing.
            if listing.revision > 0 {
                opts = opts.with_revision(listing.revision);
            }
            let key = from.clone();
            let resp = self
                .call("list", Retry::Always, |mut c| {
                    let (key, opts) = (key.clone(), opts.clone());
                    async move { c.get(key, Some(opts)).await }
                })
                .await?;
            if listing.revision == 0 {
                listing.revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                listing
                    .items
                    .push(self.key_value(kv).map_err(CallError::Invalid)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(listing),
            }
        }
    }
}

/// Failures that say nothing about the request itself: try another endpoint.
fn is_transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// A failure to open the connection: the request never reached etcd.
fn never_sent(e: &etcd_client::Error) -> bool {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&s.to_string());
        source = s.source();
    }
    let text = text.to_ascii_lowercase();
    // tonic/hyper-util report connect failures as "tcp connect error", "error trying to
    // connect", or with the OS's "connection refused".
    text.contains("connect error")
        || text.contains("trying to connect")
        || text.contains("connection refused")
        // With require_leader, etcd refuses before proposing anything.
        || text.contains("no leader")
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::NotFound || s.message().contains("lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// The first key after every key starting with `prefix` (etcd's `range_end` for a prefix).
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

impl From<CallError> for StoreError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unavailable(m) => StoreError::Unavailable(m),
            CallError::Rejected(e) => StoreError::Other(format!("etcd: {e}")),
            CallError::Invalid(e) => e,
        }
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.config.endpoints)
            .field("prefix", &self.inner.config.prefix)
            .field("current", &self.inner.current.load(Ordering::Relaxed))
            .finish()
    }
}

impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        Box::pin(async move {
            let full = self.inner.full_key(key);
            let resp = self
                .inner
                .call("get", Retry::Always, |mut c| {
                    let full = full.clone();
                    async move { c.get(full, None).await }
                })
                .await?;
            resp.kvs()
                .first()
                .map(|kv| self.inner.key_value(kv))
                .transpose()
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(async move {
            // A compaction between two pages invalidates the listing's revision: start over.
            let mut attempts = 0;
            loop {
                match self.inner.list_once(prefix).await {
                    Err(CallError::Rejected(e)) if attempts < 3 && is_compacted(&e) => {
                        attempts += 1;
                    }
                    other => return Ok(other?),
                }
            }
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let compares: Vec<etcd_client::Compare> = txn
                .compare
                .iter()
                .map(|Compare::ModRevision { key, revision }| {
                    // etcd compares a missing key's mod_revision as 0, as our contract says.
                    etcd_client::Compare::mod_revision(
                        inner.full_key(key),
                        CompareOp::Equal,
                        *revision,
                    )
                })
                .collect();
            let ops: Vec<TxnOp> = txn
                .ops
                .iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => TxnOp::put(
                        inner.full_key(key),
                        value.clone(),
                        lease.map(|l| etcd_client::PutOptions::new().with_lease(l.0)),
                    ),
                    Op::Delete { key } => TxnOp::delete(inner.full_key(key), None),
                })
                .collect();
            let request = etcd_client::Txn::new().when(compares).and_then(ops);
            let resp = inner
                .call("txn", Retry::IfNotSent, |mut c| {
                    let request = request.clone();
                    async move { c.txn(request).await }
                })
                .await;
            let resp = match resp {
                Err(CallError::Rejected(e)) if is_lease_not_found(&e) => {
                    let lease = txn.ops.iter().find_map(|op| match op {
                        Op::Put { lease, .. } => *lease,
                        Op::Delete { .. } => None,
                    });
                    return Err(match lease {
                        Some(l) => StoreError::LeaseNotFound(l),
                        None => StoreError::Other(format!("etcd: {e}")),
                    });
                }
                other => other?,
            };
            if !resp.succeeded() {
                return Ok(TxnOutcome::Conflict);
            }
            let revision = resp.header().map_or(0, |h| h.revision());
            Ok(TxnOutcome::Committed(revision))
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from: Revision,
    ) -> BoxFuture<'a, Result<EventStream, StoreError>> {
        Box::pin(watch::start(self.inner.clone(), prefix.to_owned(), from))
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(async move {
            let secs = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1);
            let secs = i64::try_from(secs)
                .map_err(|_| StoreError::Other(format!("lease TTL {ttl:?} is too large")))?;
            // Retrying may grant a second lease when the first answer was lost; nothing is
            // attached to that one and it expires on its own.
            let resp = self
                .inner
                .call("grant lease", Retry::Always, |mut c| async move {
                    c.lease_grant(secs, None).await
                })
                .await?;
            Ok(LeaseId(resp.id()))
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // One round trip on a fresh keep-alive stream: etcd answers TTL 0 for an unknown
            // lease, which etcd-client turns into "lease not found".
            let result = self
                .inner
                .call("keep lease alive", Retry::Always, |mut c| async move {
                    c.lease_keep_alive(lease.0).await.map(drop)
                })
                .await;
            match result {
                Err(CallError::Rejected(e)) if is_lease_not_found(&e) => {
                    Err(StoreError::LeaseNotFound(lease))
                }
                other => Ok(other?),
            }
        })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let result = self
                .inner
                .call("revoke lease", Retry::Always, |mut c| async move {
                    c.lease_revoke(lease.0).await.map(drop)
                })
                .await;
            match result {
                Err(CallError::Rejected(e)) if is_lease_not_found(&e) => Ok(()),
                other => Ok(other?),
            }
        })
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange || s.message().contains("compacted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_covers_the_prefix() {
        assert_eq!(range_end(b"/weft/"), b"/weft0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
    }

    #[tokio::test]
    async fn clients_connect_lazily() {
        // Nothing listens on port 1: building the store must still succeed.
        let store = EtcdStore::connect(EtcdConfig {
            endpoints: vec!["http://127.0.0.1:1".into()],
            request_timeout: Duration::from_millis(500),
            ..EtcdConfig::default()
        })
        .await
        .unwrap();
        let err = store.get("x").await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("127.0.0.1:1")),
            "{err}"
        );
    }
}
