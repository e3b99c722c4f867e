//! Small in-memory limiters: per-IP rate limits and concurrent connection counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `limit` events per key (a source IP, a phone number) in a sliding window.
pub struct RateLimiter<K = IpAddr> {
    limit: u32,
    window: Duration,
    events: Mutex<HashMap<K, Vec<Instant>>>,
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    pub fn new(limit: u32, window_secs: u64) -> Self {
        RateLimiter {
            limit,
            window: Duration::from_secs(window_secs),
            events: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event for `key` if it is within the limit; returns whether it was.
    pub fn try_acquire(&self, key: K) -> bool {
        self.acquire_or_wait(key).is_ok()
    }

    /// Records an event for `key` if it is within the limit; otherwise says how
    /// long until the next one would be (for `Retry-After`).
    pub fn acquire_or_wait(&self, key: K) -> Result<(), Duration> {
        let now = Instant::now();
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        // Forget idle addresses now and then so the map can't grow without bound.
        if events.len() > 10_000 {
            events.retain(|_, times| {
                times
                    .last()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        let times = events.entry(key).or_default();
        times.retain(|t| now.duration_since(*t) < self.window);
        if times.len() as u32 >= self.limit {
            let oldest = times.first().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        times.push(now);
        Ok(())
    }
}

/// Counts open connections per IP; a guard releases its slot on drop.
pub struct ConnectionCounter {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Owned (not borrowed) so it can move into the task that outlives negotiation.
pub struct ConnectionGuard {
    counter: std::sync::Arc<ConnectionCounter>,
    ip: IpAddr,
}

impl ConnectionCounter {
    pub fn new(limit: usize) -> Self {
        ConnectionCounter {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Connections open now, from every address.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }

    pub fn try_open(self: &std::sync::Arc<Self>, ip: IpAddr) -> Option<ConnectionGuard> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ConnectionGuard {
            counter: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_applies_per_address() {
        let limiter = RateLimiter::new(2, 3600);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert!(limiter.try_acquire(a));
        assert!(limiter.try_acquire(a));
        assert!(!limiter.try_acquire(a));
        assert!(limiter.try_acquire(b));
    }

    #[test]
    fn connection_slots_are_released() {
        let counter = std::sync::Arc::new(ConnectionCounter::new(1));
        let ip: IpAddr = [127, 0, 0, 1].into();
        let guard = counter.try_open(ip);
        assert!(guard.is_some());
        assert!(counter.try_open(ip).is_none());
        drop(guard);
        assert!(counter.try_open(ip).is_some());
    }
}
