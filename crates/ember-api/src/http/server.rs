//! The epoll loop behind [`super::ApiServer`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::connection::{Connection, OUTPUT_HIGH_WATER};
use super::metrics::ApiMetrics;
use super::parser::{parse_head, Limits, RequestHead};
use super::response::{Response, CONTINUE};
use super::router::{lookup, route_request, Method, Routed};
use super::ServerConfig;
use crate::endpoint::VmmChannel;
use crate::request::{ApiOutcome, ApiReply};

const LISTENER: u64 = 0;
const STOP: u64 = 1;
const FIRST_CONNECTION: u64 = 2;
/// How long to stop accepting after `accept` fails for lack of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// When the table is full, a connection idle this long may be evicted.
const IDLE_GRACE: Duration = Duration::from_millis(250);
/// When the table is full and nothing is idle, a request unfinished for
/// this long may be evicted (told 408).
const SLOW_GRACE: Duration = Duration::from_secs(1);
/// How often a full table is re-examined while clients wait.
const ADMIT_RETRY: Duration = Duration::from_millis(50);

/// Turns requests into responses (routing, VMM calls, counters).
struct Dispatcher {
    channel: VmmChannel,
    metrics: Arc<ApiMetrics>,
}

fn outcome_response(outcome: ApiOutcome) -> Response {
    match outcome {
        Ok(ApiReply::NoContent) => Response::no_content(),
        Ok(ApiReply::InstanceInfo(i)) => Response::json(&i),
        Ok(ApiReply::Version(v)) => Response::json(&v),
        Ok(ApiReply::MachineConfig(m)) => Response::json(&m),
        Ok(ApiReply::VmConfig(c)) => Response::json(&c),
        Err(e) => Response::fault(e.status, &e.message),
    }
}

impl Dispatcher {
    fn respond(&self, head: &RequestHead, body: &[u8]) -> Response {
        let mut response = match route_request(&head.method, &head.path, body) {
            Routed::Vmm(request) => outcome_response(self.channel.call(request)),
            Routed::Error(e) => Response::fault(e.status, &e.message),
        };
        match (
            Method::parse(&head.method),
            lookup(&head.method, &head.path),
        ) {
            (Some(method), Some(route)) => {
                self.metrics
                    .record(method, route.metric, response.is_success())
            }
            _ => self.metrics.unrouted_requests.inc(),
        }
        if response.is_success() {
            tracing::debug!("{} {}: {}", head.method, head.path, response.status);
        } else {
            tracing::info!(
                "{} {}: {} {}",
                head.method,
                head.path,
                response.status,
                response
                    .body
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
            );
        }
        // A method we do not serve (e.g. HEAD) may not expect a body back:
        // do not let the client misread what follows.
        if head.wants_close || Method::parse(&head.method).is_none() {
            response.close = true;
        }
        response
    }
}

pub(super) struct Server {
    config: ServerConfig,
    limits: Limits,
    epoll: Epoll,
    listener: UnixListener,
    stop: EventFd,
    conns: HashMap<u64, Connection>,
    /// Accepted clients waiting for a free slot, oldest first.
    waiting: VecDeque<std::os::unix::net::UnixStream>,
    next_token: u64,
    api: Dispatcher,
    accept_paused_until: Option<Instant>,
}

impl Server {
    pub fn new(
        config: ServerConfig,
        listener: UnixListener,
        stop: EventFd,
        channel: VmmChannel,
        metrics: Arc<ApiMetrics>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        Ok(Self {
            limits: Limits {
                max_head_bytes: config.max_head_bytes,
                max_body_bytes: config.max_body_bytes,
            },
            config,
            epoll,
            listener,
            stop,
            conns: HashMap::new(),
            waiting: VecDeque::new(),
            next_token: FIRST_CONNECTION,
            api: Dispatcher { channel, metrics },
            accept_paused_until: None,
        })
    }

    fn input_cap(&self) -> usize {
        self.limits.max_head_bytes + self.limits.max_body_bytes
    }

