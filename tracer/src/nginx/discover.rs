//! Which error.log files the running nginx writes, and which host pid a logged pid is.
//!
//! nginx masters are found in /proc (comm `nginx`, title `nginx: master process ...`). The
//! title keeps the command line (ngx_setproctitle copies it), so `-c`, `-p`, `-e` and `-g`
//! are read from it. An nginx in another mount namespace (a container) names paths inside its
//! own root: they are resolved under /proc/<master>/root, symlinks included (an absolute
//! symlink there points into the container, not to the host). Its log shows pids of its own
//! pid namespace: [`PidMap`] maps them with `NSpid:` from /proc/PID/status.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{
    conf,
    root::{resolve_in_root, StandardStream},
};

/// The fallback when no running nginx tells us more (Debian's, Ubuntu's and RHEL's default).
pub const DEFAULT_ERROR_LOG: &str = "/var/log/nginx/error.log";

/// One running nginx master.
#[derive(Debug, Clone)]
pub struct NginxInstance {
    /// As seen from here (rsttrace's pid namespace).
    pub master_pid: u32,
    /// `/`, or `/proc/<master_pid>/root` for an nginx in another mount namespace.
    pub root: PathBuf,
    pub in_container: bool,
    /// The configuration file, as nginx names it (inside its root).
    pub conf_file: PathBuf,
    pub error_logs: Vec<ErrorLog>,
    /// Targets skipped (stderr, syslog, memory) and files that could not be read.
    pub notes: Vec<String>,
}

/// An `error_log` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLog {
    /// As nginx names it (absolute, inside its root).
    pub nginx_path: PathBuf,
    /// Where rsttrace opens it.
    pub path: PathBuf,
}

/// Every nginx master running, with its error logs.
pub fn discover() -> Vec<NginxInstance> {
    masters()
        .into_iter()
        .filter_map(|pid| instance(pid).ok())
        .collect()
}

/// The files to follow: those of every running nginx, else [`DEFAULT_ERROR_LOG`] when it
/// exists. Deduplicated, in discovery order.
pub fn error_log_paths(instances: &[NginxInstance]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for log in instances.iter().flat_map(|i| &i.error_logs) {
        if !out.contains(&log.path) {
            out.push(log.path.clone());
        }
    }
    if out.is_empty() && Path::new(DEFAULT_ERROR_LOG).is_file() {
        out.push(PathBuf::from(DEFAULT_ERROR_LOG));
    }
    out
}

/// Pids of nginx master processes.
pub fn masters() -> Vec<u32> {
    let mut out: Vec<u32> = crate::procfs::processes()
        .filter(|(_, dir)| {
            std::fs::read(dir.join("comm")).is_ok_and(|c| c.trim_ascii() == b"nginx")
                && std::fs::read(dir.join("cmdline"))
                    .is_ok_and(|c| c.starts_with(b"nginx: master process"))
        })
        .map(|(pid, _)| pid)
        .collect();
    out.sort_unstable();
    out
}

/// The master's command line flags, from its title `nginx: master process ARGV...`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MasterArgs {
    pub binary: String,
    pub prefix: Option<String>,
    pub conf: Option<String>,
    pub error_log: Option<String>,
    pub globals: Option<String>,
}

/// Reads the flags back from the title. The title joins argv with spaces, so a path with
/// spaces is cut at its first space; nginx's own flags are the separators.
pub fn parse_title(title: &[u8]) -> MasterArgs {
    let text = String::from_utf8_lossy(title);
    let text = text.trim_end_matches('\0').replace('\0', " ");
    let rest = text.strip_prefix("nginx: master process").unwrap_or(&text);
    let words: Vec<&str> = rest.split_whitespace().collect();
    let mut args = MasterArgs {
        binary: words.first().map(|s| s.to_string()).unwrap_or_default(),
        ..MasterArgs::default()
    };
    let flags = [
        "-c", "-p", "-e", "-g", "-s", "-q", "-t", "-T", "-v", "-V", "-?", "-h",
    ];
    let mut i = 1;
    while i < words.len() {
        let word = words[i];
        i += 1;
        let slot = match word {
            "-c" => &mut args.conf,
            "-p" => &mut args.prefix,
            "-e" => &mut args.error_log,
            "-g" => {
                let start = i;
                while i < words.len() && !flags.contains(&words[i]) {
                    i += 1;
                }
                args.globals = Some(words[start..i].join(" "));
                continue;
            }
            _ => continue,
        };
        if let Some(value) = words.get(i) {
            *slot = Some(value.to_string());
            i += 1;
        }
    }
    args
}

