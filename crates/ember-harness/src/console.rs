//! Parsers for the consoles of the nested test host (L1) and of the L2
//! guests that ember runs inside it.
//!
//! The L1 console (QEMU's serial port) carries marker lines written by
//! `scripts/nested/l1-init`:
//!
//! ```text
//! @@EMBER-L1-BOOTED uptime_ms=1234
//! @@EMBER-L1 kvm=yes
//! @@EMBER-L1-READY uptime_ms=1500 cpus=2
//! @@EMBER-BEGIN <name>
//! ... whatever the scenario printed (ember's stdout is the L2 console) ...
//! @@EMBER-END <name> rc=<n> ms=<milliseconds>
//! @@EMBER-L1-DONE uptime_ms=9000
//! ```
//!
//! Markers are found anywhere in a line, because a kernel message can be
//! printed in the middle of a user-space line on a shared console.
//!
//! The L2 guest init (`guests/linux/init`) prints `EMBER-GUEST-INIT-READY`,
//! `EMBER-RUN-BEGIN <name>` / `EMBER-RUN-END <name> rc=<n>` and
//! `EMBER-GUEST-INIT-DONE rc=<n>`; ember itself prints
//! `ember-boot-timer: mark=N since_start_us=U cpu_us=C monotonic_ns=M` to
//! stderr. [`GuestOutput::parse`] reads those out of a scenario's section.

use std::collections::BTreeMap;
use std::time::Duration;

/// One marker line of the L1 console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L1Event {
    /// L1's init started (`uptime_ms` as L1 saw it).
    Booted { uptime_ms: Option<u64> },
    /// A `key=value` status line (`kvm=yes`, `scratch=/scratch`, ...).
    Status { key: String, value: String },
    /// Modules are loaded and scenarios are about to run.
    Ready { uptime_ms: Option<u64> },
    /// A scenario starts.
    Begin { name: String },
    /// A scenario ended with exit code `rc` after `ms` milliseconds.
    End {
        name: String,
        rc: Option<i32>,
        ms: Option<u64>,
    },
    /// All scenarios ran; L1 is powering off.
    Done { uptime_ms: Option<u64> },
}

/// Value of `key=` among whitespace-separated words.
fn field<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn num<T: std::str::FromStr>(words: &[&str], key: &str) -> Option<T> {
    field(words, key)?.parse().ok()
}

/// Recognise an L1 marker in one console line (without its line ending).
pub fn parse_l1_marker(line: &str) -> Option<L1Event> {
    let at = line.find("@@EMBER-")?;
    let rest = &line[at + "@@EMBER-".len()..];
    let words: Vec<&str> = rest.split_whitespace().collect();
    let (&kind, args) = words.split_first()?;
    match kind {
        "L1-BOOTED" => Some(L1Event::Booted {
            uptime_ms: num(args, "uptime_ms"),
        }),
        "L1-READY" => Some(L1Event::Ready {
            uptime_ms: num(args, "uptime_ms"),
        }),
        "L1-DONE" => Some(L1Event::Done {
            uptime_ms: num(args, "uptime_ms"),
        }),
        "L1" => {
            let (key, value) = args.first()?.split_once('=')?;
            Some(L1Event::Status {
                key: key.to_string(),
                value: value.to_string(),
            })
        }
        "BEGIN" => Some(L1Event::Begin {
            name: (*args.first()?).to_string(),
        }),
        "END" => Some(L1Event::End {
            name: (*args.first()?).to_string(),
            rc: num(args, "rc"),
            ms: num(args, "ms"),
        }),
        _ => None,
    }
}

/// The console output of one scenario, between its BEGIN and END markers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScenarioSection {
    /// Scenario name.
    pub name: String,
    /// Exit code, if the END marker was seen.
    pub rc: Option<i32>,
    /// Duration as measured inside L1, from the END marker.
    pub l1_ms: Option<u64>,
    /// Host time (since QEMU started) when BEGIN was read.
    pub began_at: Duration,
    /// Host time when END was read.
    pub ended_at: Option<Duration>,
    /// The lines printed in between (line endings removed).
    pub lines: Vec<String>,
    /// Whether L1 killed it for running past its time limit.
    pub timed_out: bool,
}

