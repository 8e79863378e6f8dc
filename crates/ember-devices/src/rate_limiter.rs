//! Token-bucket rate limiters for virtio devices, with Firecracker's meanings.
//!
//! A [`TokenBucket`] holds up to `size` tokens and refills linearly: `size`
//! tokens every `refill_time` milliseconds. `one_time_burst` is an extra
//! budget available once, at start, that never refills; it is spent before
//! the regular budget. A [`RateLimiter`] combines an optional bandwidth
//! bucket (tokens are bytes) and an optional ops bucket (tokens are
//! operations). A bucket with `size == 0` or `refill_time == 0` is no limit.
//!
//! A single operation larger than the whole bucket (say a 1 MiB write
//! through a 64 KiB bucket) can never fit, so it is let through when the
//! bucket is full and leaves the bucket in debt: the next operation waits
//! until the debt is refilled. The long-run rate therefore never exceeds
//! `size / refill_time`.
//!
//! When an operation does not fit, the limiter arms its timerfd for the
//! exact time until it will, and reports itself blocked; the device stops
//! processing and resumes when the event loop sees the timer fire
//! ([`RateLimiter::on_timer`]). Time comes from a [`Clock`], so tests
//! control it precisely.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

const NANOS_PER_MILLI: u128 = 1_000_000;

/// A token bucket's parameters, as in Firecracker's API `TokenBucket`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucketConfig {
    /// Total tokens the bucket holds (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, at creation; they do not refill.
    #[serde(default)]
    pub one_time_burst: u64,
    /// Milliseconds to refill `size` tokens from empty.
    pub refill_time: u64,
}

/// A rate limiter's parameters, as in Firecracker's API `RateLimiter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterConfig {
    /// Limits bytes.
    #[serde(default)]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Limits operations (requests, packets).
    #[serde(default)]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// True when neither bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        TokenBucket::from_config(self.bandwidth.as_ref(), Duration::ZERO).is_none()
            && TokenBucket::from_config(self.ops.as_ref(), Duration::ZERO).is_none()
    }
}

/// A monotonic time source.
pub trait Clock: Send {
    /// Time elapsed since some fixed origin.
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock tests move by hand; clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// One bucket's live state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u128,
    burst: u64,
    /// Regular tokens; negative while in debt after an oversized operation.
    budget: i128,
    /// Refill progress below one token, in units of 1/refill_ns tokens.
    carry: u128,
    last_update: Duration,
}

impl TokenBucket {
    /// A full bucket, or `None` when the config limits nothing.
    pub fn from_config(cfg: Option<&TokenBucketConfig>, now: Duration) -> Option<Self> {
        let cfg = cfg?;
        if cfg.size == 0 || cfg.refill_time == 0 {
            return None;
        }
        Some(Self {
            size: cfg.size,
            refill_ns: u128::from(cfg.refill_time) * NANOS_PER_MILLI,
            burst: cfg.one_time_burst,
            budget: i128::from(cfg.size),
            carry: 0,
            last_update: now,
        })
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last_update).as_nanos();
        self.last_update = now.max(self.last_update);
        let size = i128::from(self.size);
        if self.budget >= size {
            self.carry = 0;
            return;
        }
        let scaled = elapsed
            .saturating_mul(u128::from(self.size))
            .saturating_add(self.carry);
        let added = scaled / self.refill_ns;
        self.carry = scaled % self.refill_ns;
        let added = i128::try_from(added).unwrap_or(i128::MAX);
        self.budget = self.budget.saturating_add(added);
        if self.budget >= size {
            self.budget = size;
            self.carry = 0;
        }
    }

    /// Regular tokens available now (negative when in debt), plus burst.
    pub fn available(&mut self, now: Duration) -> i128 {
        self.refill(now);
        self.budget + i128::from(self.burst)
    }

    /// Whether `tokens` can be taken now, without taking them.
    fn fits(&mut self, tokens: u64, now: Duration) -> bool {
        self.refill(now);
        let t = i128::from(tokens);
        self.budget + i128::from(self.burst) >= t
            || (tokens > self.size && self.budget >= i128::from(self.size))
    }

    /// Takes `tokens`; the caller checked [`Self::fits`].
    fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        self.budget -= i128::from(tokens - from_burst);
    }

    /// Gives back tokens taken for an operation that did not happen.
    pub fn give_back(&mut self, tokens: u64) {
        self.budget = (self.budget + i128::from(tokens)).min(i128::from(self.size));
    }

    /// Time from `now` until `tokens` fit (zero if they fit already).
    fn wait_for(&mut self, tokens: u64, now: Duration) -> Duration {
        if self.fits(tokens, now) {
            return Duration::ZERO;
        }
        // Wait until the regular budget reaches min(tokens - burst, size):
        // the first makes the operation fit, the second lets an oversized
        // one through.
        let target = i128::from(tokens.saturating_sub(self.burst).min(self.size));
        let deficit = (target - self.budget).max(0) as u128;
        let need = deficit
            .saturating_mul(self.refill_ns)
            .saturating_sub(self.carry);
        let size = u128::from(self.size);
        let ns = need.div_ceil(size);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// Which resource an operation consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Bytes, against the bandwidth bucket.
    Bytes,
    /// Operations, against the ops bucket.
    Ops,
}

