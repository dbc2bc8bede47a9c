//! nginx as in a container: `unshare --kill-child --pid --mount --net --fork`, its log folder
//! on a tmpfs only its mount namespace sees (from here the log exists only under
//! /proc/<master>/root), its own time zone (given in `TZ`, which nginx then hides), an
//! optional upstream of its own inside its network namespace, and optionally its stderr
//! written to a file in the CRI format kubelet uses (as the official image logs).
//! Stopped, with its namespaces, on drop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{children_of, proc_comm, send_signal, wait_for_exit, wait_until};

/// Writes stdin lines as kubelet's CRI log lines (`RFC3339NANO stderr F LINE`).
const CRI_WRITER: &str = r#"
import datetime, sys
for line in sys.stdin:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
    sys.stdout.write(f"{now} stderr F {line}")
    sys.stdout.flush()
"#;

#[derive(Debug, Clone)]
pub struct NamespacedNginxOptions {
    /// nginx listens on 127.0.0.1:port inside its namespace.
    pub port: u16,
    /// `proxy_pass http://127.0.0.1:upstream_port` (9: nobody listens, connect() refused).
    pub upstream_port: u16,
    /// A python3 server started inside the namespace before nginx, given `upstream_port` as
    /// its first argument.
    pub upstream: Option<String>,
    /// `TZ` for nginx.
    pub tz: String,
    /// Also `error_log stderr`, written in the CRI format to this file (outside the tmpfs).
    pub cri_log: Option<PathBuf>,
    /// As the official image: `logs/error.log` is a link to /dev/stderr (and the namespace
    /// has its own /proc, so /proc/self there is no process of ours). Needs `cri_log`.
    pub log_links_to_stderr: bool,
}

pub struct NamespacedNginx {
    unshare: Child,
    pub master: u32,
    pub port: u16,
    /// The log as nginx names it (inside its mount namespace).
    pub error_log: PathBuf,
}

impl Drop for NamespacedNginx {
    fn drop(&mut self) {
        // When the namespace's pid 1 exits the kernel kills the rest, and the mount and
        // network namespaces (with the tmpfs) go with the last process.
        let _ = send_signal(self.master, libc::SIGTERM);
        if !wait_for_exit(self.master, Duration::from_secs(10)) {
            let _ = self.unshare.kill();
        }
        if wait_until(Duration::from_secs(10), || {
            self.unshare.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}

impl NamespacedNginx {
    /// Starts it with its files in `dir` (which must have a `logs` folder).
    pub fn start(dir: &Path, o: &NamespacedNginxOptions) -> Result<Self> {
        let d = dir.display();
        if o.log_links_to_stderr && o.cri_log.is_none() {
            bail!("log_links_to_stderr needs cri_log: the stream must go somewhere");
        }
        let stderr_log = if o.cri_log.is_some() && !o.log_links_to_stderr {
            "error_log stderr info;\n"
        } else {
            ""
        };
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log info;\n{stderr_log}\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/px;\n\
             \x20 fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n\
             \x20 server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://127.0.0.1:{up}; \
             proxy_next_upstream off; }} }}\n}}\n",
            port = o.port,
            up = o.upstream_port,
        );
        std::fs::write(dir.join("nginx.conf"), conf).context("writing nginx.conf")?;
        let mut script = format!("mount -t tmpfs rsttrace-test {d}/logs && ip link set lo up && ");
        if o.log_links_to_stderr {
            script += &format!("ln -s /dev/stderr {d}/logs/error.log && ");
        }
        if let Some(source) = &o.upstream {
            std::fs::write(dir.join("upstream.py"), source).context("writing upstream.py")?;
            script += &format!(
                "{{ python3 -u {d}/upstream.py {} > {d}/upstream.out 2>&1 & }} && ",
                o.upstream_port
            );
        }
        let nginx = format!(
            "env TZ={} nginx -p {d} -c {d}/nginx.conf -g 'daemon off;'",
            o.tz
        );
        match &o.cri_log {
            Some(cri) => {
                std::fs::write(dir.join("cri.py"), CRI_WRITER).context("writing cri.py")?;
                script += &format!(
                    "{nginx} 2>&1 >/dev/null | python3 -u {d}/cri.py >> {}",
                    cri.display()
                );
            }
            None => script += &format!("exec {nginx}"),
        }
        let mut unshare = Command::new("unshare");
        unshare.args(["--kill-child", "--pid", "--mount", "--net", "--fork"]);
        if o.log_links_to_stderr {
            unshare.arg("--mount-proc");
        }
        let unshare = unshare
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .context("running unshare")?;
        let root = unshare.id();
        let master = wait_until(Duration::from_secs(15), || {
            descendants(root).into_iter().find(|&pid| is_master(pid))
        });
        let mut ns = Self {
            unshare,
            master: master.unwrap_or(0),
            port: o.port,
            error_log: dir.join("logs/error.log"),
        };
        if master.is_none() {
            let _ = ns.unshare.kill();
            bail!("nginx did not start under unshare: {script}");
        }
        if wait_until(Duration::from_secs(10), || {
            (!children_of(ns.master).is_empty()).then_some(())
        })
        .is_none()
        {
            bail!("nginx {} started no worker", ns.master);
        }
        Ok(ns)
    }

    /// The error log as rsttrace (in the host's mount namespace) opens it.
    pub fn error_log_from_host(&self) -> PathBuf {
        let inside = self.error_log.strip_prefix("/").unwrap_or(&self.error_log);
        PathBuf::from(format!("/proc/{}/root", self.master)).join(inside)
    }

    /// Its workers, as pids here.
    pub fn workers(&self) -> Vec<u32> {
        children_of(self.master)
            .into_iter()
            .filter(|&p| proc_comm(p).as_deref() == Some("nginx"))
            .collect()
    }

    /// One HTTP request inside its network namespace; the raw response.
    pub fn request(&self, path: &str) -> Result<String> {
        request_in_netns(self.master, self.port, path)
    }
}

fn is_master(pid: u32) -> bool {
    proc_comm(pid).as_deref() == Some("nginx")
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.starts_with(b"nginx: master process"))
}

fn descendants(root: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for child in children_of(pid) {
            out.push(child);
            todo.push(child);
        }
    }
    out
}

/// One HTTP/1.1 request from a thread that joined `pid`'s network namespace (setns affects
/// only the calling thread, and the thread ends with it).
pub fn request_in_netns(pid: u32, port: u16, path: &str) -> Result<String> {
    let path = path.to_string();
    std::thread::spawn(move || -> Result<String> {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).context("its netns")?;
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).context("connecting")?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: ns\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        Ok(answer)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the request thread panicked"))?
}
