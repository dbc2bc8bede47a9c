//! A million real resets: loopback connections aborted by the kernel (RST, TCP_ABORT_ON_CLOSE,
//! each confirmed by the client's ECONNRESET), made as fast as one thread can under rsttrace at
//! its default buffer. Every one must be reported or counted as lost — and none lost — in
//! bounded memory, at a CPU cost per reset that does not grow. Run through `cargo xtask test`
//! (with the release build: this is the product's own figure).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsttrace_tests::storm::{self, Plan};
use rsttrace_tests::{
    peak_rss_bytes, require_root, wait_until, StreamingRsttrace, RSTTRACE_RELEASE_BIN_ENV,
};

const RESETS: u64 = 1_000_000;
const TENTHS: u64 = 10;
const MAX_PEAK_RSS: u64 = 30_000_000;
/// CPU per reset at the end over the start (medians of three tenths), at most (issue 10);
/// absolute, or relative to the generator's CPU in the same tenths.
const MAX_DRIFT: f64 = 1.2;

/// What rsttrace printed: reset lines received by this process (the generator runs in it)
/// by their remote port (the generator's listener), and samples the kernel could not queue.
#[derive(Default)]
struct Tally {
    resets_by_remote_port: HashMap<u16, PortTally>,
    lost: u64,
    lines: u64,
}

#[derive(Default)]
struct PortTally {
    /// Received by this process.
    ours: u64,
    /// Of those, explained as an `abort` by this process (the truth).
    abort_by_us: u64,
    /// Received by another process (another network namespace may reuse the port number).
    strangers: u64,
    /// A few reset lines of ours not explained as our abort, for the report.
    samples: Vec<String>,
}

impl Tally {
    /// Cheap on purpose (a million lines arrive while the generator runs): substring tests,
    /// JSON parsing only for the rare `lost` line.
    fn add(&mut self, line: &str, me: &str) {
        self.lines += 1;
        if line.contains("\"event\":\"reset\"") {
            let Some(port) = remote_port(line) else {
                return;
            };
            let t = self.resets_by_remote_port.entry(port).or_default();
            if !line.contains(&format!("\"receiver\":{me}")) {
                t.strangers += 1;
                return;
            }
            t.ours += 1;
            if line.contains("\"cause\":\"abort\"") && line.contains(&format!("\"peer\":{me}")) {
                t.abort_by_us += 1;
            } else if t.samples.len() < 3 {
                t.samples.push(line.to_string());
            }
        } else if line.contains("\"event\":\"lost\"") {
            let v: serde_json::Value = serde_json::from_str(line).expect("a lost line is JSON");
            // A program run the kernel skipped may have been one of the samples.
            self.lost += v["count"].as_u64().expect("a lost line has a count")
                + v["skipped_runs"].as_u64().unwrap_or(0);
        }
    }

    /// The tallies of the generator's listeners.
    /// The tallies of the tenths' listener ports, each port once: a tenth's listener may
    /// get the port an earlier tenth's had (bind to port 0 after that one closed).
    fn of<'a>(&'a self, tenths: &'a [Tenth]) -> impl Iterator<Item = &'a PortTally> + 'a {
        let mut ports: Vec<u16> = tenths.iter().map(|t| t.listener_port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
            .into_iter()
            .filter_map(|port| self.resets_by_remote_port.get(&port))
    }
}

/// `"remote":"127.0.0.1:PORT"` → PORT.
fn remote_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("\"remote\":\"")? + 10..];
    let endpoint = &rest[..rest.find('"')?];
    endpoint.rsplit(':').next()?.parse().ok()
}

/// One tenth of the run.
struct Tenth {
    made: u64,
    unexpected: u64,
    listener_port: u16,
    elapsed: Duration,
    generator_cpu: Duration,
    rsttrace_cpu: Duration,
}

