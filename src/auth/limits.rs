//! Per-key rate limits: one GCRA token bucket per key (governor), N requests refilled evenly
//! over the key's period. After every request the bucket's level goes to the store, and a
//! bucket made after a restart starts from that level less what has refilled since, so a key
//! cannot empty its bucket, crash the server and come back to a full one.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::keys::{KeyRecord, Rate};
use crate::store::Store;

type Bucket = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, StateInformationMiddleware>;

/// A key's bucket as a response reports it (`X-RateLimit-*`).
#[derive(Clone, Copy, Debug)]
pub struct Allowance {
    /// The bucket's size: requests per period.
    pub limit: u32,
    pub remaining: u32,
    /// Epoch seconds when the bucket is full again.
    pub reset: u64,
    /// Set when this request was refused: seconds until one request is allowed.
    pub retry_after: Option<u64>,
}

pub struct RateLimits {
    store: Arc<Store>,
    buckets: Mutex<HashMap<String, (Rate, Arc<Bucket>)>>,
}

fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RateLimits {
    pub fn new(store: Arc<Store>) -> Self {
        RateLimits {
            store,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket; None for a key without a limit.
    pub fn take(&self, key: &KeyRecord) -> Option<Allowance> {
        let rate = key.rate?;
        let bucket = self.bucket(&key.id, rate);
        let now = bucket.clock().now();
        let allowance = match bucket.check() {
            Ok(snapshot) => allowance(rate, snapshot.remaining_burst_capacity(), None),
            Err(not_until) => {
                let wait = not_until.wait_time_from(now);
                allowance(rate, 0, Some(wait.as_secs_f64().ceil().max(1.0) as u64))
            }
        };
        if let Err(e) = self
            .store
            .put_rate_level(&key.id, allowance.remaining, epoch_millis())
        {
            tracing::error!(key = %key.id, "rate-limit level not saved: {e}");
        }
        Some(allowance)
    }

    /// The key's bucket, made on its first request since the start from the saved level.
    fn bucket(&self, key_id: &str, rate: Rate) -> Arc<Bucket> {
        let mut buckets = self.buckets.lock().expect("rate limits lock");
        if let Some((r, bucket)) = buckets.get(key_id)
            && *r == rate
        {
            return bucket.clone();
        }
        let burst = NonZeroU32::new(rate.requests).expect("a rate of at least 1");
        let quota = Quota::with_period(rate.refill_interval().max(Duration::from_nanos(1)))
            .expect("a positive period")
            .allow_burst(burst);
        let bucket = Arc::new(
            RateLimiter::direct_with_clock(quota, MonotonicClock)
                .with_middleware::<StateInformationMiddleware>(),
        );
        if let Ok(Some((remaining, at_millis))) = self.store.rate_level(key_id) {
            let elapsed = Duration::from_millis(epoch_millis().saturating_sub(at_millis));
            let refilled = (elapsed.as_nanos() / rate.refill_interval().as_nanos().max(1))
                .min(u128::from(rate.requests)) as u32;
            let used = rate
                .requests
                .saturating_sub(remaining.min(rate.requests))
                .saturating_sub(refilled);
            if let Some(used) = NonZeroU32::new(used) {
                let _ = bucket.check_n(used);
            }
        }
        buckets.insert(key_id.to_owned(), (rate, bucket.clone()));
        bucket
    }
}

/// The answer's view of a bucket with `remaining` requests left.
fn allowance(rate: Rate, remaining: u32, retry_after: Option<u64>) -> Allowance {
    let refill = rate.refill_interval() * (rate.requests - remaining);
    let reset = (epoch_millis() + refill.as_millis() as u64).div_ceil(1000);
    Allowance {
        limit: rate.requests,
        remaining,
        reset,
        retry_after,
    }
}