impl ScenarioSection {
    /// The section's output as one string, one `\n` after each line.
    pub fn output(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// Whether the scenario finished (END marker seen).
    pub fn finished(&self) -> bool {
        self.rc.is_some() || self.ended_at.is_some()
    }
}

/// Incremental parser of the L1 console: feed it bytes as they arrive.
#[derive(Debug, Default)]
pub struct ConsoleParser {
    partial: Vec<u8>,
    lines: Vec<String>,
    /// Scenario sections in the order they began.
    pub sections: Vec<ScenarioSection>,
    current: Option<usize>,
    /// `@@EMBER-L1 key=value` lines (the last value wins).
    pub status: BTreeMap<String, String>,
    /// Host time at which L1's init announced itself.
    pub booted_at: Option<Duration>,
    /// L1's uptime when its init started.
    pub booted_uptime_ms: Option<u64>,
    /// Host time at which L1 was ready to run scenarios.
    pub ready_at: Option<Duration>,
    /// Host time at which L1 printed `@@EMBER-L1-DONE`.
    pub done_at: Option<Duration>,
    /// L1's uptime when it finished.
    pub done_uptime_ms: Option<u64>,
}

impl ConsoleParser {
    /// A parser with no input yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed console bytes read at host time `at` (since QEMU started).
    /// Complete lines are parsed; a trailing partial line is kept.
    pub fn feed(&mut self, bytes: &[u8], at: Duration) {
        self.partial.extend_from_slice(bytes);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=pos).collect();
            self.line(&raw[..raw.len() - 1], at);
        }
    }

    /// Parse the trailing partial line, if any (at the end of the input).
    pub fn finish(&mut self, at: Duration) {
        if !self.partial.is_empty() {
            let raw = std::mem::take(&mut self.partial);
            self.line(&raw, at);
        }
    }

    fn line(&mut self, raw: &[u8], at: Duration) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches('\r').replace('\r', "");
        match parse_l1_marker(&text) {
            Some(L1Event::Booted { uptime_ms }) => {
                self.booted_at.get_or_insert(at);
                self.booted_uptime_ms = uptime_ms;
            }
            Some(L1Event::Ready { .. }) => {
                self.ready_at.get_or_insert(at);
            }
            Some(L1Event::Status { key, value }) => {
                if key == "scenario-timeout" {
                    if let Some(s) = self.sections.iter_mut().rev().find(|s| s.name == value) {
                        s.timed_out = true;
                    }
                }
                self.status.insert(key, value);
            }
            Some(L1Event::Begin { name }) => {
                self.sections.push(ScenarioSection {
                    name,
                    began_at: at,
                    ..ScenarioSection::default()
                });
                self.current = Some(self.sections.len() - 1);
            }
            Some(L1Event::End { name, rc, ms }) => {
                let idx = match self.current {
                    Some(i) if self.sections[i].name == name => Some(i),
                    _ => self.sections.iter().rposition(|s| s.name == name),
                };
                if let Some(i) = idx {
                    let s = &mut self.sections[i];
                    s.rc = rc;
                    s.l1_ms = ms;
                    s.ended_at = Some(at);
                }
                self.current = None;
            }
            Some(L1Event::Done { uptime_ms }) => {
                self.done_at.get_or_insert(at);
                self.done_uptime_ms = uptime_ms;
                self.current = None;
            }
            None => {
                if let Some(i) = self.current {
                    self.sections[i].lines.push(text.clone());
                }
            }
        }
        self.lines.push(text);
    }

    /// All complete lines read so far.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The whole console so far as text (one `\n` after each line).
    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
    }

    /// The last `n` lines, joined with `\n`.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].join("\n")
    }

    /// The section of the named scenario (the last one of that name).
    pub fn section(&self, name: &str) -> Option<&ScenarioSection> {
        self.sections.iter().rev().find(|s| s.name == name)
    }

    /// Whether L1 reported a working `/dev/kvm` (None: not reported yet).
    pub fn kvm(&self) -> Option<bool> {
        self.status.get("kvm").map(|v| v == "yes")
    }

    /// Whether L1 printed its final marker.
    pub fn done(&self) -> bool {
        self.done_at.is_some()
    }
}

/// One `ember-boot-timer:` line printed by ember (`--boot-timer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimer {
    /// Which write to the boot-timer port this was (ember counts them).
    pub mark: u64,
    /// Microseconds since ember started (None if ember did not print it).
    pub since_start_us: Option<u64>,
    /// CPU time ember used, in microseconds.
    pub cpu_us: Option<u64>,
    /// CLOCK_MONOTONIC at the write, in nanoseconds.
    pub monotonic_ns: Option<u64>,
}

