//! Where verdicts and loss reports go: JSON lines or text on stdout, through one buffer.
use std::io::{self, BufWriter, Stdout, Write};

use crate::{
    model::{Attribution, Refusal},
    nginx::LoggedLine,
    report::{self, LostJson, Resolve, SummaryJson, SCHEMA_VERSION},
    timefmt::Rfc3339,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// One human-readable line per reset, with its hint.
    Text,
}

pub struct Output {
    format: Format,
    out: BufWriter<Stdout>,
    /// One JSON line at a time, reused: no allocation per line.
    line: Vec<u8>,
}

impl Output {
    pub fn stdout(format: Format) -> Self {
        Self {
            format,
            out: BufWriter::with_capacity(64 * 1024, io::stdout()),
            line: Vec::with_capacity(4096),
        }
    }

    /// A reset, with the line nginx logged for it when the join found one. `resolve`: the
    /// live facts, or those recorded when the verdict left the engine (it waited for its line).
    pub fn reset(
        &mut self,
        verdict: &Attribution,
        nginx: Option<&LoggedLine>,
        resolve: &dyn Resolve,
    ) -> io::Result<()> {
        let mut json = report::reset_json(verdict, resolve);
        json.nginx = nginx.and_then(report::nginx_json);
        match self.format {
            Format::Json => self.json(&json),
            Format::Text => writeln!(self.out, "{}", report::render_text(&json)),
        }
    }

    pub fn refusal(&mut self, refusal: &Refusal, resolve: &dyn Resolve) -> io::Result<()> {
        let json = report::refused_json(refusal, resolve);
        match self.format {
            Format::Json => self.json(&json),
            Format::Text => writeln!(self.out, "{}", report::render_refused_text(&json)),
        }
    }

    /// Samples lost since the previous report (`lost`), since start (`total`), and
    /// malformed ones skipped (`decode_errors`), at wall time `now_ns`.
    pub fn lost(
        &mut self,
        now_ns: i128,
        lost: u64,
        total: u64,
        decode_errors: u64,
        skipped: (u64, u64),
    ) -> io::Result<()> {
        let (skipped, skipped_total) = skipped;
        let json = LostJson {
            schema_version: SCHEMA_VERSION,
            event: "lost",
            time: Rfc3339(now_ns),
            count: lost,
            total,
            decode_errors: (decode_errors > 0).then_some(decode_errors),
            skipped_runs: (skipped > 0).then_some(skipped),
            skipped_runs_total: (skipped_total > 0).then_some(skipped_total),
        };
        match self.format {
            Format::Json => self.json(&json),
            Format::Text => {
                let mut text = format!("{} LOST", json.time);
                if lost > 0 || skipped == 0 {
                    text.push_str(&format!(
                        " {lost} kernel samples (ring buffer full; {total} since start); raise --buffer-size"
                    ));
                }
                if skipped > 0 {
                    text.push_str(&format!(
                        " {skipped} program runs skipped by the kernel ({skipped_total} since start): \
                         another tracing program was running on that CPU"
                    ));
                }
                writeln!(self.out, "{text}")
            }
        }
    }

    /// An nginx reset line no reset rsttrace saw explains; `lost_total`: samples lost so far.
    pub fn unexplained(&mut self, line: &LoggedLine, lost_total: u64) -> io::Result<()> {
        let Some(json) = report::unexplained_json(line, lost_total) else {
            return Ok(());
        };
        match self.format {
            Format::Json => self.json(&json),
            Format::Text => writeln!(self.out, "{}", report::render_unexplained_text(&json)),
        }
    }

    /// The last line: JSON on stdout, or a small table on stderr for `--format text` (whose
    /// stdout is for the resets alone).
    pub fn summary(&mut self, json: &SummaryJson) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&json),
            Format::Text => {
                crate::note!("{}", report::render_summary_text(json));
                Ok(())
            }
        }
    }

    fn json<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        self.line.clear();
        report::json_line(&mut self.line, value)?;
        self.out.write_all(&self.line)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
