//! Rate limits at the server proxy: token buckets per (policy, scope, client identity), one
//! [`RateLimiter`] per proxy shared by every request. The state sits behind one `Mutex`, held for
//! a few hash lookups and never across an `.await`; the clock is the caller's (`now`), so tests
//! need no sleeping.
//!
//! A request takes one token from each bucket that applies to it: the policy's `total` (if set)
//! and the client's own bucket — its override's if an override lists its identity, else
//! `per_identity`'s (every plaintext client shares one). If any of them is empty nothing is
//! taken and the request is limited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use weft_certs::SpiffeId;
use weft_proto::model::{ObjectRef, RateLimit, RateLimitPolicy};

/// Most identity buckets kept per policy. When a new identity arrives at the bound, the full
/// (idle) buckets are dropped — forgetting a full bucket changes nothing — and if that frees
/// less than an eighth, the least recently used are dropped down to seven eighths, so a stream
/// of new identities costs one sweep per 1,250 of them rather than one per request.
pub const MAX_IDENTITY_BUCKETS: usize = 10_000;

/// Which bucket limited a request (the `scope` label of `rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Total,
    Identity,
    Override,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Total => "total",
            Scope::Identity => "identity",
            Scope::Override => "override",
        }
    }
}

/// A request refused for want of a token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    /// The empty bucket (of two empty ones, the one that refills last).
    pub scope: Scope,
    /// Until that bucket holds a token. The caller rounds up (at least 1 s) for `Retry-After`.
    pub retry_after: Duration,
}

/// One bucket as `explain` shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    pub scope: Scope,
    pub requests_per_second: u32,
    pub burst: u32,
    /// Tokens now (fractional).
    pub tokens: f64,
}

/// The buckets of every rate-limit policy this proxy has enforced.
#[derive(Debug, Default)]
pub struct RateLimiter {
    state: Mutex<HashMap<ObjectRef, PolicyBuckets, RandomState>>,
}

#[derive(Debug, Default)]
struct PolicyBuckets {
    total: Option<Bucket>,
    /// Every plaintext client's, under `per_identity`.
    plaintext: Option<Bucket>,
    /// An identity's own bucket: its override's or `per_identity`'s (the bucket's scope says).
    identities: HashMap<SpiffeId, Bucket, RandomState>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    scope: Scope,
    limit: RateLimit,
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
    /// When a token was last taken (for least-recently-used eviction).
    used: Instant,
}

impl Bucket {
    fn full(scope: Scope, limit: RateLimit, now: Instant) -> Self {
        Bucket {
            scope,
            limit,
            tokens: f64::from(limit.burst),
            updated: now,
            used: now,
        }
    }

    /// `stored` brought up to `now`, or a full bucket when there is none or its scope or numbers
    /// changed (a policy's new numbers start afresh).
    fn current(stored: Option<&Bucket>, scope: Scope, limit: RateLimit, now: Instant) -> Self {
        match stored {
            Some(b) if b.scope == scope && b.limit == limit => b.refilled(now),
            _ => Bucket::full(scope, limit, now),
        }
    }

    fn refilled(mut self, now: Instant) -> Self {
        // `now` may be a little behind `updated`: callers read the clock before the lock.
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.limit.requests_per_second))
            .min(f64::from(self.limit.burst));
        self.updated = self.updated.max(now);
        self
    }

    fn is_full(&self, now: Instant) -> bool {
        self.refilled(now).tokens >= f64::from(self.limit.burst)
    }

    /// Until one token is back (the bucket holds less than one).
    fn wait(&self) -> Duration {
        let secs = (1.0 - self.tokens) / f64::from(self.limit.requests_per_second);
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }

    fn state(&self) -> BucketState {
        BucketState {
            scope: self.scope,
            requests_per_second: self.limit.requests_per_second,
            burst: self.limit.burst,
            tokens: self.tokens,
        }
    }
}

/// The client's own bucket's scope and numbers, if one applies.
fn client_limit(policy: &RateLimitPolicy, client: Option<&SpiffeId>) -> Option<(Scope, RateLimit)> {
    if let Some(id) = client
        && let Some(o) = policy.overrides.iter().find(|o| o.identities.contains(id))
    {
        return Some((Scope::Override, o.limit));
    }
    policy.per_identity.map(|l| (Scope::Identity, l))
}

