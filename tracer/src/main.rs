//! rsttrace command line: attach, explain each reset, render, detach cleanly.
use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    net::IpAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use rsttrace::{
    attribute::Attributor,
    cgroup::MemoryHierarchy,
    decode::Decoder,
    kernel::KernelFacts,
    loader,
    model::{Attribution, KernelEvent},
    report::{self, LostJson, MemcgInfo, Resolve, SCHEMA_VERSION},
    timefmt::{realtime_offset_ns, rfc3339_utc},
    unix::ListenerScanner,
    watch::{self, Watch},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

/// Exit statuses (also in --help and README).
const EXIT_OK: u8 = 0;
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNSUPPORTED: u8 = 3;

const AFTER_HELP: &str = "\
Examples:
  sudo rsttrace                          every reset any local process receives
  sudo rsttrace --pid-of php-fpm         resets between nginx and php-fpm (any version, new workers too)
  sudo rsttrace --pid-of gunicorn --format text
  sudo rsttrace --pid 4242 --count 1     stop after the first reset involving pid 4242 or its children
  sudo rsttrace --duration 10m | jq 'select(.cause == \"oom_kill\")'
  sudo rsttrace --check                  what this kernel supports

Each reset is one JSON line (schema_version 1; every field is described in README.md):
  cause is one of oom_kill, signal, crash, exit, abort, no_socket, kernel, network, unknown.
Samples the kernel had to drop are reported as {\"event\":\"lost\",...} lines, never silently.

Exit status: 0 stopped normally (Ctrl-C, SIGTERM, --duration, --count, reader closed the pipe);
1 runtime error; 2 bad usage (unknown flag, --pid of no process); 3 cannot run here
(not root, tracefs not mounted, no BTF, a required tracepoint missing).";

#[derive(Parser, Debug)]
#[command(
    name = "rsttrace",
    version,
    about = "Explain every connection reset nginx (or any local process) receives, over TCP or \
             unix sockets: which upstream died, who killed it, OOM, crash, exit, abort, kernel or \
             network",
    after_help = AFTER_HELP
)]
struct Args {
    /// Only resets whose receiver or sender is a process named NAME (prefix of its name:
    /// `php-fpm` matches php-fpm8.2), its children, and processes started later under that name.
    #[arg(long = "pid-of", value_name = "NAME")]
    pid_of: Vec<String>,
    /// Only resets whose receiver or sender is PID or one of its descendants.
    #[arg(long, value_name = "PID")]
    pid: Vec<u32>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Stop after this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many resets.
    #[arg(long)]
    count: Option<u64>,
    /// Kernel ring buffer size in KiB (power of two, >= 4).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib)]
    buffer_size: u32,
    /// Attach no syscall tracepoint. Attaching any makes every syscall of every process
    /// take the kernel's slower traced path (~50 ns each here). Kernels with the socket
    /// tracepoints sock_recv_length/sock_send_length (6.x) need none anyway; on older ones
    /// rsttrace then loses unix-socket resets, `seen_by_receiver` and accept-side owners.
    #[arg(long)]
    no_syscall_hooks: bool,
    /// Print what this kernel supports and which hook serves each capability, then exit.
    #[arg(long)]
    check: bool,
    /// Also print every decoded kernel event on stderr (for recording test sequences).
    #[arg(long, hide = true)]
    debug_events: bool,
    /// Use syscall tracepoints even where socket-level ones exist (the path older kernels
    /// take; for tests).
    #[arg(long, hide = true)]
    syscall_hooks: bool,
    /// Record socket syscall arguments at entry even where the saved registers could be
    /// read at exit (the path older kernels take; for tests).
    #[arg(long, hide = true)]
    syscall_args_at_entry: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    /// One JSON object per line.
    Json,
    /// One human-readable line per reset, with its hint.
    Text,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 30s, 5m, 2h"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`: use ms, s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err("the ring buffer size must be a power of two between 4 and 1048576 KiB".into());
    }
    Ok(kib * 1024)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            eprintln!("rsttrace: error: {error:#}");
            ExitCode::from(code)
        }
    }
}

struct Failure {
    code: u8,
    error: anyhow::Error,
}

