//! The command line: options, their help and examples, and what they make of a session's
//! [`Options`]. The exit statuses it documents are main's.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use rsttrace::{generate::Generated, nginx::LogChoice, output, session::Options};

const AFTER_HELP: &str = "\
Examples:
  sudo rsttrace                          every reset any local process receives
  sudo rsttrace --pid-of php-fpm         resets between nginx and php-fpm (any version, new workers too)
  sudo rsttrace --pid-of gunicorn --format text
  sudo rsttrace --pid 4242 --count 1     stop after the first reset involving pid 4242 or its children
  sudo rsttrace --duration 10m | jq 'select(.cause == \"oom_kill\")'
  sudo rsttrace --check                  what this kernel supports
  sudo rsttrace --nginx-error-log /var/log/nginx/error.log --nginx-error-log /srv/site/error.log
                                         join these error.log files (default: the running nginx's)
  sudo rsttrace --nginx-error-log /var/log/pods/web_nginx-7d4_0c1e/nginx/0.log
                                         an nginx container logging to stderr (Kubernetes' CRI log)
  sudo rsttrace --metrics 9477           also serve Prometheus metrics on 127.0.0.1:9477/metrics
  sudo rsttrace --metrics 0.0.0.0:9477   ... on every address (only when asked)

Output:
  Each reset is one JSON line (schema_version 1; every field is described in README.md):
  cause is one of oom_kill, signal, crash, exit, abort, stale_connection, no_socket, kernel,
  network, unknown; a reset no local process sent carries {\"network\":{...}} (TTL, the
  interface it came in on, and whether a device on the path or this host's firewall made it).
  A reset nginx received carries {\"nginx\":{...}}, the line nginx logged for it (a reset of
  an nginx worker waits up to 1.5 s for it, so lines may come out of kernel order); a 104 line
  no reset explains is an {\"event\":\"unexplained\",...} line. The last line at stop is
  {\"event\":\"summary\",...} (with --format text, a table on stderr).
  Samples the kernel had to drop are reported as {\"event\":\"lost\",...} lines, never silently.

Privileges:
  Root, or these capabilities: CAP_BPF and CAP_PERFMON (load and attach the programs),
  CAP_SYS_ADMIN too where kernel.perf_event_paranoid is above 2 (Debian's and Ubuntu's
  kernels), CAP_NET_ADMIN (the packet program of the network evidence), CAP_DAC_READ_SEARCH
  (tracefs is root's only), CAP_SYS_PTRACE (other users' /proc/PID/fd: who owns a unix
  listener). Once attached, rsttrace gives up CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; it
  keeps CAP_SYS_ADMIN only while network evidence is attached (it enters other network
  namespaces to name their interfaces; --no-network-hooks drops it too).

Exit status:
  0 stopped normally (Ctrl-C, SIGTERM, --duration, --count, reader closed the pipe);
  1 runtime error; 2 bad usage (unknown flag, --pid of no process); 3 cannot run here
  (missing capabilities, tracefs not mounted, no BTF, a required tracepoint missing).";

#[derive(Parser, Debug)]
#[command(
    name = "rsttrace",
    version,
    about = "Explain every connection reset nginx (or any local process) receives, over TCP or \
             unix sockets: which upstream died, who killed it, OOM, crash, exit, abort, kernel or \
             network",
    after_help = AFTER_HELP
)]
pub struct Args {
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
    /// Stop after this many resets (or refused connections) are printed; none is printed
    /// after them.
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
    /// Attach no packet hook. rsttrace otherwise runs a small program on every TCP segment
    /// the host receives (cgroup_skb at the cgroup2 root) to read the TTL and device of
    /// resets; without it, resets still get a verdict but `network` has no hops, origin
    /// or forging namespace.
    #[arg(long)]
    no_network_hooks: bool,
    /// Where the host's cgroup file systems are mounted, if not at /sys/fs/cgroup: in a
    /// container with its own cgroup namespace, whose /sys/fs/cgroup shows only its own
    /// subtree (mount the host's /sys/fs/cgroup at DIR). Names the memory cgroups of OOM
    /// kills, and is where the packet hook attaches.
    #[arg(long, value_name = "DIR")]
    cgroup_root: Option<PathBuf>,
    /// An nginx error.log to join with the resets (repeatable; a file nginx writes, or a
    /// Kubernetes CRI log of an nginx logging to stderr). Default: the error_log files of the
    /// running nginx (found from its configuration, also inside containers), else
    /// /var/log/nginx/error.log when it exists.
    #[arg(
        long = "nginx-error-log",
        value_name = "PATH",
        conflicts_with = "no_nginx_log"
    )]
    nginx_error_log: Vec<PathBuf>,
    /// Do not read nginx's error.log: no `nginx` object, no `unexplained` events, no reset
    /// waits for a line.
    #[arg(long)]
    no_nginx_log: bool,
    /// Serve Prometheus metrics on ADDR (/metrics): PORT (on 127.0.0.1), IP:PORT or
    /// [IPv6]:PORT. Other than loopback only when given: 0.0.0.0:9477.
    #[arg(long, value_name = "ADDR", value_parser = rsttrace::metrics::parse_addr)]
    metrics: Option<SocketAddr>,
    /// Print what this kernel supports and which hook serves each capability, then exit.
    #[arg(long)]
    pub check: bool,
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
    /// Print the man page or a shell's completions and exit (for packaging).
    #[arg(long, hide = true, value_name = "KIND")]
    pub generate: Option<Generated>,
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

impl Args {
    pub fn options(&self) -> Options {
        Options {
            pid_of: self.pid_of.clone(),
            pid: self.pid.clone(),
            format: match self.format {
                Format::Json => output::Format::Json,
                Format::Text => output::Format::Text,
            },
            duration: self.duration,
            count: self.count,
            buffer_bytes: self.buffer_size,
            no_syscall_hooks: self.no_syscall_hooks,
            no_network_hooks: self.no_network_hooks,
            cgroup_root: self.cgroup_root.clone(),
            debug_events: self.debug_events,
            syscall_hooks: self.syscall_hooks,
            syscall_args_at_entry: self.syscall_args_at_entry,
            nginx_log: if self.no_nginx_log {
                None
            } else if self.nginx_error_log.is_empty() {
                Some(LogChoice::Discover)
            } else {
                Some(LogChoice::Files(self.nginx_error_log.clone()))
            },
            metrics: self.metrics,
        }
    }
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
    fn nginx_log_choices() {
        let opts = |args: &[&str]| {
            Args::try_parse_from([&["rsttrace"], args].concat()).map(|a| a.options().nginx_log)
        };
        assert_eq!(opts(&[]).ok(), Some(Some(LogChoice::Discover)));
        assert_eq!(opts(&["--no-nginx-log"]).ok(), Some(None));
        assert_eq!(
            opts(&["--nginx-error-log", "/a", "--nginx-error-log", "/b"]).ok(),
            Some(Some(LogChoice::Files(vec!["/a".into(), "/b".into()])))
        );
        assert!(opts(&["--nginx-error-log", "/a", "--no-nginx-log"]).is_err());
        let err = Args::try_parse_from(["rsttrace", "--metrics", ":9477"]).expect_err("ambiguous");
        assert!(err.to_string().contains("0.0.0.0:9477"), "{err}");
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let err = Args::try_parse_from(["rsttrace", "--frobnicate"]).expect_err("must fail");
        // clap's usage status is the one main() documents for bad usage.
        assert_eq!(err.exit_code(), 2);
    }
}