#[test]
fn a_million_real_resets_are_all_reported_in_bounded_memory_and_cpu() {
    require_root();
    let bin = std::env::var(RSTTRACE_RELEASE_BIN_ENV)
        .expect("RSTTRACE_RELEASE_BIN (run through cargo xtask test)");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sink = Arc::clone(&tally);
    let aborts_before = storm::tcp_abort_on_close().expect("reading TcpExt TCPAbortOnClose");
    let me = format!("{{\"pid\":{},", std::process::id());
    let tool = StreamingRsttrace::start(bin.as_ref(), &[], move |line| {
        sink.lock().expect("the tally lock").add(line, &me);
    })
    .expect("starting rsttrace");
    let pid = tool.pid();
    let started = Instant::now();
    let mut tenths = Vec::new();
    let mut cpu_before = storm::process_cpu(pid).expect("rsttrace's CPU clock");
    for _ in 0..TENTHS {
        let outcome = storm::run(&Plan {
            max_resets: RESETS / TENTHS,
            max_time: Duration::from_secs(600),
            interval: None,
            record: false,
            cpu: None,
        })
        .expect("the reset generator");
        let cpu = storm::process_cpu(pid).expect("rsttrace's CPU clock");
        tenths.push(Tenth {
            made: outcome.made,
            unexpected: outcome.unexpected,
            listener_port: outcome.listener_port,
            elapsed: outcome.elapsed,
            generator_cpu: outcome.cpu,
            rsttrace_cpu: cpu.saturating_sub(cpu_before),
        });
        cpu_before = cpu;
    }
    let made: u64 = tenths.iter().map(|t| t.made).sum();
    let accounted = |t: &Tally| t.of(&tenths).map(|p| p.ours).sum::<u64>() + t.lost;
    // rsttrace drains its ring every 10 ms: wait for its last lines before stopping it.
    wait_until(Duration::from_secs(30), || {
        (accounted(&tally.lock().expect("the tally lock")) >= made).then_some(())
    });
    let kernel_aborts =
        storm::tcp_abort_on_close().expect("reading TcpExt TCPAbortOnClose") - aborts_before;
    let peak_rss = peak_rss_bytes(pid).expect("rsttrace's VmHWM");
    let elapsed = started.elapsed();
    // The consumer comes back once it has seen every line; the tally holds its counts.
    drop(tool.stop().expect("rsttrace exits 0"));
    let tally = tally.lock().expect("the tally lock");
    report(&tenths, &tally, kernel_aborts, peak_rss, elapsed);
    check(&tenths, &tally, made, kernel_aborts, peak_rss);
}

fn per_reset_us(cpu: Duration, resets: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / resets.max(1) as f64
}

fn report(tenths: &[Tenth], tally: &Tally, kernel_aborts: u64, peak_rss: u64, elapsed: Duration) {
    for line in tally.of(tenths).flat_map(|p| &p.samples) {
        eprintln!("million: not explained as this process's abort: {line}");
    }
    for (i, t) in tenths.iter().enumerate() {
        eprintln!(
            "million: tenth {:>2}: {} resets in {:.1} s ({:.0}/s), generator {:.1} us/reset, \
             rsttrace {:.2} us/reset",
            i + 1,
            t.made,
            t.elapsed.as_secs_f64(),
            t.made as f64 / t.elapsed.as_secs_f64(),
            per_reset_us(t.generator_cpu, t.made),
            per_reset_us(t.rsttrace_cpu, t.made),
        );
    }
    let reported: u64 = tally.of(tenths).map(|p| p.ours).sum();
    let abort: u64 = tally.of(tenths).map(|p| p.abort_by_us).sum();
    let strangers: u64 = tally.of(tenths).map(|p| p.strangers).sum();
    eprintln!(
        "million: made {}, reported {reported} ({abort} explained as this process's abort), \
         lost {}, kernel TCPAbortOnClose +{kernel_aborts}, {} lines in all ({strangers} for the \
         same ports received by other processes); peak RSS {:.1} MB; {:.0} s in all",
        tenths.iter().map(|t| t.made).sum::<u64>(),
        tally.lost,
        tally.lines,
        peak_rss as f64 / 1e6,
        elapsed.as_secs_f64()
    );
}

