//! What rsttrace printed during a run, counted for the `summary` event at stop.
use std::collections::BTreeMap;

use crate::model::{Attribution, Refusal, Role, Transport};
use crate::report::{LostTotals, SummaryJson, SCHEMA_VERSION};
use crate::timefmt::rfc3339_utc;

/// Distinct peers / upstreams listed; the rest are counted under `other`.
pub const MAX_KEYS: usize = 100;
const OTHER: &str = "other";

/// Counts by key, at most [`MAX_KEYS`] keys.
#[derive(Debug, Default, Clone)]
pub struct Capped(BTreeMap<String, u64>);

impl Capped {
    fn add(&mut self, key: &str) {
        if let Some(n) = self.0.get_mut(key) {
            *n += 1;
        } else if self.0.len() < MAX_KEYS {
            self.0.insert(key.to_string(), 1);
        } else {
            *self.0.entry(OTHER.to_string()).or_default() += 1;
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tally {
    started_unix_ns: i128,
    resets: u64,
    by_cause: BTreeMap<&'static str, u64>,
    by_transport: BTreeMap<&'static str, u64>,
    by_peer: Capped,
    by_upstream: Capped,
    seen: BTreeMap<&'static str, u64>,
    with_nginx_line: u64,
    refused: u64,
    timed_out: u64,
    unexplained: u64,
}

impl Tally {
    pub fn new(started_unix_ns: i128) -> Self {
        Self {
            started_unix_ns,
            resets: 0,
            by_cause: BTreeMap::new(),
            by_transport: BTreeMap::new(),
            by_peer: Capped::default(),
            by_upstream: Capped::default(),
            seen: BTreeMap::new(),
            with_nginx_line: 0,
            refused: 0,
            timed_out: 0,
            unexplained: 0,
        }
    }

    /// A reset line printed (`nginx`: with nginx's line).
    pub fn reset(&mut self, a: &Attribution, nginx: bool) {
        self.resets += 1;
        *self.by_cause.entry(a.cause.as_str()).or_default() += 1;
        *self.by_transport.entry(a.transport.as_str()).or_default() += 1;
        self.by_peer
            .add(a.peer.as_ref().map_or("(none)", |p| p.comm.as_str()));
        // The remote end is an upstream only for connections the receiver made; a client's
        // address (an ephemeral port) would only fill the list.
        if a.receiver_role != Some(Role::Server) {
            match a.transport {
                Transport::Tcp => self.by_upstream.add(&a.remote),
                Transport::Unix => self.by_upstream.add(&format!("unix:{}", a.remote)),
            }
        }
        let seen = match a.seen_by_receiver {
            Some(true) => "true",
            Some(false) => "false",
            None => "unknown",
        };
        *self.seen.entry(seen).or_default() += 1;
        self.with_nginx_line += u64::from(nginx);
    }

    pub fn refusal(&mut self, f: &Refusal) {
        if f.error == 111 {
            self.refused += 1;
        } else {
            self.timed_out += 1;
        }
    }

    pub fn unexplained(&mut self) {
        self.unexplained += 1;
    }

    pub fn resets(&self) -> u64 {
        self.resets
    }

    pub fn json(&self, now_unix_ns: i128, lost: LostTotals) -> SummaryJson {
        let duration_ns = (now_unix_ns - self.started_unix_ns).max(0);
        SummaryJson {
            schema_version: SCHEMA_VERSION,
            event: "summary",
            time: rfc3339_utc(now_unix_ns),
            started: rfc3339_utc(self.started_unix_ns),
            duration_s: (duration_ns / 1_000_000) as f64 / 1000.0,
            resets: self.resets,
            by_cause: self
                .by_cause
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            by_transport: self
                .by_transport
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            by_peer: self.by_peer.0.clone(),
            by_upstream: self.by_upstream.0.clone(),
            seen_by_receiver: self.seen.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            with_nginx_line: self.with_nginx_line,
            refused: self.refused,
            timed_out: self.timed_out,
            unexplained: self.unexplained,
            lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cause, Task};

    fn reset(peer: &str, remote: &str, role: Option<Role>) -> Attribution {
        let mut a = Attribution::pending(
            1,
            Transport::Tcp,
            "127.0.0.1:40000".into(),
            remote.into(),
            1,
            None,
        );
        a.cause = Cause::Abort { aborted_by: None };
        a.peer = Some(Task {
            pid: 2,
            tid: 2,
            comm: peer.into(),
        });
        a.receiver_role = role;
        a.seen_by_receiver = Some(true);
        a
    }

    #[test]
    fn counts_by_cause_peer_and_upstream() {
        let mut t = Tally::new(1_000_000_000);
        t.reset(
            &reset("gunicorn", "127.0.0.1:8000", Some(Role::Client)),
            true,
        );
        t.reset(&reset("gunicorn", "127.0.0.1:8000", None), false);
        t.reset(&reset("curl", "127.0.0.1:51000", Some(Role::Server)), false);
        t.unexplained();
        let j = t.json(3_500_000_000, LostTotals::default());
        assert_eq!(j.resets, 3);
        assert_eq!(j.duration_s, 2.5);
        assert_eq!(j.by_cause.get("abort"), Some(&3));
        assert_eq!(j.by_peer.get("gunicorn"), Some(&2));
        assert_eq!(j.by_upstream.len(), 1, "a client's address is no upstream");
        assert_eq!(j.by_upstream.get("127.0.0.1:8000"), Some(&2));
        assert_eq!(j.with_nginx_line, 1);
        assert_eq!(j.unexplained, 1);
        let v = serde_json::to_value(&j).expect("json");
        assert_eq!(v["event"], "summary");
        assert_eq!(v["seen_by_receiver"]["true"], 3);
    }

    #[test]
    fn keys_are_capped() {
        let mut t = Tally::new(0);
        for i in 0..MAX_KEYS + 7 {
            t.reset(&reset(&format!("p{i}"), "127.0.0.1:1", None), false);
        }
        let j = t.json(0, LostTotals::default());
        assert_eq!(j.by_peer.len(), MAX_KEYS + 1);
        assert_eq!(j.by_peer.get("other"), Some(&7));
    }
}