impl PolicyBuckets {
    fn stored(&self, client: Option<&SpiffeId>) -> Option<&Bucket> {
        match client {
            None => self.plaintext.as_ref(),
            Some(id) => self.identities.get(id),
        }
    }

    /// Keeps `b` as the client's bucket. A bucket not stored yet is stored only if a token was
    /// taken from it (a full one is the same as none).
    fn store(&mut self, client: Option<&SpiffeId>, b: Bucket, taken: bool, now: Instant) {
        let Some(id) = client else {
            self.plaintext = Some(b);
            return;
        };
        if let Some(slot) = self.identities.get_mut(id) {
            *slot = b;
        } else if taken {
            if self.identities.len() >= MAX_IDENTITY_BUCKETS {
                self.make_room(now);
            }
            self.identities.insert(id.clone(), b);
        }
    }

    fn make_room(&mut self, now: Instant) {
        self.identities.retain(|_, b| !b.is_full(now));
        let keep = MAX_IDENTITY_BUCKETS - MAX_IDENTITY_BUCKETS / 8;
        let Some(excess) = self.identities.len().checked_sub(keep).filter(|n| *n > 0) else {
            return;
        };
        let mut ages: Vec<(Instant, &SpiffeId)> =
            self.identities.iter().map(|(id, b)| (b.used, id)).collect();
        ages.select_nth_unstable_by_key(excess - 1, |(used, _)| *used);
        let oldest: Vec<SpiffeId> = ages[..excess].iter().map(|(_, id)| (*id).clone()).collect();
        for id in &oldest {
            self.identities.remove(id);
        }
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one token from each bucket of `policy` that applies to `client`, or none if any of
    /// them is empty.
    pub fn check(
        &self,
        policy: &RateLimitPolicy,
        client: Option<&SpiffeId>,
        now: Instant,
    ) -> Result<(), Limited> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = match state.get_mut(&policy.id) {
            Some(b) => b,
            None => state.entry(policy.id.clone()).or_default(),
        };
        let mut total = policy
            .total
            .map(|l| Bucket::current(buckets.total.as_ref(), Scope::Total, l, now));
        let mut own = client_limit(policy, client)
            .map(|(scope, l)| Bucket::current(buckets.stored(client), scope, l, now));
        let mut limited: Option<Limited> = None;
        for b in [own.as_ref(), total.as_ref()].into_iter().flatten() {
            if b.tokens < 1.0 {
                let wait = b.wait();
                if limited.is_none_or(|l| wait > l.retry_after) {
                    limited = Some(Limited {
                        scope: b.scope,
                        retry_after: wait,
                    });
                }
            }
        }
        let taken = limited.is_none();
        if taken {
            for b in [own.as_mut(), total.as_mut()].into_iter().flatten() {
                b.tokens -= 1.0;
                b.used = now;
            }
        }
        if total.is_some() {
            buckets.total = total;
        }
        if let Some(b) = own {
            buckets.store(client, b, taken, now);
        }
        match limited {
            Some(l) => Err(l),
            None => Ok(()),
        }
    }

    /// The buckets that apply to `client` as they stand at `now` (total first), for `explain`.
    /// Takes nothing.
    pub fn state(
        &self,
        policy: &RateLimitPolicy,
        client: Option<&SpiffeId>,
        now: Instant,
    ) -> Vec<BucketState> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = state.get(&policy.id);
        let total = policy
            .total
            .map(|l| Bucket::current(buckets.and_then(|b| b.total.as_ref()), Scope::Total, l, now));
        let own = client_limit(policy, client).map(|(scope, l)| {
            Bucket::current(buckets.and_then(|b| b.stored(client)), scope, l, now)
        });
        [total, own]
            .into_iter()
            .flatten()
            .map(|b| b.state())
            .collect()
    }

    /// Drops the buckets of policies for which `keep` is false (those no longer configured).
    pub fn retain_policies(&self, keep: impl Fn(&ObjectRef) -> bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests;