/// Discovers one master: its root, configuration and error logs.
pub fn instance(master_pid: u32) -> Result<NginxInstance> {
    let proc_dir = PathBuf::from(format!("/proc/{master_pid}"));
    let title = std::fs::read(proc_dir.join("cmdline"))
        .with_context(|| format!("reading /proc/{master_pid}/cmdline"))?;
    let args = parse_title(&title);
    let in_container = other_mount_namespace(master_pid)?;
    let root = if in_container {
        proc_dir.join("root")
    } else {
        PathBuf::from("/")
    };
    let built = BuildDefaults::of_binary(&proc_dir.join("exe"));
    let cwd = std::fs::read_link(proc_dir.join("cwd")).unwrap_or_else(|_| PathBuf::from("/"));
    // nginx resolves -p against its working folder and -c against the prefix
    // (ngx_process_options, src/core/nginx.c).
    let prefix = args
        .prefix
        .as_deref()
        .map(|p| conf::absolute(&cwd, p))
        .unwrap_or_else(|| PathBuf::from(&built.prefix));
    let conf_file = conf::absolute(&prefix, args.conf.as_deref().unwrap_or(&built.conf_path));
    let conf_prefix = conf_file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let conf = conf::read(&root, &conf_file, &conf_prefix, args.globals.as_deref());
    let mut notes = conf.problems;
    let mut error_logs = Vec::new();
    let logs = conf.directives.iter().filter(|d| d.name == "error_log");
    let has_top_level = logs.clone().any(|d| d.top_level);
    let mut targets: Vec<String> = logs.filter_map(|d| d.args.first().cloned()).collect();
    if !has_top_level {
        // Without a top-level error_log nginx keeps its default one: -e, else the built-in
        // path (ngx_log_open_default, src/core/ngx_log.c).
        targets.push(
            args.error_log
                .clone()
                .unwrap_or(built.error_log_path.clone()),
        );
    }
    for target in targets {
        if target == "stderr" || target.starts_with("syslog:") || target.starts_with("memory:") {
            notes.push(format!("error_log {target}: not a file, not followed"));
            continue;
        }
        let nginx_path = conf::absolute(&prefix, &target);
        // One path that cannot be followed costs that path, not the instance: without the
        // instance its workers' resets would not wait for their lines.
        let path = match resolve_in_root(&root, &nginx_path) {
            Ok(path) => path,
            Err(e) if e.is::<StandardStream>() => {
                notes.push(format!(
                    "error_log {target}: a link to nginx's standard error (as in the official \
                     image), not followed; give --nginx-error-log the file its stderr goes to \
                     (Kubernetes: /var/log/pods/<pod>/<container>/0.log)"
                ));
                continue;
            }
            Err(e) => {
                notes.push(format!("error_log {target}: {e:#}, not followed"));
                continue;
            }
        };
        let log = ErrorLog { nginx_path, path };
        if !error_logs.contains(&log) {
            error_logs.push(log);
        }
    }
    Ok(NginxInstance {
        master_pid,
        root,
        in_container,
        conf_file,
        error_logs,
        notes,
    })
}

fn other_mount_namespace(pid: u32) -> Result<bool> {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .with_context(|| format!("reading /proc/{pid}/ns/mnt (needs root or CAP_SYS_PTRACE)"))?;
    let ours = std::fs::read_link("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?;
    Ok(theirs != ours)
}

/// The paths compiled into an nginx binary (`nginx -V`'s configure arguments, which the
/// binary carries as a string), without running it: it may belong to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildDefaults {
    pub prefix: String,
    pub conf_path: String,
    pub error_log_path: String,
}

impl BuildDefaults {
    /// nginx's own defaults (auto/options) when the binary says nothing.
    pub fn upstream_defaults() -> Self {
        Self {
            prefix: "/usr/local/nginx".into(),
            conf_path: "conf/nginx.conf".into(),
            error_log_path: "logs/error.log".into(),
        }
    }

    pub fn of_binary(exe: &Path) -> Self {
        const MAX_BINARY: u64 = 64 * 1024 * 1024;
        let data = std::fs::metadata(exe)
            .ok()
            .filter(|m| m.len() <= MAX_BINARY)
            .and_then(|_| std::fs::read(exe).ok())
            .unwrap_or_default();
        Self::from_configure_args(&data)
    }

    pub fn from_configure_args(data: &[u8]) -> Self {
        let mut out = Self::upstream_defaults();
        let value = |key: &[u8]| -> Option<String> {
            let at = super::parse::find(data, key)? + key.len();
            let end = data[at..]
                .iter()
                .position(|b| *b == b' ' || *b == 0 || *b == b'\n')
                .map_or(data.len(), |e| at + e);
            Some(String::from_utf8_lossy(&data[at..end]).into_owned())
        };
        if let Some(v) = value(b" --prefix=") {
            out.prefix = v;
        }
        if let Some(v) = value(b" --conf-path=") {
            out.conf_path = v;
        }
        if let Some(v) = value(b" --error-log-path=") {
            out.error_log_path = v;
        }
        out
    }
}