    /// Serves until the stop fd fires.
    pub fn run(&mut self) {
        tracing::info!(
            "API server listening on {}",
            self.config.socket_path.display()
        );
        let mut events = vec![EpollEvent::default(); self.config.max_connections + 2];
        loop {
            let timeout = self.next_timeout_ms(Instant::now());
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    tracing::error!("API server epoll failed, stopping: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    STOP => {
                        let _ = self.stop.read();
                        tracing::debug!("API server stopping");
                        return;
                    }
                    LISTENER => self.accept_all(),
                    token => self.service(token, ev.event_set()),
                }
            }
            let now = Instant::now();
            self.enforce_deadlines(now);
            self.admit_waiting(now);
        }
    }

    /// Milliseconds until the nearest deadline (-1: none).
    fn next_timeout_ms(&self, now: Instant) -> i32 {
        let mut nearest: Option<Instant> = self.accept_paused_until;
        if !self.waiting.is_empty() {
            let retry = now + ADMIT_RETRY;
            nearest = Some(nearest.map_or(retry, |n| n.min(retry)));
        }
        for c in self.conns.values() {
            let deadlines = [
                c.request_started.map(|t| t + self.config.request_timeout),
                c.write_started.map(|t| t + self.config.write_timeout),
            ];
            for d in deadlines.into_iter().flatten() {
                nearest = Some(nearest.map_or(d, |n| n.min(d)));
            }
        }
        match nearest {
            None => -1,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis() + 1;
                i32::try_from(ms).unwrap_or(i32::MAX)
            }
        }
    }

    fn set_listener_interest(&self, events: EventSet) {
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Modify,
            self.listener.as_raw_fd(),
            EpollEvent::new(events, LISTENER),
        ) {
            tracing::error!("cannot update the API listener's epoll interest: {e}");
        }
    }

    fn accept_all(&mut self) {
        loop {
            if self.waiting.len() >= self.config.max_connections {
                // Enough clients queued here; leave the rest in the
                // kernel's backlog until slots free up.
                self.pause_accepting(ADMIT_RETRY);
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.waiting.push_back(stream);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of descriptors or memory: pause accepting instead
                    // of spinning on a listener that stays readable.
                    tracing::warn!("API server cannot accept a connection: {e}");
                    self.pause_accepting(ACCEPT_BACKOFF);
                    break;
                }
            }
        }
        self.admit_waiting(Instant::now());
    }

    fn pause_accepting(&mut self, for_how_long: Duration) {
        if self.accept_paused_until.is_none() {
            self.set_listener_interest(EventSet::empty());
        }
        self.accept_paused_until = Some(Instant::now() + for_how_long);
    }

    /// Moves waiting clients into the table, evicting idle or stuck
    /// connections to make room.
    fn admit_waiting(&mut self, now: Instant) {
        while !self.waiting.is_empty() {
            if self.conns.len() >= self.config.max_connections && !self.evict_one(now) {
                return;
            }
            if let Some(stream) = self.waiting.pop_front() {
                self.add_connection(stream, now);
            }
        }
    }

    fn add_connection(&mut self, stream: std::os::unix::net::UnixStream, now: Instant) {
        let token = self.next_token;
        self.next_token += 1;
        let conn = Connection::new(stream, now);
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            conn.stream.as_raw_fd(),
            EpollEvent::new(conn.interest, token),
        ) {
            tracing::warn!("API server cannot watch a connection: {e}");
            return;
        }
        self.api.metrics.connections_accepted.inc();
        self.conns.insert(token, conn);
    }

    /// Makes room for a waiting client: the connection idle the longest
    /// (if idle for [`IDLE_GRACE`]), else the oldest unfinished request (if
    /// older than [`SLOW_GRACE`]; it is told 408). Returns whether one went.
    fn evict_one(&mut self, now: Instant) -> bool {
        let idle = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle() && now.duration_since(c.last_activity) >= IDLE_GRACE)
            .min_by_key(|(_, c)| c.last_activity)
            .map(|(t, _)| *t);
        let victim = idle.or_else(|| {
            self.conns
                .iter()
                .filter_map(|(t, c)| c.request_started.map(|s| (t, s)))
                .filter(|(_, started)| now.duration_since(*started) >= SLOW_GRACE)
                .min_by_key(|(_, started)| *started)
                .map(|(t, _)| *t)
        });
        let Some(token) = victim else {
            return false;
        };
        if let Some(c) = self.conns.get_mut(&token) {
            if !c.is_idle() {
                let r = Response::fault(
                    408,
                    "The connection was closed to make room for a new client: its request \
                     was too slow to arrive while too many connections were open.",
                )
                .closing();
                c.queue(&r, now);
                c.flush(now);
            }
        }
        self.api.metrics.connections_evicted.inc();
        self.remove(token);
        true
    }

    fn remove(&mut self, token: u64) {
        if let Some(c) = self.conns.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn service(&mut self, token: u64, events: EventSet) {
        let cap = self.input_cap();
        let now = Instant::now();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if events
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            conn.read_available(cap, now);
        }
        loop {
            let before = (conn.inbuf.len(), conn.pending_output());
            process(conn, &self.api, self.limits, now);
            conn.flush(now);
            if (conn.inbuf.len(), conn.pending_output()) == before || conn.broken {
                break;
            }
        }
        self.after_service(token);
    }

    /// Drops a finished connection or refreshes its epoll interest.
    fn after_service(&mut self, token: u64) {
        let cap = self.input_cap();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.is_finished() {
            self.remove(token);
            return;
        }
        let wanted = conn.wanted_interest(cap);
        if wanted != conn.interest {
            conn.interest = wanted;
            if self
                .epoll
                .ctl(
                    ControlOperation::Modify,
                    conn.stream.as_raw_fd(),
                    EpollEvent::new(wanted, token),
                )
                .is_err()
            {
                self.remove(token);
            }
        }
    }

    fn enforce_deadlines(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| now >= t)
            && self.waiting.len() < self.config.max_connections
        {
            self.accept_paused_until = None;
            self.set_listener_interest(EventSet::IN);
        }
        let mut touched = Vec::new();
        for (token, c) in self.conns.iter_mut() {
            if c.write_started
                .is_some_and(|t| now.duration_since(t) >= self.config.write_timeout)
            {
                // The client does not read its responses: give up on it.
                c.broken = true;
                touched.push(*token);
            } else if !c.close_after_write
                && c.request_started
                    .is_some_and(|t| now.duration_since(t) >= self.config.request_timeout)
            {
                self.api.metrics.request_timeouts.inc();
                let msg = format!(
                    "The request was not completed within {} seconds.",
                    self.config.request_timeout.as_secs_f32()
                );
                c.request_started = None;
                c.inbuf.clear();
                c.queue(&Response::fault(408, &msg).closing(), now);
                c.flush(now);
                touched.push(*token);
            }
        }
        for token in touched {
            self.after_service(token);
        }
    }
}

/// Serves every complete request in `conn`'s input, in order.
fn process(conn: &mut Connection, api: &Dispatcher, limits: Limits, now: Instant) {
    while !conn.close_after_write
        && !conn.inbuf.is_empty()
        && conn.pending_output() < OUTPUT_HIGH_WATER
    {
        let head = match parse_head(&conn.inbuf, limits) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                // The request's end is unknown: answer and close.
                api.metrics.protocol_errors.inc();
                tracing::info!("refused an HTTP request: {} {}", e.status, e.message);
                conn.queue(&Response::fault(e.status, &e.message).closing(), now);
                conn.inbuf.clear();
                return;
            }
        };
        let total = head.total_len();
        if conn.inbuf.len() < total {
            if head.expect_continue && !conn.continue_sent {
                conn.queue_raw(CONTINUE, now);
                conn.continue_sent = true;
            }
            return;
        }
        let response = api.respond(&head, &conn.inbuf[head.head_len..total]);
        conn.consume(total, now);
        conn.queue(&response, now);
    }
}
