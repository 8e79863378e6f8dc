//! `RateLimiter` and `TokenBucket`: I/O limits of block, net and entropy
//! devices.

use serde::{Deserialize, Serialize};

/// The largest `refill_time` (ms) accepted: beyond it, converting to
/// nanoseconds would overflow 64 bits.
pub const MAX_REFILL_TIME_MS: u64 = u64::MAX / 1_000_000;

/// A token bucket: `size` tokens refilled every `refill_time` milliseconds,
/// plus an optional initial burst. A size or refill time of zero disables
/// the bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Capacity in tokens (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the whole bucket.
    pub refill_time: u64,
}

impl TokenBucket {
    /// Checks the bucket can be turned into a timer without overflow.
    pub fn validate(&self) -> Result<(), String> {
        if self.refill_time > MAX_REFILL_TIME_MS {
            return Err(format!(
                "refill_time {} ms is too large (at most {MAX_REFILL_TIME_MS})",
                self.refill_time
            ));
        }
        Ok(())
    }

    /// Whether the bucket limits anything.
    pub fn is_enabled(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }
}

/// Independent limits on bytes (`bandwidth`) and operations (`ops`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes per refill period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations per refill period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// Validates both buckets.
    pub fn validate(&self) -> Result<(), String> {
        for (name, bucket) in [("bandwidth", &self.bandwidth), ("ops", &self.ops)] {
            if let Some(b) = bucket {
                b.validate()
                    .map_err(|e| format!("rate limiter {name}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Validates an optional limiter.
pub(crate) fn validate_opt(limiter: &Option<RateLimiter>, what: &str) -> Result<(), String> {
    match limiter {
        Some(l) => l.validate().map_err(|e| format!("{what}: {e}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_firecracker_bodies() {
        let r: RateLimiter = serde_json::from_str(
            r#"{"bandwidth": {"size": 5000, "refill_time": 100},
                "ops": {"size": 500, "one_time_burst": 10, "refill_time": 100}}"#,
        )
        .unwrap();
        assert_eq!(r.ops.unwrap().one_time_burst, Some(10));
        r.validate().unwrap();
        assert!(r.bandwidth.unwrap().is_enabled());
        let empty: RateLimiter = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, RateLimiter::default());
    }

    #[test]
    fn rejects_bad_buckets() {
        assert!(serde_json::from_str::<RateLimiter>(r#"{"ops": {"size": 100}}"#).is_err());
        assert!(
            serde_json::from_str::<RateLimiter>(r#"{"ops": {"size": -1, "refill_time": 1}}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<RateLimiter>(r#"{"iops": {}}"#).is_err());
        let big = RateLimiter {
            ops: Some(TokenBucket {
                size: 1,
                one_time_burst: None,
                refill_time: u64::MAX,
            }),
            bandwidth: None,
        };
        assert!(big.validate().unwrap_err().contains("ops"));
    }
}