impl BootTimer {
    /// Parse a line containing `ember-boot-timer: mark=N ...`; every field
    /// but `mark` is optional (their order does not matter).
    pub fn parse(line: &str) -> Option<Self> {
        let at = line.find("ember-boot-timer:")?;
        let words: Vec<&str> = line[at..].split_whitespace().skip(1).collect();
        Some(BootTimer {
            mark: num(&words, "mark")?,
            since_start_us: num(&words, "since_start_us"),
            cpu_us: num(&words, "cpu_us"),
            monotonic_ns: num(&words, "monotonic_ns"),
        })
    }
}

/// "12.34" (seconds, as in /proc/uptime) to milliseconds.
fn seconds_to_ms(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut ms: u64 = whole.parse::<u64>().ok()?.checked_mul(1000)?;
    let frac3: String = frac.chars().chain("000".chars()).take(3).collect();
    ms += frac3.parse::<u64>().ok()?;
    Some(ms)
}

/// One command the L2 guest init ran (`EMBER-RUN-BEGIN/END`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestRun {
    /// The `ember.run=` name.
    pub name: String,
    /// Exit status, if the END marker was seen.
    pub rc: Option<i32>,
    /// Lines printed in between.
    pub lines: Vec<String>,
}

impl GuestRun {
    /// The run's output, one `\n` after each line.
    pub fn output(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// What an L2 guest (and ember) printed, read from a scenario's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestOutput {
    /// The `EMBER-GUEST-INIT-READY ...` line, if the guest got that far.
    pub ready_line: Option<String>,
    /// Commands run by the guest init, in order.
    pub runs: Vec<GuestRun>,
    /// `EMBER-GUEST-INIT-DONE rc=N`.
    pub done_rc: Option<i32>,
    /// Whether the guest saw Ctrl-Alt-Del (`EMBER-GUEST-CTRL-ALT-DEL`).
    pub ctrl_alt_del: bool,
    /// Boot timer lines printed by ember.
    pub boot_timers: Vec<BootTimer>,
    /// `EMBER-EXIT rc=N` if the scenario printed ember's exit code that way.
    pub ember_rc: Option<i32>,
    /// `EMBER-START uptime=S.CC`: L1's /proc/uptime (10 ms steps) just
    /// before ember started, in milliseconds.
    pub ember_start_uptime_ms: Option<u64>,
}

impl GuestOutput {
    /// Parse guest markers out of console text (any line endings).
    pub fn parse(text: &str) -> Self {
        let mut out = GuestOutput::default();
        let mut current: Option<usize> = None;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(t) = BootTimer::parse(line) {
                out.boot_timers.push(t);
                continue;
            }
            let words: Vec<&str> = match line.find("EMBER-") {
                // Only whole-word markers: not "@@EMBER-..." of L1.
                Some(at) if at == 0 || !line[..at].ends_with('@') => {
                    line[at..].split_whitespace().collect()
                }
                _ => Vec::new(),
            };
            match words.first().copied() {
                Some("EMBER-GUEST-INIT-READY") => {
                    out.ready_line.get_or_insert_with(|| line.to_string());
                }
                Some("EMBER-RUN-BEGIN") => {
                    out.runs.push(GuestRun {
                        name: words.get(1).unwrap_or(&"").to_string(),
                        ..GuestRun::default()
                    });
                    current = Some(out.runs.len() - 1);
                }
                Some("EMBER-RUN-END") => {
                    if let Some(i) = current.take() {
                        out.runs[i].rc = num(&words[1..], "rc");
                    }
                }
                Some("EMBER-GUEST-INIT-DONE") => out.done_rc = num(&words[1..], "rc"),
                Some("EMBER-GUEST-CTRL-ALT-DEL") => out.ctrl_alt_del = true,
                Some("EMBER-EXIT") => out.ember_rc = num(&words[1..], "rc"),
                Some("EMBER-START") => {
                    out.ember_start_uptime_ms = field(&words[1..], "uptime").and_then(seconds_to_ms)
                }
                _ => {
                    if let Some(i) = current {
                        out.runs[i].lines.push(line.to_string());
                    }
                }
            }
        }
        out
    }

    /// Whether the guest init reached its ready marker.
    pub fn ready(&self) -> bool {
        self.ready_line.is_some()
    }

