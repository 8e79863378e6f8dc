//! The API server's counters, in Firecracker's sections:
//! `get_api_requests`, `put_api_requests` and `patch_api_requests` with a
//! `<endpoint>_count` and `<endpoint>_fails` pair per endpoint, and
//! `api_server` for connection-level events.

use std::sync::Arc;

use ember_telemetry::{Counter, MetricsSource};
use serde_json::{Map, Value};

use super::router::{Method, ROUTES};

struct EndpointCounters {
    method: Method,
    key: &'static str,
    count: Counter,
    fails: Counter,
}

/// All API counters.
pub struct ApiMetrics {
    endpoints: Vec<EndpointCounters>,
    /// Connections accepted.
    pub connections_accepted: Counter,
    /// Connections closed to make room for new ones.
    pub connections_evicted: Counter,
    /// Requests not completed in time (408).
    pub request_timeouts: Counter,
    /// Requests refused before routing (bad framing, too large...).
    pub protocol_errors: Counter,
    /// Requests whose path and method matched no endpoint.
    pub unrouted_requests: Counter,
}

impl std::fmt::Debug for ApiMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiMetrics").finish_non_exhaustive()
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let mut endpoints: Vec<EndpointCounters> = Vec::new();
        for r in ROUTES {
            if !endpoints
                .iter()
                .any(|e| e.method == r.method && e.key == r.metric)
            {
                endpoints.push(EndpointCounters {
                    method: r.method,
                    key: r.metric,
                    count: Counter::new(),
                    fails: Counter::new(),
                });
            }
        }
        Self {
            endpoints,
            connections_accepted: Counter::new(),
            connections_evicted: Counter::new(),
            request_timeouts: Counter::new(),
            protocol_errors: Counter::new(),
            unrouted_requests: Counter::new(),
        }
    }
}

impl ApiMetrics {
    /// Counts one request to the endpoint `key` (see `Route::metric`).
    pub fn record(&self, method: Method, key: &str, success: bool) {
        if let Some(e) = self
            .endpoints
            .iter()
            .find(|e| e.method == method && e.key == key)
        {
            e.count.inc();
            if !success {
                e.fails.inc();
            }
        }
    }

    /// The total count for an endpoint (for tests).
    pub fn count(&self, method: Method, key: &str) -> u64 {
        self.endpoints
            .iter()
            .find(|e| e.method == method && e.key == key)
            .map_or(0, |e| e.count.count())
    }

    /// The metrics sections, to register with a `MetricsRegistry`.
    pub fn sources(self: &Arc<Self>) -> Vec<Arc<dyn MetricsSource>> {
        [
            Section::Method(Method::Get),
            Section::Method(Method::Put),
            Section::Method(Method::Patch),
            Section::Server,
        ]
        .into_iter()
        .map(|section| {
            Arc::new(SectionSource {
                metrics: self.clone(),
                section,
            }) as Arc<dyn MetricsSource>
        })
        .collect()
    }
}

#[derive(Clone, Copy)]
enum Section {
    Method(Method),
    Server,
}

struct SectionSource {
    metrics: Arc<ApiMetrics>,
    section: Section,
}

impl MetricsSource for SectionSource {
    fn name(&self) -> &str {
        match self.section {
            Section::Method(Method::Get) => "get_api_requests",
            Section::Method(Method::Put) => "put_api_requests",
            Section::Method(Method::Patch) => "patch_api_requests",
            Section::Server => "api_server",
        }
    }

    fn snapshot(&self) -> Value {
        let mut map = Map::new();
        match self.section {
            Section::Method(method) => {
                for e in self.metrics.endpoints.iter().filter(|e| e.method == method) {
                    map.insert(format!("{}_count", e.key), e.count.take_delta().into());
                    map.insert(format!("{}_fails", e.key), e.fails.take_delta().into());
                }
            }
            Section::Server => {
                let m = &self.metrics;
                for (k, c) in [
                    ("connections_accepted", &m.connections_accepted),
                    ("connections_evicted", &m.connections_evicted),
                    ("request_timeouts", &m.request_timeouts),
                    ("protocol_errors", &m.protocol_errors),
                    ("unrouted_requests", &m.unrouted_requests),
                ] {
                    map.insert(k.to_string(), c.take_delta().into());
                }
            }
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_use_firecracker_names() {
        let m = Arc::new(ApiMetrics::default());
        m.record(Method::Put, "drive", true);
        m.record(Method::Put, "drive", false);
        m.record(Method::Get, "machine_cfg", true);
        let sources = m.sources();
        let put = sources
            .iter()
            .find(|s| s.name() == "put_api_requests")
            .unwrap();
        let v = put.snapshot();
        assert_eq!(v["drive_count"], 2);
        assert_eq!(v["drive_fails"], 1);
        assert_eq!(v["machine_cfg_count"], 0);
        assert_eq!(put.snapshot()["drive_count"], 0);
        let get = sources
            .iter()
            .find(|s| s.name() == "get_api_requests")
            .unwrap();
        assert_eq!(get.snapshot()["machine_cfg_count"], 1);
        assert_eq!(m.count(Method::Put, "drive"), 2);
    }
}