trait ExitWith<T> {
    fn exit_with(self, code: u8) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> ExitWith<T> for Result<T, E> {
    fn exit_with(self, code: u8) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            code,
            error: e.into(),
        })
    }
}

fn run(args: Args) -> Result<u8, Failure> {
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Failure {
            code: EXIT_UNSUPPORTED,
            error: anyhow::anyhow!(
                "rsttrace reads tracefs and attaches eBPF programs to kernel tracepoints: \
                 run it as root (sudo rsttrace ...)"
            ),
        });
    }
    let mut facts = KernelFacts::resolve().exit_with(EXIT_UNSUPPORTED)?;
    if args.syscall_args_at_entry {
        facts.config.regs_arg = [tracer_ebpf::NO_OFFSET; 4];
    }
    if args.syscall_hooks {
        facts.force_syscall_hooks();
    }
    if args.no_syscall_hooks {
        facts.drop_syscall_hooks();
    }
    if args.check {
        let mut out = String::new();
        print_check(&facts, &mut out);
        let usable = print_features(&mut out);
        // A closed pipe (`rsttrace --check | head`) is no error.
        let _ = io::stdout().write_all(out.as_bytes());
        return Ok(if usable { EXIT_OK } else { EXIT_UNSUPPORTED });
    }
    for pid in &args.pid {
        if !watch::pid_exists(*pid) {
            return Err(Failure {
                code: EXIT_USAGE,
                error: anyhow::anyhow!("--pid {pid}: no such process"),
            });
        }
    }
    let mut watch = Watch::new(args.pid_of.clone(), args.pid.iter().copied());
    if !watch.is_everything() && !watch.names().is_empty() {
        let found = watch::scan_proc(&watch);
        if found.is_empty() {
            eprintln!(
                "rsttrace: warning: no process named {} yet; watching for it to start",
                watch.names().join(", ")
            );
        }
        for pid in found {
            watch.add_pid(pid);
        }
    }

    let (attached, events) = loader::attach(&facts, args.buffer_size).exit_with(EXIT_RUNTIME)?;
    for hook in &facts.missing {
        eprintln!(
            "rsttrace: warning: tracepoint {}:{} is missing on this kernel: no {}",
            hook.category, hook.event, hook.purpose
        );
    }
    eprintln!(
        "rsttrace: attached {} hooks in {} ms (ready {} ms after start); {}",
        attached.hooks,
        attached.elapsed_ms,
        started.elapsed().as_millis(),
        if watch.is_everything() {
            "reporting every reset received on this host".to_string()
        } else {
            format!(
                "watching {} process(es) matching {}",
                watch.watched_pids(),
                describe_filter(&args)
            )
        }
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")
        .exit_with(EXIT_RUNTIME)?;
    let resolver = Resolver {
        reasons: facts.reset_reasons.clone(),
        memory: MemoryHierarchy::locate(),
        offset_ns: realtime_offset_ns(),
    };
    let mut session = Session {
        attributor: Attributor::new(&facts.reset_reasons, local_addresses()),
        decoder: Decoder::new(&facts.layouts),
        resolver,
        watch,
        format: args.format,
        out: io::BufWriter::with_capacity(64 * 1024, io::stdout()),
        verdicts: Vec::new(),
        listener_scanner: None,
        debug_events: args.debug_events,
        reported: 0,
        lost_reported: 0,
        decode_errors: 0,
        decode_errors_reported: 0,
    };
    session
        .attributor
        .set_receiver_syscalls_traced(facts.traces_receiver_errors());
    // Listeners that predate us, so a listener-closed reset can name their owner; later
    // ones come from listen() or, where that is not traced, from rescans.
    if !facts.traces_listen() {
        session.listener_scanner = Some(ListenerScanner::default());
    }
    let initial = match session.listener_scanner.as_mut() {
        Some(scanner) => scanner.scan_new(),
        None => rsttrace::unix::scan_listeners(),
    };
    for listen in initial {
        if session.debug_events {
            eprintln!("{listen:?}");
        }
        session
            .attributor
            .observe(KernelEvent::UnixListen(listen), &mut session.verdicts);
    }
    runtime
        .block_on(event_loop(
            session,
            attached,
            events,
            args.duration,
            args.count,
        ))
        .exit_with(EXIT_RUNTIME)
}

