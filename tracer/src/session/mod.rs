//! One run of rsttrace: resolve the kernel's facts, attach, then the event loop — drain
//! the ring buffer, decode, attribute, filter, render — until stopped, and detach.
mod resolver;
mod start;

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

pub use self::start::prepare;
use self::{
    resolver::{CgroupCache, ExitedMemcgs, Resolver},
    start::{announce, watch_from},
};
use crate::{
    attribute::Attributor,
    cgroup::MemoryHierarchy,
    decode::Decoder,
    hooks::Capability,
    host::{local_addresses, monotonic_ns},
    kernel::KernelFacts,
    loader,
    metrics::Metrics,
    model::{KernelEvent, Verdict},
    nginx::{Clock, LiveJoin, LogChoice, Released},
    output::{Format, Output},
    privileges::drop_attach_capabilities,
    report::{self, LostTotals, Resolve},
    summary::Tally,
    timefmt::realtime_offset_ns,
    unix::ListenerScanner,
    watch::Watch,
};

/// Why rsttrace could not run, by the exit status it deserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Something failed while running.
    Runtime,
    /// The command line asks for something impossible (`--pid` of no process).
    Usage,
    /// This host cannot run rsttrace (not root, no tracefs, no BTF...).
    Unsupported,
}

#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    pub error: anyhow::Error,
}