    /// Time from ember's start to the guest's first boot-timer write:
    /// ember's `since_start_us` if it printed one, else its CLOCK_MONOTONIC
    /// stamp minus the `EMBER-START` uptime (10 ms resolution; L1's uptime
    /// and CLOCK_MONOTONIC agree because L1 never suspends).
    pub fn boot_time(&self) -> Option<Duration> {
        let t = self.boot_timers.first()?;
        if let Some(us) = t.since_start_us {
            return Some(Duration::from_micros(us));
        }
        let start_ns = self.ember_start_uptime_ms? * 1_000_000;
        let at_ns = t.monotonic_ns?;
        at_ns.checked_sub(start_ns).map(Duration::from_nanos)
    }

    /// The named run, if the guest started it.
    pub fn run(&self, name: &str) -> Option<&GuestRun> {
        self.runs.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn markers() {
        assert_eq!(
            parse_l1_marker("@@EMBER-END boot-l2 rc=3 ms=1500"),
            Some(L1Event::End {
                name: "boot-l2".into(),
                rc: Some(3),
                ms: Some(1500)
            })
        );
        assert_eq!(
            parse_l1_marker("[   12.3] kvm: something @@EMBER-BEGIN x"),
            Some(L1Event::Begin { name: "x".into() })
        );
        assert_eq!(
            parse_l1_marker("@@EMBER-L1 kvm=yes"),
            Some(L1Event::Status {
                key: "kvm".into(),
                value: "yes".into()
            })
        );
        assert_eq!(
            parse_l1_marker("@@EMBER-L1-BOOTED uptime_ms=2040"),
            Some(L1Event::Booted {
                uptime_ms: Some(2040)
            })
        );
        assert_eq!(parse_l1_marker("@@EMBER-BEGIN"), None);
        assert_eq!(parse_l1_marker("@@EMBER-WHAT x"), None);
        assert_eq!(parse_l1_marker("plain line"), None);
        // A killed scenario has no ms= but an rc.
        assert_eq!(
            parse_l1_marker("@@EMBER-END a rc=137"),
            Some(L1Event::End {
                name: "a".into(),
                rc: Some(137),
                ms: None
            })
        );
    }

    #[test]
    fn sections_from_split_chunks() {
        let console = "Linux version 6.1\r\n@@EMBER-L1-BOOTED uptime_ms=900\r\n\
            @@EMBER-L1 kvm=yes\r\n@@EMBER-L1-READY uptime_ms=950 cpus=2\r\n\
            @@EMBER-BEGIN one\r\nhello\r\r\nworld\r\n@@EMBER-END one rc=0 ms=12\r\n\
            @@EMBER-BEGIN two\r\nbad\r\n@@EMBER-END two rc=4 ms=7\r\n\
            @@EMBER-L1-DONE uptime_ms=2000\r\n";
        let mut p = ConsoleParser::new();
        // Feed in awkward 7-byte chunks to exercise partial lines.
        for (i, chunk) in console.as_bytes().chunks(7).enumerate() {
            p.feed(chunk, ms(i as u64));
        }
        p.finish(ms(1000));
        assert_eq!(p.kvm(), Some(true));
        assert!(p.done());
        assert_eq!(p.booted_uptime_ms, Some(900));
        assert_eq!(p.done_uptime_ms, Some(2000));
        assert_eq!(p.sections.len(), 2);
        let one = p.section("one").unwrap();
        assert_eq!(one.rc, Some(0));
        assert_eq!(one.l1_ms, Some(12));
        assert_eq!(one.lines, vec!["hello", "world"]);
        assert_eq!(one.output(), "hello\nworld\n");
        let two = p.section("two").unwrap();
        assert_eq!(two.rc, Some(4));
        assert!(two.began_at >= one.ended_at.unwrap());
        assert_eq!(p.lines()[0], "Linux version 6.1");
        assert!(p.tail(1).contains("L1-DONE"));
    }

    #[test]
    fn unfinished_scenario_and_partial_line() {
        let mut p = ConsoleParser::new();
        p.feed(
            b"@@EMBER-BEGIN slow\n@@EMBER-L1 scenario-timeout=slow\n",
            ms(1),
        );
        p.feed(b"@@EMBER-END slow rc=137 ms=3000\n", ms(2));
        assert!(p.section("slow").unwrap().timed_out);
        assert_eq!(p.section("slow").unwrap().rc, Some(137));
        p.feed(b"@@EMBER-BEGIN hang\nstill running\nno newline", ms(5));
        let s = p.section("hang").unwrap();
        assert!(!s.finished());
        assert_eq!(s.lines, vec!["still running"]);
        p.finish(ms(6));
        assert_eq!(p.section("hang").unwrap().lines.len(), 2);
        assert!(!p.done());
        assert_eq!(p.kvm(), None);
    }

    #[test]
    fn end_matches_by_name_and_ignores_stray_end() {
        let mut p = ConsoleParser::new();
        p.feed(b"@@EMBER-END ghost rc=1\n@@EMBER-BEGIN a\nx\n", ms(1));
        p.feed(b"@@EMBER-END a rc=0 ms=1\ny\n", ms(2));
        assert!(p.section("ghost").is_none());
        assert_eq!(p.section("a").unwrap().lines, vec!["x"]);
        assert_eq!(p.section("a").unwrap().ended_at, Some(ms(2)));
    }

    #[test]
    fn invalid_utf8_is_tolerated() {
        let mut p = ConsoleParser::new();
        p.feed(b"@@EMBER-BEGIN u\n\xff\xfe ok\n@@EMBER-END u rc=0\n", ms(1));
        assert!(p.section("u").unwrap().lines[0].ends_with(" ok"));
    }

    #[test]
    fn boot_timer_line() {
        let t = BootTimer::parse(
            "ember-boot-timer: mark=1 since_start_us=123456 cpu_us=2000 monotonic_ns=99",
        )
        .unwrap();
        assert_eq!(t.mark, 1);
        assert_eq!(t.since_start_us, Some(123_456));
        assert_eq!(t.cpu_us, Some(2000));
        assert_eq!(t.monotonic_ns, Some(99));
        assert!(BootTimer::parse("ember-boot-timer: mark=x").is_none());
        // As ember's boot-timer device printed it at first.
        let t =
            BootTimer::parse("ember-boot-timer: mark=0 monotonic_ns=13802623106 cpu_us=11702648")
                .unwrap();
        assert_eq!(t.mark, 0);
        assert_eq!(t.since_start_us, None);
        assert_eq!(t.monotonic_ns, Some(13_802_623_106));
        assert_eq!(t.cpu_us, Some(11_702_648));
        assert!(BootTimer::parse("nothing").is_none());
    }

    #[test]
    fn guest_output() {
        let text = "[    0.000000] Linux version 6.1.0\r\n\
            ember-boot-timer: mark=1 since_start_us=5000 cpu_us=10 monotonic_ns=1\n\
            EMBER-GUEST-INIT-READY kernel=6.1.0 cpus=2\r\n\
            EMBER-RUN-BEGIN hello\r\n\
            ember-demo: hello from the guest\r\n\
            EMBER-RUN-END hello rc=0\r\n\
            EMBER-RUN-BEGIN fails\r\n\
            EMBER-RUN-END fails rc=2\r\n\
            EMBER-GUEST-INIT-DONE rc=2\r\n\
            @@EMBER-END not-a-guest-marker rc=0\n\
            EMBER-EXIT rc=0\n\
            EMBER-START uptime=1.50\n";
        let g = GuestOutput::parse(text);
        assert!(g.ready());
        assert_eq!(g.runs.len(), 2);
        assert_eq!(g.run("hello").unwrap().rc, Some(0));
        assert_eq!(
            g.run("hello").unwrap().output(),
            "ember-demo: hello from the guest\n"
        );
        assert_eq!(g.run("fails").unwrap().rc, Some(2));
        assert_eq!(g.done_rc, Some(2));
        assert_eq!(g.boot_timers.len(), 1);
        assert_eq!(g.boot_timers[0].since_start_us, Some(5000));
        assert_eq!(g.ember_rc, Some(0));
        assert!(!g.ctrl_alt_del);
        assert_eq!(g.ember_start_uptime_ms, Some(1500));
        assert_eq!(seconds_to_ms("12.34"), Some(12_340));
        assert_eq!(seconds_to_ms("7"), Some(7000));
        assert_eq!(seconds_to_ms("x.1"), None);
        assert_eq!(g.boot_time(), Some(Duration::from_micros(5000)));
        let fallback = GuestOutput::parse(
            "EMBER-START uptime=13.50\nember-boot-timer: mark=0 monotonic_ns=14000000000 cpu_us=1\n",
        );
        assert_eq!(fallback.boot_time(), Some(Duration::from_millis(500)));
        let empty = GuestOutput::parse("kernel panic\n");
        assert!(!empty.ready());
        assert!(empty.runs.is_empty());
    }
}
