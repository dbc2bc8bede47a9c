//! `rsttrace-vm-scenarios`: real resets on loopback, each checked against rsttrace's JSON.
//!
//! Runs as the workload of `cargo xtask vm-test`, inside a minimal VM (busybox /init, no
//! servers) on Debian's 6.1 and 6.12 kernels, and directly on the host kernel. It needs
//! nothing but plain sockets and processes: it starts rsttrace (`--rsttrace PATH` or
//! `$RSTTRACE_BIN`), makes one reset per scenario and checks the line rsttrace printed for it.
//!
//! Output, one line each, parsed by xtask:
//! `scenario NAME: pass` (then `  event: {json}`), `scenario NAME: fail: WHY; rsttrace printed: ...`,
//! and at the end `init: success` or `init: failure` (the exit status says the same).
//! Every wait is bounded.
use std::{
    fs,
    io::{self, Read as _, Write as _},
    mem,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{
            net::{UnixListener, UnixStream},
            process::CommandExt as _,
        },
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Loading and verifying rsttrace's programs under an emulated CPU (qemu TCG) takes a while.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(180);
/// From the reset to rsttrace's line (a TCP verdict may wait 250 ms for the receiver).
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// One step of a scenario: a child accepting, a process dying, a read failing.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// The OOM scenario: the child allocates until the memory cgroup's limit kills it.
const OOM_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
/// Bytes the client sends and the peer never reads: what makes its close a reset.
const UNREAD: usize = 4096;
const OOM_LIMIT: u64 = 32 << 20;

type Res<T> = Result<T, String>;

type Scenario = fn(&Tracer) -> Res<Value>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("tcp_sigkill", tcp_sigkill),
    ("tcp_abort", tcp_abort),
    ("tcp_no_socket", tcp_no_socket),
    ("tcp_forged_on_loopback", tcp_forged_on_loopback),
    ("tcp_injected_on_loopback", tcp_injected_on_loopback),
    ("oom_memcg", oom_memcg),
    ("unix_sigkill", unix_sigkill),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut bin = std::env::var_os("RSTTRACE_BIN").map(PathBuf::from);
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.clone().next()) {
            ("--rsttrace", Some(path)) => {
                bin = Some(PathBuf::from(path));
                it.next();
            }
            ("--only", Some(name)) => {
                only.push(name.clone());
                it.next();
            }
            ("--serve", Some(addr)) => return serve(addr),
            ("--list", _) => {
                for (name, _) in SCENARIOS {
                    println!("{name}");
                }
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!(
                    "usage: rsttrace-vm-scenarios [--rsttrace PATH] [--only NAME]... [--list]\n\
                     \x20      rsttrace-vm-scenarios --serve ADDR:PORT\n\
                     (PATH defaults to $RSTTRACE_BIN; --serve runs the aborting server a guest \
                     kernel plays the remote host with, see rsttrace_tests::abort_server)"
                );
                return ExitCode::from(2);
            }
        }
    }
    let selected: Vec<&(&str, Scenario)> = SCENARIOS
        .iter()
        .filter(|(name, _)| only.is_empty() || only.iter().any(|o| o == name))
        .collect();
    let ok = run(bin.as_deref(), &selected);
    println!("init: {}", if ok { "success" } else { "failure" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--serve ADDR`: the aborting server (rsttrace_tests::guest boots a kernel running it).
fn serve(addr: &str) -> ExitCode {
    let addr = match addr.parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("--serve {addr}: not an ADDR:PORT ({e})");
            return ExitCode::from(2);
        }
    };
    match rsttrace_tests::abort_server::serve(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("serve {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(bin: Option<&Path>, selected: &[&(&str, Scenario)]) -> bool {
    let fail_all = |why: &str| {
        for (name, _) in selected {
            println!("scenario {name}: fail: {why}");
        }
        println!("scenario clean_stop: fail: {why}");
        false
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return fail_all("not root: rsttrace loads eBPF programs");
    }
    let Some(bin) = bin else {
        return fail_all("no rsttrace binary: pass --rsttrace PATH or set RSTTRACE_BIN");
    };
    let mut tracer = match Tracer::start(bin) {
        Ok(t) => t,
        Err(why) => {
            // In full once (a verifier log can be long), by its end in each scenario's line.
            println!("vm-scenarios: rsttrace did not start: {}", one_line(&why));
            let why = one_line(&why);
            let chars: Vec<char> = why.chars().collect();
            let short: String = chars[chars.len().saturating_sub(600)..].iter().collect();
            let short = if short.len() < why.len() {
                format!("rsttrace did not start (full error above): ...{short}")
            } else {
                why
            };
            return fail_all(&short);
        }
    };
    let mut ok = true;
    for (name, scenario) in selected {
        let mark = tracer.lines().len();
        let started = Instant::now();
        let result = scenario(&tracer);
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(event) => {
                println!("scenario {name}: pass ({secs:.1} s)");
                println!("  event: {event}");
            }
            Err(why) => {
                ok = false;
                let seen = tracer.lines();
                let seen = seen.get(mark..).unwrap_or_default();
                let tail = &seen[seen.len().saturating_sub(10)..];
                let mut msg = format!(
                    "{}; rsttrace printed {} line(s) meanwhile",
                    one_line(&why),
                    seen.len()
                );
                if !tail.is_empty() {
                    msg.push_str(&format!(" (last {}): {}", tail.len(), tail.join(" ")));
                }
                if let Some(status) = tracer.exited() {
                    msg.push_str(&format!(
                        "; rsttrace exited ({status}), stderr: {}",
                        one_line(&tracer.stderr())
                    ));
                }
                println!("scenario {name}: fail: {msg}");
            }
        }
        let _ = io::stdout().flush();
    }
    match tracer.stop() {
        Ok(summary) => println!("scenario clean_stop: pass ({summary})"),
        Err(why) => {
            ok = false;
            println!("scenario clean_stop: fail: {}", one_line(&why));
        }
    }
    ok
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------
// rsttrace

/// rsttrace running with `--format json`, stdout and stderr in files.
struct Tracer {
    child: Child,
    dir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Tracer {
    fn start(bin: &Path) -> Res<Self> {
        if !bin.is_file() {
            return Err(format!("rsttrace binary {} is not a file", bin.display()));
        }
        let dir = std::env::temp_dir().join(format!("rsttrace-vm-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let stdout = dir.join("stdout.jsonl");
        let stderr = dir.join("stderr.log");
        let out = fs::File::create(&stdout).map_err(|e| format!("creating stdout file: {e}"))?;
        let err = fs::File::create(&stderr).map_err(|e| format!("creating stderr file: {e}"))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--format", "json"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; rsttrace stops (SIGINT) if this process dies.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut tracer = Self {
            child,
            dir,
            stdout,
            stderr,
        };
        let started = Instant::now();
        loop {
            let stderr = tracer.stderr();
            if stderr.split_whitespace().any(|w| w == "attached") {
                eprintln!(
                    "vm-scenarios: rsttrace attached after {:.1} s: {}",
                    started.elapsed().as_secs_f64(),
                    stderr.trim()
                );
                // Each kernel of the matrix must load every hook: a program its verifier
                // refuses is otherwise only a warning, and its evidence would go untested.
                if stderr.contains("could not attach") {
                    return Err(format!("rsttrace runs with a hook refused: {stderr}"));
                }
                return Ok(tracer);
            }
            if let Some(status) = tracer.exited() {
                return Err(format!(
                    "rsttrace exited ({status}) before attaching; stderr: {stderr}"
                ));
            }
            if started.elapsed() > ATTACH_TIMEOUT {
                return Err(format!(
                    "rsttrace did not print `attached` within {ATTACH_TIMEOUT:?}; stderr: {stderr}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Complete stdout lines so far.
    fn lines(&self) -> Vec<String> {
        let out = fs::read_to_string(&self.stdout).unwrap_or_default();
        let complete = out.rfind('\n').map_or("", |i| &out[..i]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The first `reset` line matching `pred`, waiting up to [`EVENT_TIMEOUT`].
    fn wait_reset(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Res<Value> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let found = self
                .lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| e["event"] == "reset" && pred(e));
            if let Some(event) = found {
                return Ok(event);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "rsttrace printed no reset for {what} within {EVENT_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT, then a clean exit (status 0) within [`STOP_TIMEOUT`]; returns stderr's last line.
    fn stop(&mut self) -> Res<String> {
        if let Some(status) = self.exited() {
            return Err(format!(
                "rsttrace had already exited ({status}); stderr: {}",
                self.stderr()
            ));
        }
        let pid = i32::try_from(self.child.id()).map_err(|e| e.to_string())?;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                let stderr = self.stderr();
                if !status.success() {
                    return Err(format!(
                        "rsttrace exited with {status} on SIGINT; stderr: {stderr}"
                    ));
                }
                let last = stderr.lines().last().unwrap_or_default().trim().to_string();
                let bad = self
                    .lines()
                    .into_iter()
                    .filter(|l| serde_json::from_str::<Value>(l).is_err())
                    .collect::<Vec<_>>();
                if !bad.is_empty() {
                    return Err(format!("rsttrace printed non-JSON lines: {bad:?}"));
                }
                return Ok(last);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "rsttrace did not exit within {STOP_TIMEOUT:?} of SIGINT; stderr: {}",
                    self.stderr()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// Checks on rsttrace's JSON

struct Checks<'a> {
    event: &'a Value,
    wrong: Vec<String>,
}

impl<'a> Checks<'a> {
    fn new(event: &'a Value) -> Self {
        Self {
            event,
            wrong: Vec::new(),
        }
    }

    fn field(&self, path: &str) -> &'a Value {
        path.split('.')
            .fold(self.event, |v, key| v.get(key).unwrap_or(&Value::Null))
    }

    fn str(&mut self, path: &str, want: &str) -> &mut Self {
        let got = self.field(path);
        if got.as_str() != Some(want) {
            self.wrong
                .push(format!("{path} is {got}, expected {want:?}"));
        }
        self
    }

    fn int(&mut self, path: &str, want: i64) -> &mut Self {
        let got = self.field(path);
        if got.as_i64() != Some(want) {
            self.wrong.push(format!("{path} is {got}, expected {want}"));
        }
        self
    }

    fn contains(&mut self, path: &str, part: &str) -> &mut Self {
        let got = self.field(path);
        if !got.as_str().is_some_and(|s| s.contains(part)) {
            self.wrong
                .push(format!("{path} is {got}, expected it to contain {part:?}"));
        }
        self
    }

    fn absent(&mut self, path: &str) -> &mut Self {
        let got = self.field(path);
        if !got.is_null() {
            self.wrong.push(format!("{path} is {got}, expected none"));
        }
        self
    }

    fn done(&self) -> Res<Value> {
        if self.wrong.is_empty() {
            Ok(self.event.clone())
        } else {
            Err(format!("{}: {}", self.wrong.join(", "), self.event))
        }
    }
}

fn my_pid() -> i64 {
    i64::from(std::process::id())
}

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// A forked server is SIGKILLed by this process with a request it never read.
fn tcp_sigkill(tracer: &Tracer) -> Res<Value> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(err("bind"))?;
    let server = listener.local_addr().map_err(err("local_addr"))?;
    let (ready_r, ready_w) = pipe()?;
    let mut child = fork(|| {
        if let Ok((conn, _)) = listener.accept() {
            child_hold(conn.as_raw_fd(), &ready_w);
        }
    })?;
    drop(listener);
    let mut client = TcpStream::connect(server).map_err(err("connect"))?;
    client.write_all(&[b'x'; UNREAD]).map_err(err("send"))?;
    wait_byte(&ready_r, "the child to accept and hold the unread request")?;
    child.kill(libc::SIGKILL)?;
    child.wait_signaled(libc::SIGKILL, STEP_TIMEOUT)?;
    expect_reset(&mut client)?;
    let local = loopback(client.local_addr().map_err(err("local_addr"))?.port());
    let remote = loopback(server.port());
    let event = tracer.wait_reset(&format!("{local} <- {remote}"), |e| {
        e["local"] == local.as_str() && e["remote"] == remote.as_str()
    })?;
    Checks::new(&event)
        .str("transport", "tcp")
        .str("cause", "signal")
        .int("peer.pid", child.pid.into())
        .int("signal.number", 9)
        .int("signal.sender.pid", my_pid())
        .done()
}

/// A live forked server closes the accepted connection with the request unread and stays up.
fn tcp_abort(tracer: &Tracer) -> Res<Value> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(err("bind"))?;
    let server = listener.local_addr().map_err(err("local_addr"))?;
    let (ready_r, ready_w) = pipe()?;
    let child = fork(|| {
        if let Ok((conn, _)) = listener.accept() {
            wait_unread(conn.as_raw_fd());
            drop(conn);
            child_hold(-1, &ready_w);
        }
    })?;
    drop(listener);
    let mut client = TcpStream::connect(server).map_err(err("connect"))?;
    client.write_all(&[b'x'; UNREAD]).map_err(err("send"))?;
    wait_byte(
        &ready_r,
        "the child to close the connection with the request unread",
    )?;
    expect_reset(&mut client)?;
    if !child.alive() {
        return Err("the child died; this scenario needs a live peer".into());
    }
    let local = loopback(client.local_addr().map_err(err("local_addr"))?.port());
    let remote = loopback(server.port());
    let event = tracer.wait_reset(&format!("{local} <- {remote}"), |e| {
        e["local"] == local.as_str() && e["remote"] == remote.as_str()
    })?;
    child.kill(libc::SIGKILL)?;
    Checks::new(&event)
        .str("transport", "tcp")
        .str("cause", "abort")
        .int("peer.pid", child.pid.into())
        .done()
}

/// connect() to a port nothing listens on: the kernel answers the SYN with a RST.
fn tcp_no_socket(tracer: &Tracer) -> Res<Value> {
    // Bound but not listening: the port stays closed and no one else can take it meanwhile.
    let closed = tcp_socket()?;
    let closed_port = bind_loopback(&closed)?;
    let client = tcp_socket()?;
    let local_port = bind_loopback(&client)?;
    let addr = sockaddr_in(closed_port);
    // SAFETY: a valid socket and a sockaddr_in of the size given.
    let rc = unsafe {
        libc::connect(
            client.as_raw_fd(),
            (&raw const addr).cast(),
            socklen::<libc::sockaddr_in>(),
        )
    };
    let error = io::Error::last_os_error();
    if rc == 0 || error.raw_os_error() != Some(libc::ECONNREFUSED) {
        return Err(format!(
            "connect to the closed port {closed_port}: expected ECONNREFUSED, got {}",
            if rc == 0 {
                "success".to_string()
            } else {
                error.to_string()
            }
        ));
    }
    let local = loopback(local_port);
    let remote = loopback(closed_port);
    let event = tracer.wait_reset(&format!("{local} <- {remote}"), |e| {
        e["local"] == local.as_str() && e["remote"] == remote.as_str()
    })?;
    Checks::new(&event)
        .str("transport", "tcp")
        .str("cause", "no_socket")
        .done()
}

/// A RST for an established loopback connection, forged through a raw socket in the shape
/// netfilter's REJECT gives it (DF, IP ID 0, TTL 64): made on this host by no socket. Kernels
/// before 6.10 do not trace their own answers for no socket, which look the same, so there
/// it has no origin.
fn tcp_forged_on_loopback(tracer: &Tracer) -> Res<Value> {
    let event = forged_reset(tracer, true, 0)?;
    let mut checks = Checks::new(&event);
    checks.str("transport", "tcp");
    if kernel_at_least(6, 10)? {
        checks
            .str("cause", "network")
            .str("network.origin", "local_firewall")
            .str("network.interface", "lo")
            .int("network.ip_id", 0)
            .int("network.ttl", 64);
    } else {
        // The hint names what this kernel cannot see, not only a lost sample.
        checks
            .str("cause", "unknown")
            .absent("network")
            .contains("hint", "before 6.10");
    }
    checks.done()
}

/// The same RST in the shape tcpkill, scapy or hping3 give it (DF clear, an IP ID of their
/// own): no kernel answer looks like it, so on every kernel the packet program's sample says
/// a raw socket on this host injected it.
fn tcp_injected_on_loopback(tracer: &Tracer) -> Res<Value> {
    let event = forged_reset(tracer, false, 4711)?;
    Checks::new(&event)
        .str("transport", "tcp")
        .str("cause", "network")
        .str("network.origin", "local_injected")
        .str("network.interface", "lo")
        .int("network.ip_id", 4711)
        .int("network.ttl", 64)
        .done()
}

/// Connects on loopback, forges the server's RST to the client through a raw socket, and
/// returns rsttrace's line for it once the client's read failed with ECONNRESET.
fn forged_reset(tracer: &Tracer, dont_fragment: bool, ip_id: u16) -> Res<Value> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(err("bind"))?;
    let server = listener.local_addr().map_err(err("local_addr"))?;
    let mut client = TcpStream::connect(server).map_err(err("connect"))?;
    let (accepted, _) = listener.accept().map_err(err("accept"))?;
    let client_port = client.local_addr().map_err(err("local_addr"))?.port();
    let seq = send_seq(accepted.as_raw_fd())?;
    forge_rst(server.port(), client_port, seq, dont_fragment, ip_id)?;
    expect_reset(&mut client)?;
    let local = loopback(client_port);
    let remote = loopback(server.port());
    tracer.wait_reset(&format!("{local} <- {remote}"), |e| {
        e["local"] == local.as_str() && e["remote"] == remote.as_str()
    })
}

/// The next sequence number `fd`'s TCP socket sends (its write_seq, read in repair mode,
/// which needs CAP_NET_ADMIN; left again without a window probe).
fn send_seq(fd: i32) -> Res<u32> {
    const TCP_REPAIR: i32 = 19;
    const TCP_REPAIR_QUEUE: i32 = 20;
    const TCP_QUEUE_SEQ: i32 = 21;
    const TCP_SEND_QUEUE: i32 = 2;
    const TCP_REPAIR_OFF_NO_WP: i32 = -1;
    let set = |option: i32, value: i32| {
        // SAFETY: an int option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                option,
                (&raw const value).cast(),
                socklen::<i32>(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "setsockopt TCP option {option}: {}",
                io::Error::last_os_error()
            ))
        }
    };
    set(TCP_REPAIR, 1)?;
    set(TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    let mut seq: u32 = 0;
    let mut len = socklen::<u32>();
    // SAFETY: getsockopt writes at most `len` bytes into `seq`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            TCP_QUEUE_SEQ,
            (&raw mut seq).cast(),
            &mut len,
        )
    };
    let read = if rc == 0 {
        Ok(seq)
    } else {
        Err(format!(
            "getsockopt TCP_QUEUE_SEQ: {}",
            io::Error::last_os_error()
        ))
    };
    set(TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)?;
    read
}

/// Sends a bare RST from 127.0.0.1:`sport` to 127.0.0.1:`dport` through a raw socket. The
/// kernel keeps a non-zero `ip_id`; for 0 it writes 0 when DF is set, else an ID of its own
/// (raw_send_hdrinc(), net/ipv4/raw.c).
fn forge_rst(sport: u16, dport: u16, seq: u32, dont_fragment: bool, ip_id: u16) -> Res<()> {
    let mut packet = [0u8; 40];
    let (ip, tcp) = packet.split_at_mut(20);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    if dont_fragment {
        ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    }
    ip[8] = 64;
    ip[9] = libc::IPPROTO_TCP as u8;
    ip[12..16].copy_from_slice(&[127, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[127, 0, 0, 1]);
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x04;
    // The TCP checksum covers a pseudo-header: addresses, protocol, TCP length.
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
    pseudo.extend_from_slice(tcp);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(format!("raw socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let to = sockaddr_in(dport);
    // SAFETY: the packet buffer and a sockaddr_in of the sizes given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const to).cast(),
            socklen::<libc::sockaddr_in>(),
        )
    };
    if sent != packet.len() as isize {
        return Err(format!("sending the RST: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> Res<bool> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").map_err(err("osrelease"))?;
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok((a, b) >= (major, minor))
}

/// A forked server in a memory cgroup (32 MiB, no swap) holds an unread request and allocates
/// until the OOM killer kills it.
fn oom_memcg(tracer: &Tracer) -> Res<Value> {
    let cgroup = MemCgroup::create(OOM_LIMIT)?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(err("bind"))?;
    let server = listener.local_addr().map_err(err("local_addr"))?;
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let mut child = fork(|| {
        if let Ok((conn, _)) = listener.accept() {
            wait_unread(conn.as_raw_fd());
            notify(&ready_w);
            let mut byte = [0u8; 1];
            // SAFETY: reading one byte into a one-byte buffer.
            if unsafe { libc::read(go_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } == 1 {
                allocate_forever();
            }
            drop(conn);
        }
    })?;
    drop(listener);
    drop(go_r);
    let mut client = TcpStream::connect(server).map_err(err("connect"))?;
    client.write_all(&[b'x'; UNREAD]).map_err(err("send"))?;
    wait_byte(&ready_r, "the child to accept and hold the unread request")?;
    cgroup.add(child.pid)?;
    notify(&go_w);
    child
        .wait_signaled(libc::SIGKILL, OOM_TIMEOUT)
        .map_err(|e| format!("{e} (memory cgroup {}: {})", cgroup.path, cgroup.events()))?;
    expect_reset(&mut client)?;
    let local = loopback(client.local_addr().map_err(err("local_addr"))?.port());
    let remote = loopback(server.port());
    let event = tracer.wait_reset(&format!("{local} <- {remote}"), |e| {
        e["local"] == local.as_str() && e["remote"] == remote.as_str()
    })?;
    Checks::new(&event)
        .str("transport", "tcp")
        .str("cause", "oom_kill")
        .int("peer.pid", child.pid.into())
        .int("signal.number", 9)
        .str("oom.scope", "cgroup")
        .int("oom.victim.pid", child.pid.into())
        .done()
}

/// Like tcp_sigkill over a unix stream socket: the client's recv() fails with ECONNRESET.
fn unix_sigkill(tracer: &Tracer) -> Res<Value> {
    let path = std::env::temp_dir().join(format!("rsttrace-vm-{}.sock", std::process::id()));
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(err("bind unix"))?;
    let (ready_r, ready_w) = pipe()?;
    let mut child = fork(|| {
        if let Ok((mut conn, _)) = listener.accept() {
            // Like a real upstream, it starts reading the request (rsttrace learns who uses
            // an accepted socket from its I/O), then dies with the rest unread.
            let _ = conn.read(&mut [0u8; 1]);
            child_hold(conn.as_raw_fd(), &ready_w);
        }
    })?;
    drop(listener);
    let result = (|| {
        let mut client = UnixStream::connect(&path).map_err(err("connect unix"))?;
        client.write_all(&[b'x'; UNREAD]).map_err(err("send"))?;
        wait_byte(&ready_r, "the child to accept and hold the unread request")?;
        child.kill(libc::SIGKILL)?;
        child.wait_signaled(libc::SIGKILL, STEP_TIMEOUT)?;
        client
            .set_read_timeout(Some(STEP_TIMEOUT))
            .map_err(err("SO_RCVTIMEO"))?;
        let mut buf = [0u8; 64];
        match client.read(&mut buf) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
            other => {
                return Err(format!(
                    "recv on the unix client: expected ECONNRESET, got {other:?}"
                ))
            }
        }
        let remote = path.display().to_string();
        let event = tracer.wait_reset(&format!("unix {remote}"), |e| {
            e["transport"] == "unix" && e["remote"] == remote.as_str()
        })?;
        Checks::new(&event)
            .str("cause", "signal")
            .int("peer.pid", child.pid.into())
            .int("signal.number", 9)
            .int("signal.sender.pid", my_pid())
            .done()
    })();
    let _ = fs::remove_file(&path);
    result
}

// ---------------------------------------------------------------------------------------
// Processes

/// A forked child: SIGKILLed and reaped on drop if still there.
struct Forked {
    pid: i32,
    reaped: bool,
}

/// Forks; the child runs `body` then `_exit(0)`s. This program has no other thread, so the
/// child may use the heap; it never returns into the caller.
fn fork(body: impl FnOnce()) -> Res<Forked> {
    let _ = io::stdout().flush();
    // SAFETY: single-threaded process; the child only runs `body` and exits.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(format!("fork: {}", io::Error::last_os_error())),
        0 => {
            body();
            // SAFETY: leaves the child without running the parent's destructors or flushes.
            unsafe { libc::_exit(0) }
        }
        pid => Ok(Forked { pid, reaped: false }),
    }
}

impl Forked {
    fn kill(&self, signal: i32) -> Res<()> {
        if self.reaped {
            return Ok(());
        }
        // SAFETY: kill(2) on our own, not yet reaped, child.
        if unsafe { libc::kill(self.pid, signal) } != 0 {
            return Err(format!(
                "kill({}, {signal}): {}",
                self.pid,
                io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Still running (not a zombie): /proc/PID/stat's state.
    fn alive(&self) -> bool {
        !self.reaped
            && fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit(')').next()?;
                    Some(!matches!(rest.split_whitespace().next()?, "Z" | "X"))
                })
                .unwrap_or(false)
    }

    /// Reaps the child, which must die from `signal` within `timeout`.
    fn wait_signaled(&mut self, signal: i32, timeout: Duration) -> Res<()> {
        let status = self.wait(timeout)?;
        if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == signal {
            Ok(())
        } else if libc::WIFSIGNALED(status) {
            Err(format!(
                "the child died from signal {}, expected {signal}",
                libc::WTERMSIG(status)
            ))
        } else {
            Err(format!(
                "the child exited with status {}, expected death by signal {signal}",
                libc::WEXITSTATUS(status)
            ))
        }
    }

    fn wait(&mut self, timeout: Duration) -> Res<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if rc == self.pid {
                self.reaped = true;
                return Ok(status);
            }
            if rc < 0 {
                return Err(format!(
                    "waitpid({}): {}",
                    self.pid,
                    io::Error::last_os_error()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the child {} did not die within {timeout:?}",
                    self.pid
                ));
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.kill(libc::SIGKILL);
            let _ = self.wait(STEP_TIMEOUT);
        }
    }
}

/// In a child: waits until the request is in `fd`'s receive queue (if `fd` >= 0), tells the
/// parent, then sleeps until killed.
fn child_hold(fd: RawFd, ready: &OwnedFd) {
    if fd >= 0 {
        wait_unread(fd);
    }
    notify(ready);
    loop {
        // SAFETY: pause(2) has no preconditions.
        unsafe { libc::pause() };
    }
}

/// In a child: waits (bounded) until `fd` has bytes queued that nobody read.
fn wait_unread(fd: RawFd) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while Instant::now() < deadline {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } == 0 && queued > 0 {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// In a child: touches anonymous memory 1 MiB at a time until killed (gives up at 4 GiB).
fn allocate_forever() {
    const CHUNK: usize = 1 << 20;
    for _ in 0..4096 {
        // SAFETY: a fresh private anonymous mapping, written only within its length.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                CHUNK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            let bytes = p.cast::<u8>();
            let mut off = 0;
            while off < CHUNK {
                bytes.add(off).write_volatile(1);
                off += 4096;
            }
        }
    }
}

fn pipe() -> Res<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn notify(fd: &OwnedFd) {
    // SAFETY: writes one byte from a one-byte buffer.
    unsafe { libc::write(fd.as_raw_fd(), b"x".as_ptr().cast(), 1) };
}

/// Waits for the byte a child writes when it reached a step; `what` names that step.
fn wait_byte(fd: &OwnedFd, what: &str) -> Res<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(STEP_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc <= 0 {
        return Err(format!(
            "timed out after {STEP_TIMEOUT:?} waiting for {what}"
        ));
    }
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte into a one-byte buffer.
    if unsafe { libc::read(fd.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } != 1 {
        return Err(format!("the child went away before {what}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sockets

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// The client's read must fail with ECONNRESET (what nginx logs as `recv() failed (104)`).
fn expect_reset(client: &mut TcpStream) -> Res<()> {
    client
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(err("SO_RCVTIMEO"))?;
    let mut buf = [0u8; 64];
    match client.read(&mut buf) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => Ok(()),
        other => Err(format!(
            "recv on the client: expected ECONNRESET, got {other:?}"
        )),
    }
}

fn tcp_socket() -> Res<OwnedFd> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_in(port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all zeroes is valid.
    let mut addr: libc::sockaddr_in = unsafe { mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be();
    addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
    addr
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// Binds `fd` to 127.0.0.1 on a port the kernel picks; returns that port.
fn bind_loopback(fd: &OwnedFd) -> Res<u16> {
    let addr = sockaddr_in(0);
    // SAFETY: a valid socket and a sockaddr_in of the size given.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            socklen::<libc::sockaddr_in>(),
        )
    } != 0
    {
        return Err(format!("bind 127.0.0.1:0: {}", io::Error::last_os_error()));
    }
    let mut bound = sockaddr_in(0);
    let mut len = socklen::<libc::sockaddr_in>();
    // SAFETY: getsockname writes at most `len` bytes into `bound`.
    if unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut bound).cast(), &mut len) } != 0 {
        return Err(format!("getsockname: {}", io::Error::last_os_error()));
    }
    Ok(u16::from_be(bound.sin_port))
}

// ---------------------------------------------------------------------------------------
// Memory cgroup (v2 as the VM mounts it at /sys/fs/cgroup, or a host's v1 memory hierarchy)

struct MemCgroup {
    dir: PathBuf,
    path: String,
    v2: bool,
}

impl MemCgroup {
    fn create(limit: u64) -> Res<Self> {
        let (root, v2) = memory_hierarchy()?;
        if v2 {
            let control = root.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&control).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "memory") {
                fs::write(&control, "+memory")
                    .map_err(|e| format!("enabling +memory in {}: {e}", control.display()))?;
            }
        }
        let path = format!("/rsttrace-vm-{}", std::process::id());
        let dir = root.join(path.trim_start_matches('/'));
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).map_err(|e| format!("creating cgroup {}: {e}", dir.display()))?;
        let cgroup = Self { dir, path, v2 };
        let limit = limit.to_string();
        if v2 {
            cgroup.write("memory.max", &limit)?;
            if cgroup.dir.join("memory.swap.max").exists() {
                cgroup.write("memory.swap.max", "0")?;
            }
        } else {
            cgroup.write("memory.limit_in_bytes", &limit)?;
            if cgroup.dir.join("memory.memsw.limit_in_bytes").exists() {
                cgroup.write("memory.memsw.limit_in_bytes", &limit)?;
            }
            if cgroup.dir.join("memory.swappiness").exists() {
                cgroup.write("memory.swappiness", "0")?;
            }
        }
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> Res<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(|e| format!("writing {value} to {}: {e}", path.display()))
    }

    fn add(&self, pid: i32) -> Res<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// What the kernel counted (v2 memory.events, v1 memory.oom_control), on one line.
    fn events(&self) -> String {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        one_line(&fs::read_to_string(self.dir.join(file)).unwrap_or_default())
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: only processes this program put in its own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The harness's finder (a v1 hierarchy holding the memory controller, else a cgroup2
/// mount offering it): (root, is cgroup v2).
fn memory_hierarchy() -> Res<(PathBuf, bool)> {
    let (version, root) = rsttrace_tests::memory_hierarchy().map_err(|e| format!("{e:#}"))?;
    Ok((root, version == rsttrace_tests::CgroupVersion::V2))
}