/// The pid an nginx process logs (its own, in its pid namespace) -> its pid here.
#[derive(Debug, Clone, Default)]
pub struct PidMap {
    master: u32,
    map: HashMap<u32, u32>,
}

impl PidMap {
    /// The master and its children (workers, cache processes). Call again (or
    /// [`PidMap::refresh`]) after a reload: workers are new processes then.
    pub fn of_master(master_pid: u32) -> Result<Self> {
        let mut map = Self {
            master: master_pid,
            map: HashMap::new(),
        };
        map.refresh()?;
        Ok(map)
    }

    pub fn refresh(&mut self) -> Result<()> {
        let (_, inner) = ns_pids(self.master)?;
        let mut map = HashMap::from([(inner, self.master)]);
        for (pid, dir) in crate::procfs::processes() {
            let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
                continue;
            };
            if status_field(&status, "PPid:").and_then(|p| p.parse::<u32>().ok())
                != Some(self.master)
            {
                continue;
            }
            if let Some(inner) = status_field(&status, "NSpid:").and_then(innermost) {
                map.insert(inner, pid);
            }
        }
        self.map = map;
        Ok(())
    }

    /// A map where every pid is its own (nginx in rsttrace's pid namespace), for recorded lines.
    pub fn identity(pids: impl IntoIterator<Item = u32>) -> Self {
        let map: HashMap<u32, u32> = pids.into_iter().map(|p| (p, p)).collect();
        let master = map.keys().min().copied().unwrap_or(0);
        Self { master, map }
    }

    /// A map from known (logged pid, pid here) pairs: an nginx in another pid namespace
    /// whose pids were read elsewhere (tests, recorded sessions).
    pub fn from_pairs(master: u32, pairs: impl IntoIterator<Item = (u32, u32)>) -> Self {
        Self {
            master,
            map: pairs.into_iter().collect(),
        }
    }

    /// The pid here of the nginx process that logged `logged_pid`.
    pub fn host_pid(&self, logged_pid: u32) -> Option<u32> {
        self.map.get(&logged_pid).copied()
    }

    /// Whether `pid` (here) is this nginx's master or one of its workers.
    pub fn contains_host(&self, pid: u32) -> bool {
        self.map.values().any(|p| *p == pid)
    }

    /// The master's pid here.
    pub fn master(&self) -> u32 {
        self.master
    }
}

/// (pid here, pid in the process's own namespace) from `NSpid:`.
pub fn ns_pids(pid: u32) -> Result<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let inner = status_field(&status, "NSpid:")
        .and_then(innermost)
        .with_context(|| format!("/proc/{pid}/status has no NSpid line (kernel < 4.1?)"))?;
    Ok((pid, inner))
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

fn innermost(nspid: &str) -> Option<u32> {
    nspid.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        let t = parse_title(
            b"nginx: master process nginx -p /tmp/x -c /tmp/x/nginx.conf -e /tmp/x/e.log -g daemon off; user w;\0\0\0",
        );
        assert_eq!(
            t,
            MasterArgs {
                binary: "nginx".into(),
                prefix: Some("/tmp/x".into()),
                conf: Some("/tmp/x/nginx.conf".into()),
                error_log: Some("/tmp/x/e.log".into()),
                globals: Some("daemon off; user w;".into()),
            }
        );
        let t =
            parse_title(b"nginx: master process /usr/sbin/nginx -g daemon on; master_process on;");
        assert_eq!(t.binary, "/usr/sbin/nginx");
        assert_eq!(t.conf, None);
    }

    #[test]
    fn build_defaults_from_debians_binary() {
        // Debian's nginx-light: --prefix=/usr/share/nginx --conf-path=/etc/nginx/nginx.conf
        // --error-log-path=stderr (a setup step installs it; rsttrace's tests need it).
        let d = BuildDefaults::of_binary(Path::new("/usr/sbin/nginx"));
        assert_eq!(
            d,
            BuildDefaults {
                prefix: "/usr/share/nginx".into(),
                conf_path: "/etc/nginx/nginx.conf".into(),
                error_log_path: "stderr".into(),
            }
        );
        assert_eq!(
            BuildDefaults::from_configure_args(b"no arguments here"),
            BuildDefaults::upstream_defaults()
        );
    }

    #[test]
    fn nspid_of_this_process() {
        let (here, inner) = ns_pids(std::process::id()).expect("NSpid is in /proc/self/status");
        assert_eq!(here, std::process::id());
        // rsttrace's tests run in the initial pid namespace: both are the same.
        assert_eq!(inner, here);
        assert_eq!(innermost("12345\t7"), Some(7));
    }
}
