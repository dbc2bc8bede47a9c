//! The `nginx` object (the error.log line joined to a reset), the `unexplained` event and
//! the `summary` event.
use std::collections::BTreeMap;

use serde::Serialize;

use super::SCHEMA_VERSION;
use crate::nginx::{ErrorLine, LogTime, LoggedLine, UpstreamMatch};
use crate::timefmt::rfc3339_utc;

/// nginx's line, as nginx wrote it (fields read from the left, the request context only
/// where nginx's grammar reads it one way: see `nginx::upstream`).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct NginxJson {
    /// The line's time in UTC (nginx writes its local time, 1 s resolution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The time as nginx wrote it.
    pub local_time: String,
    pub level: &'static str,
    /// The pid nginx logged: its own, in its pid namespace.
    pub pid: u32,
    /// The same process as a pid here, when rsttrace knows it (differs in a container).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<u32>,
    /// `*N`: nginx's number of the client connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<u64>,
    /// `recv() failed (104: Connection reset by peer) while reading response header from upstream`
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How the line's upstream was checked against the reset's peer: `confirmed`,
    /// `confirmed_in_cut_line`, or (joined on worker and time alone) `cut` / `ambiguous`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_check: Option<&'static str>,
    /// nginx (at 2 KiB) or rsttrace cut the line: its end is missing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub line_cut: bool,
    pub log_file: String,
}

fn text(b: Option<&[u8]>) -> Option<String> {
    b.map(|b| String::from_utf8_lossy(b).into_owned())
}

fn local_time(t: &LogTime) -> String {
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

fn check_name(m: UpstreamMatch) -> &'static str {
    match m {
        UpstreamMatch::Confirmed => "confirmed",
        UpstreamMatch::ConfirmedInCutLine => "confirmed_in_cut_line",
        UpstreamMatch::Cut => "cut",
        UpstreamMatch::Ambiguous => "ambiguous",
        UpstreamMatch::Mismatch => "mismatch",
        UpstreamMatch::Absent => "absent",
        UpstreamMatch::Unverifiable => "unverifiable",
    }
}

/// `None` only for bytes that are no nginx line (the stage never hands those over).
pub fn nginx_json(l: &LoggedLine) -> Option<NginxJson> {
    let p = ErrorLine::parse(&l.bytes)?;
    let ctx = p.request_context();
    Some(NginxJson {
        time: l
            .utc
            .map(|u| rfc3339_utc(i128::from(u.earliest) * 1_000_000_000)),
        local_time: local_time(&p.time),
        level: p.level.as_str(),
        pid: p.pid,
        host_pid: l.host_pid,
        connection: p.connection,
        message: String::from_utf8_lossy(p.message).into_owned(),
        errno: p.errno.map(|e| e.code),
        request: text(ctx.request),
        upstream: text(ctx.upstream),
        client: text(ctx.client),
        server: text(ctx.server),
        host: text(ctx.host),
        upstream_check: l.upstream_check.map(check_name),
        line_cut: l.cut || p.cut,
        log_file: l.log_file.display().to_string(),
    })
}

/// `event: "unexplained"`: nginx logged a reset (`104`) that no reset rsttrace saw claims.
#[derive(Serialize, Debug, Clone)]
pub struct UnexplainedJson {
    pub schema_version: u32,
    pub event: &'static str,
    /// The line's time (UTC; 1 s resolution).
    pub time: String,
    pub nginx: NginxJson,
    pub hint: String,
}

pub fn unexplained_json(l: &LoggedLine, lost_total: u64) -> Option<UnexplainedJson> {
    let nginx = nginx_json(l)?;
    let time = l.utc.map_or_else(
        || nginx.local_time.clone(),
        |u| rfc3339_utc(i128::from(u.earliest) * 1_000_000_000),
    );
    let lost = if lost_total > 0 {
        format!(
            " rsttrace lost {lost_total} kernel sample(s) so far (see the `lost` events): raise --buffer-size."
        )
    } else {
        String::new()
    };
    let hint = format!(
        "nginx logged a connection reset that rsttrace did not see: it reached nginx before rsttrace \
         attached (nginx read it later), or its kernel samples were lost, or it happened where \
         rsttrace does not look.{lost}"
    );
    Some(UnexplainedJson {
        schema_version: SCHEMA_VERSION,
        event: "unexplained",
        time,
        nginx,
        hint,
    })
}

/// Samples the kernel could not queue, and malformed ones, since start.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LostTotals {
    pub samples: u64,
    pub decode_errors: u64,
    /// Runs of rsttrace's programs the kernel skipped (see `lost`); absent when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped_runs: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `event: "summary"`: what was printed, counted, as the last line at stop.
#[derive(Serialize, Debug, Clone)]
pub struct SummaryJson {
    pub schema_version: u32,
    pub event: &'static str,
    pub time: String,
    pub started: String,
    pub duration_s: f64,
    /// `reset` lines printed.
    pub resets: u64,
    pub by_cause: BTreeMap<String, u64>,
    pub by_transport: BTreeMap<String, u64>,
    /// By the peer's program name (`(none)`: no local process sent it).
    pub by_peer: BTreeMap<String, u64>,
    /// By the address the receiver had connected to (`unix:PATH` for unix sockets).
    pub by_upstream: BTreeMap<String, u64>,
    /// By `seen_by_receiver`: `true`, `false`, `unknown`.
    pub seen_by_receiver: BTreeMap<String, u64>,
    /// Reset lines that carry nginx's line.
    pub with_nginx_line: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub unexplained: u64,
    pub lost: LostTotals,
}