fn describe_filter(args: &Args) -> String {
    let mut parts: Vec<String> = args.pid_of.iter().map(|n| format!("name {n}*")).collect();
    parts.extend(args.pid.iter().map(|p| format!("pid {p}")));
    parts.join(", ")
}

struct Resolver {
    reasons: HashMap<u32, String>,
    memory: Option<MemoryHierarchy>,
    offset_ns: i128,
}

impl Resolve for Resolver {
    fn reason_name(&self, reason: u32) -> Option<String> {
        self.reasons
            .get(&reason)
            .map(|n| rsttrace::kernel::short_reason_name(n).to_string())
    }
    fn memcg(&self, memcg_id: u64) -> Option<MemcgInfo> {
        self.memory.as_ref()?.describe(memcg_id)
    }
    fn wall_time_ns(&self, ktime_ns: u64) -> i128 {
        i128::from(ktime_ns) + self.offset_ns
    }
}

struct Session<'a> {
    attributor: Attributor,
    decoder: Decoder<'a>,
    resolver: Resolver,
    watch: Watch,
    format: Format,
    out: io::BufWriter<io::Stdout>,
    verdicts: Vec<Attribution>,
    listener_scanner: Option<ListenerScanner>,
    debug_events: bool,
    reported: u64,
    lost_reported: u64,
    decode_errors: u64,
    decode_errors_reported: u64,
}

/// Why the loop ended normally.
enum Stop {
    Done,
    PipeClosed,
}

impl Session<'_> {
    fn handle(&mut self, bytes: &[u8]) -> io::Result<()> {
        let event = match self.decoder.decode(bytes) {
            Ok(e) => e,
            Err(err) => {
                self.decode_errors += 1;
                if self.decode_errors <= 5 {
                    eprintln!("rsttrace: warning: skipped a malformed kernel sample: {err:#}");
                }
                return Ok(());
            }
        };
        if let KernelEvent::Fork(f) = &event {
            self.watch.on_fork(f);
        }
        if self.debug_events {
            eprintln!("{event:?}");
        }
        let mut verdicts = std::mem::take(&mut self.verdicts);
        self.attributor.observe(event, &mut verdicts);
        let result = self.emit(&mut verdicts);
        self.verdicts = verdicts;
        result
    }

    /// Receives whose send never came (see attribute::RECEIVE_WAIT).
    fn expire(&mut self, now_ns: u64) -> io::Result<()> {
        if self.attributor.waiting() == 0 {
            return Ok(());
        }
        let mut verdicts = std::mem::take(&mut self.verdicts);
        self.attributor.expire(now_ns, &mut verdicts);
        let result = self.emit(&mut verdicts);
        self.verdicts = verdicts;
        result
    }

    fn emit(&mut self, verdicts: &mut Vec<Attribution>) -> io::Result<()> {
        for verdict in verdicts.drain(..) {
            self.render(&verdict)?;
        }
        Ok(())
    }

    fn render(&mut self, verdict: &Attribution) -> io::Result<()> {
        if !self.watch.matches(verdict.receiver.as_ref())
            && !self.watch.matches(verdict.peer.as_ref())
        {
            return Ok(());
        }
        let json = report::reset_json(verdict, &self.resolver);
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, &json)?;
                self.out.write_all(b"\n")?;
            }
            Format::Text => writeln!(self.out, "{}", report::render_text(&json))?,
        }
        self.reported += 1;
        Ok(())
    }

    fn rescan_listeners(&mut self) {
        let Some(scanner) = self.listener_scanner.as_mut() else {
            return;
        };
        for listen in scanner.scan_new() {
            self.attributor
                .observe(KernelEvent::UnixListen(listen), &mut self.verdicts);
        }
    }

    fn report_lost(&mut self, lost_total: u64) -> io::Result<()> {
        let lost = lost_total.saturating_sub(self.lost_reported);
        let decode = self.decode_errors - self.decode_errors_reported;
        if lost == 0 && decode == 0 {
            return Ok(());
        }
        self.lost_reported = lost_total;
        self.decode_errors_reported = self.decode_errors;
        let now = self.resolver.offset_ns + monotonic_ns();
        let json = LostJson {
            schema_version: SCHEMA_VERSION,
            event: "lost",
            time: rfc3339_utc(now),
            count: lost,
            total: lost_total,
            decode_errors: (decode > 0).then_some(decode),
        };
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, &json)?;
                self.out.write_all(b"\n")?;
            }
            Format::Text => writeln!(
                self.out,
                "{} LOST {lost} kernel samples (ring buffer full; {lost_total} since start); raise --buffer-size",
                json.time
            )?,
        }
        Ok(())
    }
}

fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

async fn event_loop(
    mut session: Session<'_>,
    attached: loader::Attached,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    duration: Option<Duration>,
    count: Option<u64>,
) -> Result<u8> {
    let lost_total = || attached.lost_total();
    // SAFETY: the ring buffer owns its fd and outlives the registration (both live in
    // this AsyncFd until the loop ends).
    let mut ring = unsafe { AsyncFd::register(events) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut expire_tick = tokio::time::interval(Duration::from_millis(10));
    expire_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let stop = loop {
        let result: io::Result<bool> = tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let r = drain(&mut session, guard.get_inner_mut(), count);
                guard.clear_ready();
                r
            }
            _ = tick.tick() => {
                session.rescan_listeners();
                session.report_lost(lost_total()).map(|()| false)
            }
            // Samples are mostly submitted without waking us (see Config::ring_wakeup_bytes):
            // drain on this tick, then release verdicts whose wait is over.
            _ = expire_tick.tick() => drain(&mut session, ring.get_mut(), count).and_then(|done| {
                session
                    .expire(monotonic_ns() as u64)
                    .map(|()| done || count.is_some_and(|c| session.reported >= c))
            }),
            _ = sigint.recv() => Ok(true),
            _ = sigterm.recv() => Ok(true),
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => Ok(true),
        };
        match result.and_then(|done| session.out.flush().map(|()| done)) {
            Ok(true) => break Stop::Done,
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break Stop::PipeClosed,
            Err(e) => return Err(e).context("writing to stdout"),
        }
    };
    if let Stop::Done = stop {
        // Flush what the kernel already queued, then the loss count.
        let flushed = drain(&mut session, ring.get_mut(), None)
            .and_then(|_| session.expire(u64::MAX))
            .and_then(|()| session.report_lost(lost_total()))
            .and_then(|()| session.out.flush());
        match flushed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(e).context("writing to stdout"),
        }
        eprintln!(
            "rsttrace: detached; {} reset(s) reported, {} kernel sample(s) lost, {} malformed",
            session.reported,
            lost_total(),
            session.decode_errors
        );
    }
    Ok(EXIT_OK)
}