fn check(tenths: &[Tenth], tally: &Tally, made: u64, kernel_aborts: u64, peak_rss: u64) {
    let unexpected: u64 = tenths.iter().map(|t| t.unexpected).sum();
    assert_eq!(unexpected, 0, "connections that did not end in ECONNRESET");
    assert_eq!(made, RESETS, "the generator made fewer resets than asked");
    // The kernel's own count: other aborts on the host may add to it, never subtract.
    assert!(
        kernel_aborts >= made,
        "the kernel counted {kernel_aborts} aborts on close for {made} resets made"
    );
    let reported: u64 = tally.of(tenths).map(|p| p.ours).sum();
    assert_eq!(reported + tally.lost, made, "reported + lost != made");
    assert_eq!(tally.lost, 0, "samples lost at the default buffer");
    // Every one is the generator's own close() of a socket with unread data.
    let abort: u64 = tally.of(tenths).map(|p| p.abort_by_us).sum();
    assert_eq!(
        abort, reported,
        "reported resets not explained as this process's abort (samples above)"
    );
    assert!(
        peak_rss <= MAX_PEAK_RSS,
        "rsttrace's peak RSS {peak_rss} bytes is over {MAX_PEAK_RSS}"
    );
    // Growth is read from the median of the first three tenths against the last three: on
    // these shared 2-vCPU machines a single tenth's CPU per reset swings by +-15 % with no
    // trend (three runs of the same build: 5.2 to 6.9 us in any position), so one tenth
    // against another fails on noise; a leak or a growing table moves all three.
    let per_reset: Vec<f64> = tenths
        .iter()
        .map(|t| per_reset_us(t.rsttrace_cpu, t.made))
        .collect();
    // The same figure over the generator's own CPU per reset in the same tenth. When the
    // host slows under the run (another guest on the vCPU, a cold cache), both grow alike
    // and this stays put (one CI run: rsttrace 4.23 -> 5.85 us, generator 30 -> 47 us,
    // ratio 0.12 -> 0.12); when rsttrace itself grows, only rsttrace's CPU moves.
    let relative: Vec<f64> = tenths
        .iter()
        .map(|t| t.rsttrace_cpu.as_secs_f64() / t.generator_cpu.as_secs_f64().max(1e-9))
        .collect();
    let growth = |v: &[f64]| (median3(&v[..3]), median3(&v[v.len() - 3..]));
    let (first, last) = growth(&per_reset);
    let (rel_first, rel_last) = growth(&relative);
    eprintln!(
        "million: rsttrace CPU per reset, median of the first three tenths {first:.2} us, of the \
         last three {last:.2} us ({:.2}x; single tenths: {:.2}x); over the generator's CPU \
         {rel_first:.3} -> {rel_last:.3} ({:.2}x)",
        last / first,
        per_reset[per_reset.len() - 1] / per_reset[0],
        rel_last / rel_first,
    );
    // A growth of rsttrace's own moves both figures; the machine's drift moves only the first.
    assert!(
        last <= MAX_DRIFT * first || rel_last <= MAX_DRIFT * rel_first,
        "rsttrace's CPU per reset grew from {first:.2} us (first three tenths) to {last:.2} us \
         (last three), and relative to the generator's CPU from {rel_first:.3} to {rel_last:.3}"
    );
}

/// The median of three figures.
fn median3(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn remote_ports_are_read_from_reset_lines() {
    let line = r#"{"schema_version":1,"event":"reset","local":"127.0.0.1:43938","remote":"127.0.0.1:54337"}"#;
    assert_eq!(remote_port(line), Some(54337));
    assert_eq!(remote_port(r#"{"remote":"[::1]:80"}"#), Some(80));
    assert_eq!(remote_port(r#"{"event":"reset"}"#), None);
}