/// A bandwidth and an ops bucket, with a timerfd for resuming.
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    clock: Box<dyn Clock>,
    timer: TimerFd,
    blocked: bool,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("bandwidth", &self.bandwidth)
            .field("ops", &self.ops)
            .field("blocked", &self.blocked)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter on the real clock.
    pub fn new(cfg: &RateLimiterConfig) -> io::Result<Self> {
        Self::with_clock(cfg, Box::new(MonotonicClock::default()))
    }

    /// A limiter on the given clock.
    pub fn with_clock(cfg: &RateLimiterConfig, clock: Box<dyn Clock>) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        set_nonblocking(timer.as_raw_fd())?;
        let now = clock.now();
        Ok(Self {
            bandwidth: TokenBucket::from_config(cfg.bandwidth.as_ref(), now),
            ops: TokenBucket::from_config(cfg.ops.as_ref(), now),
            clock,
            timer,
            blocked: false,
        })
    }

    /// Replaces the buckets with fresh full ones; keeps the timerfd, so the
    /// event loop's registration stays valid. Unblocks, so the device
    /// re-evaluates pending work against the new limits.
    pub fn update(&mut self, cfg: &RateLimiterConfig) {
        let now = self.clock.now();
        self.bandwidth = TokenBucket::from_config(cfg.bandwidth.as_ref(), now);
        self.ops = TokenBucket::from_config(cfg.ops.as_ref(), now);
        if self.blocked {
            // Fire at once: the device resumes through its usual path.
            let _ = self.timer.reset(Duration::from_nanos(1), None);
        }
    }

    /// True while throttled; the device must not process until the timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// True when no bucket is configured.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Tries to consume one operation of `bytes` bytes from both buckets.
    /// Either both are charged or neither is; on failure the limiter blocks
    /// and arms its timer.
    pub fn consume(&mut self, bytes: u64) -> bool {
        self.consume_parts(bytes, 1)
    }

    /// Like [`Self::consume`] for a single bucket.
    pub fn consume_one(&mut self, tokens: u64, kind: TokenType) -> bool {
        match kind {
            TokenType::Bytes => self.consume_parts(tokens, 0),
            TokenType::Ops => self.consume_parts(0, tokens),
        }
    }

    fn consume_parts(&mut self, bytes: u64, ops: u64) -> bool {
        if self.blocked {
            return false;
        }
        let now = self.clock.now();
        let bw_ok = self.bandwidth.as_mut().is_none_or(|b| b.fits(bytes, now));
        let ops_ok = self.ops.as_mut().is_none_or(|b| b.fits(ops, now));
        if bw_ok && ops_ok {
            if let Some(b) = self.bandwidth.as_mut() {
                b.take(bytes);
            }
            if let Some(b) = self.ops.as_mut() {
                b.take(ops);
            }
            return true;
        }
        let wait = self
            .bandwidth
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait_for(bytes, now))
            .max(
                self.ops
                    .as_mut()
                    .map_or(Duration::ZERO, |b| b.wait_for(ops, now)),
            );
        self.blocked = true;
        // A zero duration disarms a timerfd; wait at least a nanosecond.
        if let Err(e) = self.timer.reset(wait.max(Duration::from_nanos(1)), None) {
            tracing::error!("rate limiter: cannot arm timer: {e}");
            self.blocked = false;
        }
        false
    }

    /// For operations whose size is known only afterwards (see
    /// [`Self::charge`]): true if every bucket has at least one token now;
    /// otherwise blocks and arms the timer for when they will.
    pub fn has_tokens(&mut self) -> bool {
        if self.blocked {
            return false;
        }
        let now = self.clock.now();
        let mut wait = Duration::ZERO;
        for b in [self.bandwidth.as_mut(), self.ops.as_mut()]
            .into_iter()
            .flatten()
        {
            wait = wait.max(b.wait_for(1, now));
        }
        if wait == Duration::ZERO {
            return true;
        }
        self.blocked = true;
        if let Err(e) = self.timer.reset(wait, None) {
            tracing::error!("rate limiter: cannot arm timer: {e}");
            self.blocked = false;
        }
        false
    }

    /// Charges an operation that already happened (a received frame whose
    /// size was unknown until read): tokens are taken even if that puts a
    /// bucket in debt, in which case the limiter blocks until it is repaid.
    pub fn charge(&mut self, bytes: u64) {
        let now = self.clock.now();
        let mut wait = Duration::ZERO;
        for (b, tokens) in [(self.bandwidth.as_mut(), bytes), (self.ops.as_mut(), 1)] {
            if let Some(b) = b {
                b.refill(now);
                b.take(tokens);
                if b.budget < 0 {
                    wait = wait.max(b.wait_for(0, now));
                }
            }
        }
        if wait > Duration::ZERO && !self.blocked {
            self.blocked = true;
            if let Err(e) = self.timer.reset(wait, None) {
                tracing::error!("rate limiter: cannot arm timer: {e}");
                self.blocked = false;
            }
        }
    }

    /// Returns tokens for an operation that was charged but not done.
    pub fn give_back(&mut self, bytes: u64, ops: u64) {
        if let Some(b) = self.bandwidth.as_mut() {
            b.give_back(bytes);
        }
        if let Some(b) = self.ops.as_mut() {
            b.give_back(ops);
        }
    }

    /// Handles the timer firing: clears it and unblocks. Returns true if
    /// the limiter was blocked (the device should resume work).
    pub fn on_timer(&mut self) -> bool {
        // Non-blocking read; EAGAIN just means a spurious wakeup.
        let _ = self.timer.wait();
        std::mem::replace(&mut self.blocked, false)
    }

    /// Disarms the timer and unblocks (device reset).
    pub fn reset_timer(&mut self) {
        let _ = self.timer.clear();
        self.blocked = false;
    }

    /// Tokens currently available in each bucket (for tests and metrics).
    pub fn available(&mut self) -> (Option<i128>, Option<i128>) {
        let now = self.clock.now();
        (
            self.bandwidth.as_mut().map(|b| b.available(now)),
            self.ops.as_mut().map(|b| b.available(now)),
        )
    }

    /// How long the armed timer has left, if armed (for tests).
    pub fn timer_remaining(&self) -> Option<Duration> {
        let mut spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        // SAFETY: `spec` is a valid, writable itimerspec and the fd is our
        // own live timerfd; the call writes only into `spec`.
        let ret = unsafe { libc::timerfd_gettime(self.timer.as_raw_fd(), &mut spec) };
        if ret != 0 || (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) {
            return None;
        }
        Some(Duration::new(
            spec.it_value.tv_sec as u64,
            spec.it_value.tv_nsec as u32,
        ))
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

/// Puts a file descriptor in non-blocking mode.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on a caller-owned fd reads its flags; no memory is
    // passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on the same fd with an integer argument.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: u64, refill_ms: u64) -> Option<TokenBucketConfig> {
        Some(TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time: refill_ms,
        })
    }

    fn limiter(cfg: RateLimiterConfig) -> (RateLimiter, ManualClock) {
        let clock = ManualClock::default();
        let rl = RateLimiter::with_clock(&cfg, Box::new(clock.clone())).unwrap();
        (rl, clock)
    }

    #[test]
    fn empty_or_zero_buckets_limit_nothing() {
        let (mut rl, _) = limiter(RateLimiterConfig::default());
        assert!(rl.is_unlimited());
        for _ in 0..1000 {
            assert!(rl.consume(u64::MAX));
        }
        let cfg = RateLimiterConfig {
            bandwidth: bucket(0, 10, 100),
            ops: bucket(10, 0, 0),
        };
        assert!(cfg.is_unlimited());
    }

    #[test]
    fn bandwidth_refills_linearly_and_exactly() {
        // 1000 bytes per 100 ms = 10 bytes per ms.
        let (mut rl, clock) = limiter(RateLimiterConfig {
            bandwidth: bucket(1000, 0, 100),
            ops: None,
        });
        assert!(rl.consume(1000));
        assert_eq!(rl.available().0, Some(0));
        assert!(!rl.consume(1));
        assert!(rl.is_blocked());
        // One byte needs 0.1 ms.
        assert_eq!(rl.timer_remaining().map(|d| d > Duration::ZERO), Some(true));
        assert!(rl.timer_remaining().unwrap() <= Duration::from_micros(100));
        clock.advance(Duration::from_millis(25));
        assert!(rl.on_timer());
        assert_eq!(rl.available().0, Some(250));
        // Fractions carry over: 7 x 0.05 ms = 0.35 ms = 3.5 bytes.
        for _ in 0..7 {
            clock.advance(Duration::from_micros(50));
        }
        assert_eq!(rl.available().0, Some(253));
        clock.advance(Duration::from_micros(50));
        assert_eq!(rl.available().0, Some(254));
        // Never above size.
        clock.advance(Duration::from_secs(10));
        assert_eq!(rl.available().0, Some(1000));
    }

    #[test]
    fn timer_is_armed_for_exact_wait() {
        // 100 ops per second: one op every 10 ms.
        let (mut rl, clock) = limiter(RateLimiterConfig {
            bandwidth: None,
            ops: bucket(100, 0, 1000),
        });
        for _ in 0..100 {
            assert!(rl.consume(0));
        }
        assert!(!rl.consume(0));
        let wait = rl.timer_remaining().unwrap();
        assert!(wait <= Duration::from_millis(10) && wait > Duration::from_millis(9));
        // Blocked: even if time passes, no consumption until the timer.
        clock.advance(Duration::from_millis(10));
        assert!(!rl.consume(0));
        assert!(rl.on_timer());
        assert!(rl.consume(0));
        assert!(!rl.consume(0));
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_refills() {
        let (mut rl, clock) = limiter(RateLimiterConfig {
            bandwidth: bucket(100, 50, 1000),
            ops: None,
        });
        assert_eq!(rl.available().0, Some(150));
        assert!(rl.consume(120));
        // Burst (50) spent first, then 70 of the regular 100.
        assert_eq!(rl.available().0, Some(30));
        clock.advance(Duration::from_secs(5));
        assert_eq!(rl.available().0, Some(100));
    }

    #[test]
    fn oversized_operation_passes_when_full_and_leaves_debt() {
        let (mut rl, clock) = limiter(RateLimiterConfig {
            bandwidth: bucket(1000, 0, 1000),
            ops: None,
        });
        assert!(rl.consume(3000));
        assert_eq!(rl.available().0, Some(-2000));
        assert!(!rl.consume(1));
        // Debt of 2000 plus 1 byte at 1 byte/ms: 2001 ms.
        let wait = rl.timer_remaining().unwrap();
        assert!(wait > Duration::from_millis(2000) && wait <= Duration::from_millis(2001));
        clock.advance(Duration::from_millis(2001));
        rl.on_timer();
        assert!(rl.consume(1));
        // Another oversized op must wait for a full bucket.
        assert!(!rl.consume(5000));
        rl.on_timer();
        clock.advance(Duration::from_millis(999));
        assert!(!rl.consume(5000));
        rl.on_timer();
        clock.advance(Duration::from_millis(1));
        assert!(rl.consume(5000));
    }

    #[test]
    fn both_buckets_charged_atomically() {
        let (mut rl, _) = limiter(RateLimiterConfig {
            bandwidth: bucket(100, 0, 1000),
            ops: bucket(2, 0, 1000),
        });
        assert!(rl.consume(10));
        assert!(rl.consume(10));
        // Ops exhausted: bandwidth must not be charged for the refusal.
        assert!(!rl.consume(10));
        assert_eq!(rl.available(), (Some(80), Some(0)));
        rl.give_back(10, 1);
        assert_eq!(rl.available(), (Some(90), Some(1)));
    }

    #[test]
    fn update_replaces_buckets_and_keeps_timer_fd() {
        let (mut rl, _) = limiter(RateLimiterConfig {
            bandwidth: bucket(10, 0, 1000),
            ops: None,
        });
        let fd = rl.as_raw_fd();
        assert!(rl.consume(10));
        assert!(!rl.consume(10));
        rl.update(&RateLimiterConfig::default());
        assert_eq!(rl.as_raw_fd(), fd);
        assert!(rl.on_timer());
        assert!(rl.consume(1 << 40));
    }

    #[test]
    fn charge_after_the_fact_goes_into_debt() {
        let (mut rl, clock) = limiter(RateLimiterConfig {
            bandwidth: bucket(1000, 0, 1000),
            ops: None,
        });
        rl.charge(600);
        assert!(!rl.is_blocked());
        rl.charge(600);
        assert!(rl.is_blocked());
        assert_eq!(rl.available().0, Some(-200));
        let wait = rl.timer_remaining().unwrap();
        assert!(wait > Duration::from_millis(199) && wait <= Duration::from_millis(200));
        clock.advance(Duration::from_millis(200));
        assert!(rl.on_timer());
        assert_eq!(rl.available().0, Some(0));
    }

    #[test]
    fn config_json_matches_firecracker_shape() {
        let cfg: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth":{"size":1048576,"refill_time":100},"ops":{"size":10,"one_time_burst":5,"refill_time":1000}}"#,
        )
        .unwrap();
        assert_eq!(cfg.bandwidth.unwrap().size, 1048576);
        assert_eq!(cfg.ops.unwrap().one_time_burst, 5);
    }
}