/// Reads every queued sample; true once --count is reached.
fn drain(
    session: &mut Session<'_>,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    count: Option<u64>,
) -> io::Result<bool> {
    while let Some(item) = ring.next() {
        session.handle(&item)?;
        if count.is_some_and(|c| session.reported >= c) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn print_check(facts: &KernelFacts, out: &mut String) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(out, "kernel {}", release.trim());
    let _ = writeln!(
        out,
        "BTF: {} (struct offsets, sk_rst_reason names)",
        rsttrace::kernel::VMLINUX_BTF
    );
    let _ = writeln!(out, "capabilities:");
    for (capability, events) in CAPABILITIES {
        let served: Vec<&str> = events
            .iter()
            .copied()
            .filter(|e| facts.available.iter().any(|h| h.event == *e))
            .collect();
        if served.is_empty() && events == &["sys_enter_listen"] {
            let _ = writeln!(
                out,
                "  ok       {capability}: /proc/net/unix, rescanned every second"
            );
        } else if served.is_empty() {
            let _ = writeln!(out, "  MISSING  {capability}");
        } else {
            let _ = writeln!(out, "  ok       {capability}: {}", served.join(", "));
        }
    }
    let _ = writeln!(out, "hooks (tracepoints):");
    for hook in &facts.available {
        let name = format!("{}:{}", hook.category, hook.event);
        let _ = writeln!(out, "  ok       {name:<32} {}", hook.purpose);
    }
    for hook in &facts.missing {
        let name = format!("{}:{}", hook.category, hook.event);
        let _ = writeln!(out, "  missing  {name:<32} no {}", hook.purpose);
    }
    let _ = writeln!(
        out,
        "reset reasons: {}",
        if facts.reset_reasons.is_empty() {
            "not reported by this kernel (before ~6.10): causes are inferred from the sending task"
                .to_string()
        } else {
            format!(
                "{} names from BTF (enum sk_rst_reason)",
                facts.reset_reasons.len()
            )
        }
    );
    if facts.degraded.is_empty() {
        let _ = writeln!(out, "struct offsets: all resolved from BTF");
    } else {
        let _ = writeln!(
            out,
            "struct offsets missing from BTF (degraded): {}",
            facts.degraded.join(", ")
        );
    }
}

/// Kernel BPF features (probed by loading tiny programs and maps); false when one rsttrace
/// needs is missing.
fn print_features(out: &mut String) -> bool {
    use aya::{
        maps::MapType,
        programs::ProgramType,
        sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
    };
    let yes = |r: bool| if r { "yes" } else { "no" };
    let tracepoints = is_program_supported(ProgramType::TracePoint).unwrap_or(false);
    let ring = is_map_supported(MapType::RingBuf).unwrap_or(false);
    let regs = is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_task_pt_regs)
        .unwrap_or(false);
    let kprobes = std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
        || std::path::Path::new("/sys/kernel/debug/tracing/kprobe_events").exists();
    let raw_tp = is_program_supported(ProgramType::RawTracePoint).unwrap_or(false);
    let _ = writeln!(out, "kernel BPF features:");
    let _ = writeln!(
        out,
        "  tracepoint programs (required): {}",
        yes(tracepoints)
    );
    let _ = writeln!(out, "  BPF ring buffer, 5.8+ (required): {}", yes(ring));
    let _ = writeln!(
        out,
        "  bpf_task_pt_regs in tracepoints: {} ({})",
        yes(regs),
        if regs {
            "socket syscall exits read their arguments from registers"
        } else {
            "syscall arguments recorded at entry instead (more overhead)"
        }
    );
    let _ = writeln!(out, "  raw tracepoints: {} (not needed)", yes(raw_tp));
    let _ = writeln!(
        out,
        "  kprobes: {} (not needed: every capability is served by tracepoints)",
        yes(kprobes)
    );
    if !tracepoints || !ring {
        let _ = writeln!(
            out,
            "rsttrace cannot run here: it needs BPF tracepoint programs and BPF ring buffers \
             (Linux 5.8+ with CONFIG_BPF_SYSCALL and CONFIG_BPF_EVENTS)"
        );
    }
    tracepoints && ring
}

/// What rsttrace does, and the tracepoints serving each (for --check).
const CAPABILITIES: &[(&str, &[&str])] = &[
    ("TCP resets received", &["tcp_receive_reset"]),
    (
        "who sent a TCP reset, and the kernel's reason",
        &["tcp_send_reset"],
    ),
    ("who killed a process (signals)", &["signal_generate"]),
    (
        "process deaths, exit codes, memory cgroups",
        &["sched_process_exit"],
    ),
    ("OOM kills", &["mark_victim"]),
    ("following --pid children", &["sched_process_fork"]),
    (
        "socket owners (receiver, peer)",
        &[
            "inet_sock_set_state",
            "sock_recv_length",
            "sock_send_length",
            "sys_exit_accept4",
            "sys_exit_accept",
        ],
    ),
    (
        "unix-socket resets, seen_by_receiver",
        &[
            "sock_recv_length",
            "sock_send_length",
            "sys_exit_recvfrom",
            "sys_exit_recvmsg",
            "sys_exit_readv",
            "sys_exit_sendto",
            "sys_exit_sendmsg",
            "sys_exit_writev",
            "sys_exit_connect",
            "sys_exit_getsockopt",
        ],
    ),
    ("unix listener owners", &["sys_enter_listen"]),
];

/// This host's addresses, so a reset from one of them is never blamed on the network.
fn local_addresses() -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family is AF_INET.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.insert(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: family is AF_INET6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_kib("4096"), Ok(4096 * 1024));
        assert!(parse_ring_kib("3000").is_err());
        assert!(parse_ring_kib("2").is_err());
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let err = Args::try_parse_from(["rsttrace", "--frobnicate"]).expect_err("must fail");
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
    }
}