trait FailWith<T> {
    fn fail_with(self, kind: FailureKind) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> FailWith<T> for Result<T, E> {
    fn fail_with(self, kind: FailureKind) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            kind,
            error: e.into(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub pid_of: Vec<String>,
    pub pid: Vec<u32>,
    pub format: Format,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    /// Ring buffer size in bytes.
    pub buffer_bytes: u32,
    pub no_syscall_hooks: bool,
    pub no_network_hooks: bool,
    /// Where the host's cgroup file systems are mounted (`--cgroup-root`), if not at
    /// /sys/fs/cgroup.
    pub cgroup_root: Option<PathBuf>,
    pub debug_events: bool,
    pub syscall_hooks: bool,
    pub syscall_args_at_entry: bool,
    /// Where nginx's error.log comes from; `None`: `--no-nginx-log`.
    pub nginx_log: Option<LogChoice>,
    /// `--metrics`: where to serve /metrics.
    pub metrics: Option<SocketAddr>,
}

/// Attaches, reports every reset until stopped, detaches.
pub fn run(
    facts: &KernelFacts,
    opts: &Options,
    started: Instant,
    preload: loader::Preload,
) -> Result<(), Failure> {
    let watch = watch_from(opts)?;
    let listener = opts
        .metrics
        .map(crate::metrics::bind)
        .transpose()
        .fail_with(FailureKind::Runtime)?;
    // A refusal is a host that cannot run rsttrace as configured (exit 3: systemd's unit
    // does not restart on it), not a fault.
    let (attached, events) =
        loader::attach(facts, opts.buffer_bytes, preload).map_err(|error| Failure {
            kind: if loader::is_permission_error(&error) {
                FailureKind::Unsupported
            } else {
                FailureKind::Runtime
            },
            error,
        })?;
    // Still one thread (the preload thread has ended): the event loop's runtime is built
    // below. Naming interfaces of other network namespaces enters them (setns), which
    // needs CAP_SYS_ADMIN for as long as network evidence is reported.
    let segments_traced = segments_traced(facts, &attached);
    if let Err(e) = drop_attach_capabilities(segments_traced) {
        crate::note!(
            "rsttrace: warning: could not give up the capabilities only attaching needs: {e}"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")
        .fail_with(FailureKind::Runtime)?;
    // The handlers exist before "attached" is said: whoever waits for that line and then
    // stops rsttrace (systemctl stop, a test) must get a clean detach, not the default
    // action of the signal.
    let signals = {
        let _context = runtime.enter();
        Signals::install().fail_with(FailureKind::Runtime)?
    };
    let metrics = match listener {
        Some(listener) => {
            let metrics = Arc::new(Metrics::new(
                env!("CARGO_PKG_VERSION"),
                &crate::metrics::kernel_release(),
            ));
            let addr = listener.local_addr().ok();
            let _context = runtime.enter();
            crate::metrics::serve(listener, Arc::clone(&metrics))
                .fail_with(FailureKind::Runtime)?;
            Some((metrics, addr))
        }
        None => None,
    };
    // Before "attached" is said: a reset right after it must find its nginx known, and
    // whoever waits for that line reads everything start-up says above it (the nginx log
    // followed, the metrics address).
    let nginx = opts.nginx_log.clone().map(|choice| {
        let mut n = LiveJoin::start(choice, realtime_offset_ns());
        n.announce();
        n
    });
    if let Some((_, Some(addr))) = &metrics {
        crate::note!("rsttrace: serving metrics on http://{addr}/metrics");
    }
    announce(facts, opts, &watch, &attached, started);
    let mut session = Session::new(facts, opts, watch);
    session.attributor.set_segments_traced(segments_traced);
    session.nginx = nginx;
    session.metrics = metrics.map(|(m, _)| m);
    session.seed_listeners();
    runtime
        .block_on(event_loop(session, attached, events, signals, opts))
        .fail_with(FailureKind::Runtime)
}

struct Session<'a> {
    attributor: Attributor,
    decoder: Decoder<'a>,
    resolver: Resolver,
    watch: Watch,
    output: Output,
    verdicts: Vec<Verdict>,
    listener_scanner: Option<ListenerScanner>,
    debug_events: bool,
    reported: u64,
    /// --count: how many resets and refusals to print.
    limit: Option<u64>,
    lost_reported: u64,
    skipped_reported: u64,
    decode_errors: u64,
    decode_errors_reported: u64,
    /// The error.log join; verdicts pass through it before the watch filter.
    nginx: Option<LiveJoin<Outgoing>>,
    /// What was printed, for the summary at stop.
    tally: Tally,
    metrics: Option<Arc<Metrics>>,
}

impl<'a> Session<'a> {
    fn new(facts: &'a KernelFacts, opts: &Options, watch: Watch) -> Self {
        let mut attributor = Attributor::new(&facts.reset_reasons, local_addresses());
        attributor.set_receiver_syscalls_traced(facts.traces_receiver_errors());
        Self {
            attributor,
            decoder: Decoder::new(&facts.layouts),
            resolver: Resolver {
                reasons: facts.reset_reasons.clone(),
                memory: MemoryHierarchy::locate(opts.cgroup_root.as_deref()),
                offset_ns: realtime_offset_ns(),
                exited: ExitedMemcgs::default(),
                namespaces: std::cell::RefCell::new(crate::netns::Namespaces::new()),
                cgroups: std::cell::RefCell::new(CgroupCache::default()),
            },
            watch,
            output: Output::stdout(opts.format),
            verdicts: Vec::new(),
            // Where listen() is not traced, new unix listeners are found by rescanning.
            listener_scanner: (!facts.traces_listen()).then(ListenerScanner::default),
            debug_events: opts.debug_events,
            reported: 0,
            limit: opts.count,
            lost_reported: 0,
            skipped_reported: 0,
            decode_errors: 0,
            decode_errors_reported: 0,
            nginx: None,
            tally: Tally::new(realtime_offset_ns() + i128::from(monotonic_ns())),
            metrics: None,
        }
    }

    /// Listeners that predate us, so a listener-closed reset can name their owner; later
    /// ones come from listen() or, where that is not traced, from rescans.
    fn seed_listeners(&mut self) {
        let initial = match self.listener_scanner.as_mut() {
            Some(scanner) => scanner.scan_new(),
            None => crate::unix::scan_listeners(),
        };
        for listen in initial {
            if self.debug_events {
                crate::note!("{listen:?}");
            }
            self.attributor
                .observe(KernelEvent::UnixListen(listen), &mut self.verdicts);
        }
    }

    fn handle(&mut self, bytes: &[u8]) -> io::Result<()> {
        let event = match self.decoder.decode(bytes) {
            Ok(e) => e,
            Err(err) => {
                self.decode_errors += 1;
                if self.decode_errors <= 5 {
                    crate::note!("rsttrace: warning: skipped a malformed kernel sample: {err:#}");
                }
                return Ok(());
            }
        };
        match &event {
            KernelEvent::Fork(f) => self.watch.on_fork(f),
            KernelEvent::Exit(e) => self.resolver.exited.insert(e.task.pid, e.memcg_id),
            _ => {}
        }
        if self.debug_events {
            crate::note!("{event:?}");
        }
        let mut verdicts = std::mem::take(&mut self.verdicts);
        self.attributor.observe(event, &mut verdicts);
        let result = self.emit(&mut verdicts);
        self.verdicts = verdicts;
        result
    }

    /// Releases verdicts whose wait is over (see attribute::RECEIVE_WAIT, SEEN_WAIT).
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

    /// Hands the engine's verdicts to the nginx join (all of them, before the filter: a
    /// filtered reset must still claim its line), then prints what it releases.
    fn emit(&mut self, verdicts: &mut Vec<Verdict>) -> io::Result<()> {
        if verdicts.is_empty() {
            return Ok(());
        }
        let mut released = Vec::with_capacity(verdicts.len());
        let now = self.clock();
        for verdict in verdicts.drain(..) {
            let outgoing = self.outgoing(verdict);
            match self.nginx.as_mut() {
                Some(nginx) => nginx.offer(outgoing, now, &mut released),
                None => released.push(Released::Verdict(outgoing, None)),
            }
        }
        self.publish(released)
    }

    /// Whether the verdict is to be printed (the filter's answer now, as the watched set
    /// changes with forks), and, for one that will wait for nginx's line, the facts its
    /// rendering reads, recorded now: by the time the line comes they may be gone (the
    /// memory cgroup of a container just OOM-killed, /proc of a dead peer).
    fn outgoing(&mut self, verdict: Verdict) -> Outgoing {
        let visible = match &verdict {
            Verdict::Reset(a) => {
                self.watch.matches(a.receiver.as_ref()) || self.watch.matches(a.peer.as_ref())
            }
            Verdict::Refused(f) => self.watch.matches(f.receiver.as_ref()),
        };
        let waits = self.nginx.as_mut().is_some_and(|n| n.will_wait(&verdict));
        let facts = match &verdict {
            Verdict::Reset(a) if visible && waits => Some(report::record(&self.resolver, |r| {
                let _ = report::reset_json(a, r);
            })),
            _ => None,
        };
        Outgoing {
            verdict,
            visible,
            facts,
        }
    }

    /// Reads CLOCK_REALTIME - CLOCK_MONOTONIC again: the wall clock can be stepped while
    /// rsttrace runs (chrony's makestep, a VM resumed, `date -s`), and with the offset read
    /// at start every `time` would stay off by the step, and no nginx line (stamped with the
    /// wall clock of its moment) would join again. Events are mapped with the offset of
    /// the second they are read in.
    fn follow_wall_clock(&mut self) {
        let offset = realtime_offset_ns();
        self.resolver.offset_ns = offset;
        if let Some(nginx) = self.nginx.as_mut() {
            nginx.set_offset(offset);
        }
    }

    fn clock(&self) -> Clock {
        let mono_ns = monotonic_ns();
        Clock {
            mono_ns,
            unix_ns: self.resolver.offset_ns + i128::from(mono_ns),
        }
    }

    /// Prints and counts what passed the filter, up to --count: once it is reached nothing
    /// more is printed, neither from the same batch nor from what a stop drains and flushes.
    fn publish(&mut self, released: Vec<Released<Outgoing>>) -> io::Result<()> {
        for r in released {
            if self.count_reached(self.limit) {
                break;
            }
            match r {
                Released::Verdict(outgoing, _) if !outgoing.visible => {}
                Released::Verdict(outgoing, line) => match &outgoing.verdict {
                    Verdict::Reset(a) => {
                        let facts: &dyn Resolve = match &outgoing.facts {
                            Some(recorded) => recorded,
                            None => &self.resolver,
                        };
                        self.output.reset(a, line.as_deref(), facts)?;
                        self.tally.reset(a, line.is_some());
                        if let Some(m) = &self.metrics {
                            m.reset(a);
                        }
                        self.reported += 1;
                    }
                    Verdict::Refused(f) => {
                        self.output.refusal(f, &self.resolver)?;
                        self.tally.refusal(f);
                        self.reported += 1;
                    }
                },
                // Printed whatever the filter: its peer is unknown, so no filter can say it
                // is not about the watched processes.
                Released::Unexplained(line) => {
                    self.output.unexplained(&line, self.lost_reported)?;
                    self.tally.unexplained();
                    if let Some(m) = &self.metrics {
                        m.unexplained();
                    }
                }
            }
        }
        Ok(())
    }

    /// When nginx's error.log is read next: within NGINX_TICK while a verdict waits for its
    /// line (or a line for its verdict), else as planned.
    fn nginx_due(&self, planned: tokio::time::Instant) -> tokio::time::Instant {
        match &self.nginx {
            Some(n) if n.busy() => planned.min(tokio::time::Instant::now() + NGINX_TICK),
            _ => planned,
        }
    }

    /// The error.log follower's tick: new lines, waits that are over; plans the next one.
    fn nginx_tick(&mut self, next: &mut tokio::time::Instant) -> io::Result<()> {
        let now = self.clock();
        let Some(nginx) = self.nginx.as_mut() else {
            return Ok(());
        };
        let mut released = Vec::new();
        nginx.tick(now, &mut released);
        let every = if nginx.busy() {
            NGINX_TICK
        } else {
            NGINX_IDLE_TICK
        };
        *next = tokio::time::Instant::now() + every;
        self.publish(released)
    }

    /// At stop, after the engine let go of everything: the last lines, every wait ended.
    fn nginx_finish(&mut self) -> io::Result<()> {
        let now = self.clock();
        let Some(nginx) = self.nginx.as_mut() else {
            return Ok(());
        };
        let mut released = Vec::new();
        nginx.finish(now, &mut released);
        self.publish(released)
    }

    fn summary(&mut self) -> io::Result<()> {
        let now = self.clock().unix_ns;
        let lost = LostTotals {
            samples: self.lost_reported,
            decode_errors: self.decode_errors,
            skipped_runs: self.skipped_reported,
        };
        let json = self.tally.json(now, lost);
        self.output.summary(&json)
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

    /// `lost_total`: samples the ring could not take; `skipped_total`: program runs the
    /// kernel skipped (loader::Attached::skipped_runs); both since start.
    fn report_lost(&mut self, lost_total: u64, skipped_total: u64) -> io::Result<()> {
        let lost = lost_total.saturating_sub(self.lost_reported);
        let skipped = skipped_total.saturating_sub(self.skipped_reported);
        let decode = self.decode_errors - self.decode_errors_reported;
        if lost == 0 && decode == 0 && skipped == 0 {
            return Ok(());
        }
        // Totals only grow; a figure read short once (a program's fdinfo unreadable) must
        // not make the next report count the difference again.
        self.lost_reported = self.lost_reported.max(lost_total);
        self.skipped_reported = self.skipped_reported.max(skipped_total);
        self.decode_errors_reported = self.decode_errors;
        if let Some(m) = &self.metrics {
            m.lost(lost);
            m.skipped_runs(skipped);
        }
        let now = self.resolver.offset_ns + i128::from(monotonic_ns());
        self.output
            .lost(now, lost, lost_total, decode, (skipped, skipped_total))
    }

    fn count_reached(&self, count: Option<u64>) -> bool {
        count.is_some_and(|c| self.reported >= c)
    }
}

/// A verdict on its way out: whether it passed the filter, and the facts recorded for its
/// rendering when it waits for nginx's line.
struct Outgoing {
    verdict: Verdict,
    visible: bool,
    facts: Option<report::Recorded>,
}

impl std::borrow::Borrow<Verdict> for Outgoing {
    fn borrow(&self) -> &Verdict {
        &self.verdict
    }
}

/// Why the loop ended normally.
enum Stop {
    Done,
    PipeClosed,
}

/// The signals that stop rsttrace cleanly.
struct Signals {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
}

impl Signals {
    /// Within the runtime's context.
    fn install() -> Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }
}

async fn event_loop(
    mut session: Session<'_>,
    mut attached: loader::Attached,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    signals: Signals,
    opts: &Options,
) -> Result<()> {
    let count = opts.count;
    // SAFETY: the ring buffer owns its fd and outlives the registration (both live in
    // this AsyncFd until the loop ends).
    let mut ring = unsafe { AsyncFd::register(events) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let Signals {
        mut sigint,
        mut sigterm,
    } = signals;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut expire_tick = tokio::time::interval(Duration::from_millis(10));
    expire_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let follows_nginx = session.nginx.is_some();
    let mut nginx_next = tokio::time::Instant::now() + NGINX_TICK;

    // Idle, rsttrace sleeps until a sample wakes it (it says so in the READER map, and the
    // programs force a wake-up while it does, see programs/mod.rs emit()); busy, samples go
    // in without waking it and it drains on a 10 ms tick, until a tick finds the ring empty
    // and no verdict waiting. Should the flag not be writable, it stays busy: correct, only
    // never idle.
    let mut busy = attached.set_reader_sleeps(true).is_err();
    let stop = loop {
        nginx_next = session.nginx_due(nginx_next);
        let result: io::Result<bool> = tokio::select! {
            guard = ring.readable_mut(), if !busy => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                // Awake: samples from now on need not wake it (a failed write only costs
                // wake-ups).
                let _ = attached.set_reader_sleeps(false);
                let r = drain(&mut session, guard.get_inner_mut(), count);
                guard.clear_ready();
                busy = true;
                expire_tick.reset();
                r.map(|d| d.done)
            }
            _ = tick.tick() => second_tick(&mut session, ring.get_mut(), &attached, count),
            _ = expire_tick.tick(), if busy => busy_tick(&mut session, ring.get_mut(), &mut attached, count)
                .map(|(done, still_busy)| {
                    busy = still_busy;
                    done
                }),
            _ = tokio::time::sleep_until(nginx_next), if follows_nginx => {
                session.nginx_tick(&mut nginx_next).map(|()| session.count_reached(count))
            }
            _ = sigint.recv() => Ok(true),
            _ = sigterm.recv() => Ok(true),
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => Ok(true),
        };
        match result.and_then(|done| session.output.flush().map(|()| done)) {
            Ok(true) => break Stop::Done,
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break Stop::PipeClosed,
            Err(e) => return Err(e).context("writing to stdout"),
        }
    };
    if let Stop::Done = stop {
        finish(&mut session, ring.get_mut(), &mut attached)?;
    }
    Ok(())
}

/// Whether RST segments are sampled: the packet hook was to be attached, and the kernel
/// took it (an optional hook it refused is in `failed`, not among the facts' hooks).
fn segments_traced(facts: &KernelFacts, attached: &loader::Attached) -> bool {
    facts.traces_rst_segments()
        && !attached
            .failed
            .iter()
            .any(|(h, _)| h.capability == Capability::NetworkEvidence)
}

/// The 1 s tick: new unix listeners, a drain (the backstop for a sample committed, unwoken,
/// while rsttrace went idle), and what was lost or skipped meanwhile. Returns whether
/// --count is reached.
fn second_tick(
    session: &mut Session<'_>,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    attached: &loader::Attached,
    count: Option<u64>,
) -> io::Result<bool> {
    session.rescan_listeners();
    session.follow_wall_clock();
    let drained = drain(session, ring, count)?;
    session.report_lost(attached.lost_total(), attached.skipped_runs())?;
    Ok(drained.done)
}

/// The busy loop's 10 ms tick: drains, and once the ring is empty releases the verdicts
/// whose wait is over; with nothing left to wait for, goes idle. Verdicts are released only
/// once the ring is empty: the send of a reset waiting here may still be queued behind a full
/// batch, and the clock has moved on meanwhile (events are released by their own times as
/// they are read). Returns (--count reached, still busy).
fn busy_tick(
    session: &mut Session<'_>,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    attached: &mut loader::Attached,
    count: Option<u64>,
) -> io::Result<(bool, bool)> {
    let d = drain(session, ring, count)?;
    if !d.emptied {
        return Ok((d.done || session.count_reached(count), true));
    }
    session.expire(monotonic_ns())?;
    if d.read > 0 || session.attributor.waiting() > 0 {
        return Ok((d.done || session.count_reached(count), true));
    }
    // Going to sleep: say so first, then a last look for what was committed before the
    // programs could see it. Should the flag not be writable, stay busy: correct, only
    // never idle.
    let mut busy = attached.set_reader_sleeps(true).is_err();
    let look = drain(session, ring, count)?;
    if look.read > 0 {
        let _ = attached.set_reader_sleeps(false);
        busy = true;
    }
    Ok((d.done || look.done || session.count_reached(count), busy))
}

/// Detaches, then reports what the kernel had queued (for at most STOP_DRAIN: a stop must
/// stay prompt in a storm; samples left unread then are counted as lost), then the loss
/// count; says goodbye.
fn finish(
    session: &mut Session<'_>,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    attached: &mut loader::Attached,
) -> Result<()> {
    // Detached first, no program adds to the ring: what it holds is all there will be. The
    // programs' skipped runs are read just before (their counters go with them).
    let skipped = attached.skipped_runs();
    attached.detach();
    let flushed = drain_all(session, ring).and_then(|unread| {
        session.expire(u64::MAX)?;
        session.nginx_finish()?;
        session.report_lost(attached.lost_total() + unread, skipped)?;
        session.summary()?;
        session.output.flush()?;
        Ok(unread)
    });
    let unread = match flushed {
        Ok(unread) => unread,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => return Err(e).context("writing to stdout"),
    };
    let skipped_note = if skipped > 0 {
        format!(", {skipped} program run(s) skipped by the kernel")
    } else {
        String::new()
    };
    crate::note!(
        "rsttrace: detached; {} reset(s) and refusal(s) reported, {} kernel sample(s) lost, {} malformed{skipped_note}",
        session.reported,
        attached.lost_total() + unread,
        session.decode_errors
    );
    Ok(())
}

/// How long a stop may spend on samples queued before it.
const STOP_DRAIN: Duration = Duration::from_secs(2);

/// At stop: every queued sample, reported while STOP_DRAIN lasts, then only counted
/// (returned: they are lost).
fn drain_all(
    session: &mut Session<'_>,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
) -> io::Result<u64> {
    let deadline = Instant::now() + STOP_DRAIN;
    while Instant::now() < deadline {
        if drain(session, ring, None)?.emptied {
            return Ok(0);
        }
    }
    let mut unread = 0;
    while ring.next().is_some() {
        unread += 1;
    }
    Ok(unread)
}

/// How often nginx's error.log is read while a verdict of one of its workers waits for its
/// line, or a line for its verdict (see nginx::stage).
const NGINX_TICK: Duration = Duration::from_millis(100);
/// ... and while nothing waits: a line whose reset rsttrace did not see is reported after a
/// wait of its own anyway, and an idle rsttrace should not wake ten times a second.
const NGINX_IDLE_TICK: Duration = Duration::from_secs(1);

/// Samples read per turn of the event loop: in a storm the kernel may queue faster than
/// one pass reads, and signals, ticks and the clean stop must still get their turn.
const DRAIN_BATCH: usize = 8192;

/// What one pass over the ring did.
struct Drained {
    /// --count is reached.
    done: bool,
    /// The ring had nothing more to read.
    emptied: bool,
    /// Samples read.
    read: usize,
}

/// Reads the queued samples (at most DRAIN_BATCH).
fn drain(
    session: &mut Session<'_>,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    count: Option<u64>,
) -> io::Result<Drained> {
    for read in 0..DRAIN_BATCH {
        let Some(item) = ring.next() else {
            return Ok(Drained {
                done: false,
                emptied: true,
                read,
            });
        };
        session.handle(&item)?;
        if session.count_reached(count) {
            return Ok(Drained {
                done: true,
                emptied: false,
                read: read + 1,
            });
        }
    }
    Ok(Drained {
        done: false,
        emptied: false,
        read: DRAIN_BATCH,
    })
}
