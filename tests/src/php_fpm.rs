//! A php-fpm 8.2 master in the foreground with its own config, pool(s) and docroot.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Netns;
use crate::process::{children_of, server_port, wait_listening_at, Placement, Service};
use crate::tempdir::TempDir;

const PHP_FPM: &str = "php-fpm8.2";
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Process manager mode of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pm {
    /// `max_children` workers forked at start.
    Static,
    /// Workers forked per connection, none at start.
    Ondemand,
}

#[derive(Debug, Clone)]
pub struct PhpFpmOptions {
    pub pm: Pm,
    pub max_children: u32,
    /// `request_terminate_timeout` in seconds (the master SIGTERMs a worker past it).
    pub request_terminate_timeout: Option<u32>,
    /// `php_admin_value[memory_limit]`, e.g. "-1" to let a script grow until the OOM killer.
    pub memory_limit: Option<String>,
    /// Cgroup folders (e.g. [`crate::MemCgroup::dir`], [`crate::ContainerCgroup::dirs`]) the
    /// master joins before exec; its workers inherit them.
    pub cgroups: Vec<PathBuf>,
    /// The TCP pool's address (default 127.0.0.1); the port is picked free.
    pub listen: IpAddr,
    /// Run inside this network namespace (default: the host's).
    pub netns: Option<Netns>,
    /// Also serve the pool on a unix socket (a second pool, `unix`, same settings), as
    /// Debian's default /run/php/php8.2-fpm.sock does.
    pub unix_socket: bool,
    /// pm.max_requests: a worker exits (and the master forks a new one) after that many.
    pub max_requests: Option<u32>,
}

impl Default for PhpFpmOptions {
    fn default() -> Self {
        Self {
            pm: Pm::Static,
            max_children: 1,
            request_terminate_timeout: None,
            memory_limit: None,
            cgroups: Vec::new(),
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            unix_socket: false,
            max_requests: None,
        }
    }
}

pub struct PhpFpm {
    // Field order is drop order: stop the master before removing its folder.
    service: Service,
    dir: TempDir,
    addr: SocketAddr,
    unix_socket: Option<PathBuf>,
    docroot: PathBuf,
    state_dir: PathBuf,
}

impl PhpFpm {
    /// Writes the config, starts `php-fpm8.2 -F -O -y CONF -p DIR` and waits until the TCP
    /// pool listens (and, for `pm = static`, all workers exist).
    pub fn start(options: PhpFpmOptions) -> Result<Self> {
        let dir = TempDir::new("php-fpm")?;
        let docroot = dir.subdir("www", 0o755)?;
        let state_dir = dir.subdir("state", 0o777)?;
        let addr = SocketAddr::new(
            options.listen,
            server_port(options.listen, options.netns.as_ref()),
        );
        let unix_socket = options.unix_socket.then(|| dir.path().join("php-fpm.sock"));
        let conf = dir.write(
            "php-fpm.conf",
            config(dir.path(), addr, unix_socket.as_deref(), &options),
        )?;

        let fpm_args = [
            "-F".as_ref(),
            "-O".as_ref(),
            "-y".as_ref(),
            conf.as_os_str(),
            "-p".as_ref(),
            dir.path().as_os_str(),
        ];
        let mut cmd = Command::new(PHP_FPM);
        cmd.args(fpm_args);
        let log = dir.path().join("php-fpm.out");
        let placement = Placement {
            netns: options.netns.clone(),
            cgroups: options.cgroups.clone(),
        };
        let mut service = Service::spawn(PHP_FPM, &mut cmd, &log, libc::SIGTERM, &placement)?;
        service.add_log(dir.path().join("php-fpm.log"));

        let master = service.pid();
        service.wait_ready("listening socket", START_TIMEOUT, || {
            wait_listening_at(addr, options.netns.as_ref(), Duration::from_millis(100)).ok()
        })?;
        if let Some(sock) = &unix_socket {
            service.wait_ready("unix socket", START_TIMEOUT, || sock.exists().then_some(()))?;
        }
        if options.pm == Pm::Static {
            let want = options.max_children as usize;
            service.wait_ready("workers", START_TIMEOUT, || {
                (children_of(master).len() >= want).then_some(())
            })?;
        }
        Ok(Self {
            service,
            dir,
            addr,
            unix_socket,
            docroot,
            state_dir,
        })
    }

    /// TCP port of the pool.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The TCP pool's address (inside its network namespace).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix_socket.as_deref()
    }

    /// Where scripts live; nginx's SCRIPT_FILENAME is docroot + the path after the location.
    pub fn docroot(&self) -> &Path {
        &self.docroot
    }

    /// A folder the workers (www-data) may write to, e.g. for "request started" markers.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Writes a PHP script into the docroot.
    pub fn write_script(&self, name: &str, source: &str) -> Result<PathBuf> {
        self.dir.write(&format!("www/{name}"), source)
    }

    pub fn master_pid(&self) -> u32 {
        self.service.pid()
    }

    /// Current workers: the master's children.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master_pid())
    }

    /// The master's log (its stderr with -O, plus php-fpm.log), where it reports killed or
    /// timed-out children.
    pub fn log(&self) -> String {
        let file = std::fs::read_to_string(self.dir.path().join("php-fpm.log"));
        self.service.log() + &file.unwrap_or_default()
    }

    /// Waits until the master's log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        crate::process::wait_until(timeout, || self.log().contains(needle).then_some(())).is_some()
    }

    /// Fails if the master has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.service.check_running().context("php-fpm master")
    }
}

fn config(dir: &Path, addr: SocketAddr, unix_socket: Option<&Path>, o: &PhpFpmOptions) -> String {
    let d = dir.display();
    let mut conf = format!(
        "[global]\n\
         pid = {d}/php-fpm.pid\n\
         error_log = {d}/php-fpm.log\n\
         log_level = notice\n\
         daemonize = no\n\n"
    );
    conf.push_str(&pool("tcp", &addr.to_string(), o));
    if let Some(sock) = unix_socket {
        conf.push_str(&pool("unix", &sock.display().to_string(), o));
        conf.push_str("listen.owner = www-data\nlisten.group = www-data\nlisten.mode = 0660\n");
    }
    conf
}

fn pool(name: &str, listen: &str, o: &PhpFpmOptions) -> String {
    let mut p = format!(
        "[{name}]\n\
         user = www-data\n\
         group = www-data\n\
         listen = {listen}\n\
         pm.max_children = {}\n\
         catch_workers_output = yes\n\
         decorate_workers_output = no\n",
        o.max_children
    );
    match o.pm {
        Pm::Static => p.push_str("pm = static\n"),
        Pm::Ondemand => p.push_str("pm = ondemand\npm.process_idle_timeout = 60s\n"),
    }
    if let Some(t) = o.request_terminate_timeout {
        let _ = writeln!(p, "request_terminate_timeout = {t}s");
    }
    if let Some(n) = o.max_requests {
        let _ = writeln!(p, "pm.max_requests = {n}");
    }
    if let Some(limit) = &o.memory_limit {
        let _ = writeln!(p, "php_admin_value[memory_limit] = {limit}");
    }
    p
}
