//! A real Docker Engine (Debian's docker.io) and containers built from nothing but the host's
//! own files.
//!
//! Debian's engine (`/usr/sbin/dockerd`, 20.10) is driven with Debian's matching client
//! `/usr/bin/docker`, never the `docker` first on PATH: machines may carry a newer client-only
//! binary in /usr/local/bin. [`Docker::start`] uses a running engine as it is, or starts
//! dockerd and, on [`Docker::stop`] or drop, stops it and puts the host back as it was:
//! dockerd sets the FORWARD policy to DROP, adds its chains and NAT rules, enables ip_forward
//! and creates docker0, and leaves all of that behind when it exits.
//!
//! No registry is reachable: the image is `docker import` of an empty tar, and containers
//! bind-mount the host's /usr, /lib, /lib64, /bin and /etc read-only (python3 comes from there).

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::command::{display, run, run_args};
use crate::netns::{host_links, unique_tag, FirewallSnapshot};
use crate::process::{wait_until, Placement, Service};
use crate::tempdir::TempDir;

/// Debian's client, matching Debian's engine.
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The locally built image.
pub const IMAGE: &str = "rsttrace-host:1";
/// Every container the harness starts carries this label (leftovers are found by it).
const LABEL: &str = "rsttrace-test";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const HOST_DIRS: [&str; 5] = ["/usr", "/lib", "/lib64", "/bin", "/etc"];

/// `/usr/bin/docker ARGS...`; returns stdout.
pub fn docker(args: &[&str]) -> Result<String> {
    run_args(DOCKER, args)
}

/// The engine; drop stops what this started and restores the host's firewall.
pub struct Docker {
    started: Option<Started>,
    version: String,
}

/// What a dockerd this process started needs undone.
struct Started {
    service: Service,
    firewall: FirewallSnapshot,
    rules_before: String,
    links_before: Vec<String>,
    _dir: TempDir,
}

impl Docker {
    /// Connects to a running engine, or starts dockerd (about 2-5 s) after saving the host's
    /// iptables and forwarding sysctls; then makes sure [`IMAGE`] exists.
    pub fn start() -> Result<Self> {
        for bin in [DOCKER, DOCKERD] {
            if !std::path::Path::new(bin).is_file() {
                bail!("{bin} is missing: run `cargo xtask setup` (it installs Debian's docker.io)");
            }
        }
        let mut engine = match server_version() {
            Ok(version) => Self {
                started: None,
                version,
            },
            Err(_) => Self::start_daemon()?,
        };
        engine.version = server_version()?;
        ensure_image()?;
        Ok(engine)
    }

    fn start_daemon() -> Result<Self> {
        let firewall = FirewallSnapshot::capture()?;
        let rules_before = FirewallSnapshot::rules_now()?;
        let links_before = host_links()?;
        let dir = TempDir::new("dockerd")?;
        let mut cmd = Command::new(DOCKERD);
        let mut service = Service::spawn(
            "dockerd",
            &mut cmd,
            &dir.path().join("dockerd.log"),
            libc::SIGTERM,
            &Placement::default(),
        )?;
        service.wait_ready("the API socket", START_TIMEOUT, || server_version().ok())?;
        Ok(Self {
            started: Some(Started {
                service,
                firewall,
                rules_before,
                links_before,
                _dir: dir,
            }),
            version: String::new(),
        })
    }

    /// Whether this process started dockerd (and so stops it).
    pub fn started_here(&self) -> bool {
        self.started.is_some()
    }

    /// The engine's version (e.g. "20.10.24+dfsg1").
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The dockerd pid, when started here.
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.started.as_ref().map(|s| s.service.pid())
    }

    /// Starts a container (see [`ContainerOptions`]).
    pub fn run(&self, options: &ContainerOptions) -> Result<Container> {
        Container::run(options)
    }

    /// Removes the harness's containers, stops dockerd if this started it, and restores the
    /// host: iptables (v4, v6) and sysctls as saved, docker0 deleted if it was not there.
    /// Fails if anything differs afterwards (iptables-save compared without counters).
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        remove_labelled_containers();
        let Some(started) = self.started.take() else {
            return Ok(());
        };
        let Started {
            service,
            firewall,
            rules_before,
            links_before,
            _dir,
        } = started;
        let pid = service.pid();
        drop(service); // SIGTERM, then SIGKILL to its group after 5 s (containerd with it)
        if crate::process::is_alive(pid) {
            bail!("dockerd {pid} did not exit");
        }
        let mut problems = Vec::new();
        if let Err(e) = firewall.restore() {
            problems.push(format!("{e:#}"));
        }
        for link in host_links()? {
            if !links_before.contains(&link) && (link == "docker0" || link.starts_with("veth")) {
                if let Err(e) = run_args("ip", &["link", "del", &link]) {
                    problems.push(format!("{e:#}"));
                }
            }
        }
        let rules_after = FirewallSnapshot::rules_now()?;
        if rules_after != rules_before {
            problems.push(format!(
                "iptables differ after the restore:\n--- before\n{rules_before}--- after\n{rules_after}"
            ));
        }
        if !problems.is_empty() {
            bail!("restoring the host after dockerd: {}", problems.join("; "));
        }
        Ok(())
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("warning: {e:#}");
        }
    }
}

fn server_version() -> Result<String> {
    let version = docker(&["version", "--format", "{{.Server.Version}}"])?;
    Ok(version.trim().to_string())
}

/// Imports [`IMAGE`] from an empty tar unless it exists.
fn ensure_image() -> Result<()> {
    if docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE]).is_ok() {
        return Ok(());
    }
    let dir = TempDir::new("docker-image")?;
    let tar = dir.path().join("empty.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .args(["-T", "/dev/null"]))?;
    let tar = tar.to_string_lossy().into_owned();
    docker(&["import", &tar, IMAGE]).map(|_| ())
}

fn remove_labelled_containers() {
    let filter = format!("label={LABEL}");
    let Ok(ids) = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]) else {
        return;
    };
    for id in ids.split_whitespace() {
        if let Err(e) = docker(&["rm", "-f", id]) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// A published port: `-p HOST_IP:HOST_PORT:CONTAINER_PORT`. On 127.0.0.1 docker-proxy relays
/// it (docker's DNAT rules skip 127.0.0.0/8); on the host's own address a DNAT rule in the
/// nat table's DOCKER chain translates it.
#[derive(Debug, Clone, Copy)]
pub struct Publish {
    pub host: SocketAddr,
    pub container_port: u16,
}

#[derive(Debug, Clone, Default)]
pub struct ContainerOptions {
    /// The command, e.g. `["/usr/bin/python3", "/app/abort_server.py", "0.0.0.0", "8200"]`.
    pub command: Vec<String>,
    /// Files written to a folder mounted read-only at /app: (name, content).
    pub files: Vec<(String, String)>,
    /// `--memory` (and `--memory-swap`, the same: no swap) in bytes.
    pub memory: Option<u64>,
    pub publish: Vec<Publish>,
}

/// A running container; drop removes it (`docker rm -f`).
pub struct Container {
    id: String,
    name: String,
    pid: u32,
    ip: IpAddr,
    _app: TempDir,
}

impl Container {
    fn run(options: &ContainerOptions) -> Result<Self> {
        let app = TempDir::new("container-app")?;
        for (name, content) in &options.files {
            app.write(name, content)?;
        }
        let name = format!("rsttrace-{}", unique_tag());
        let mut args: Vec<String> = ["run", "-d", "--label", LABEL, "--name", &name]
            .map(String::from)
            .to_vec();
        args.extend(["--tmpfs".into(), "/tmp".into()]);
        for dir in HOST_DIRS {
            args.extend(["-v".into(), format!("{dir}:{dir}:ro")]);
        }
        args.extend(["-v".into(), format!("{}:/app:ro", app.path().display())]);
        if let Some(bytes) = options.memory {
            args.extend([
                format!("--memory={bytes}"),
                format!("--memory-swap={bytes}"),
            ]);
        }
        for p in &options.publish {
            args.extend([
                "-p".into(),
                format!("{}:{}:{}", p.host.ip(), p.host.port(), p.container_port),
            ]);
        }
        args.push(IMAGE.into());
        args.extend(options.command.iter().cloned());
        let mut cmd = Command::new(DOCKER);
        cmd.args(&args);
        let id = run(&mut cmd)
            .with_context(|| format!("starting a container: {}", display(&cmd)))?
            .trim()
            .to_string();
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = docker(&["rm", "-f", &name]);
            bail!("`docker run -d` printed {id:?}, not a container id");
        }
        let inspect = docker(&[
            "inspect",
            "--format",
            "{{.State.Pid}} {{.NetworkSettings.IPAddress}}",
            &id,
        ]);
        let container = |pid: u32, ip: IpAddr| Self {
            id: id.clone(),
            name: name.clone(),
            pid,
            ip,
            _app: app,
        };
        let parsed = inspect.and_then(|text| {
            let mut it = text.split_whitespace();
            let pid: u32 = it.next().context("no pid")?.parse()?;
            let ip: IpAddr = it.next().context("no bridge address")?.parse()?;
            if pid == 0 {
                bail!("the container is not running");
            }
            Ok((pid, ip))
        });
        match parsed {
            Ok((pid, ip)) => Ok(container(pid, ip)),
            Err(e) => {
                let logs = docker(&["logs", &id]).unwrap_or_default();
                let _ = docker(&["rm", "-f", &id]);
                Err(e)
                    .with_context(|| format!("container {name} did not start; its output:\n{logs}"))
            }
        }
    }

    /// The full 64-hex container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host pid of the container's first process (the command).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its address on the docker0 bridge.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Its cgroup path as /proc/PID/cgroup shows it on the unified (or first) line, e.g.
    /// `/docker/<id>`.
    pub fn cgroup_path(&self) -> Result<String> {
        let text = fs::read_to_string(format!("/proc/{}/cgroup", self.pid))
            .with_context(|| format!("reading /proc/{}/cgroup", self.pid))?;
        let line = text
            .lines()
            .find(|l| l.starts_with("0::"))
            .or_else(|| text.lines().next())
            .context("an empty /proc/PID/cgroup")?;
        Ok(line.splitn(3, ':').nth(2).unwrap_or_default().to_string())
    }

    /// `docker logs` (stdout and stderr).
    pub fn logs(&self) -> String {
        let out = Command::new(DOCKER).args(["logs", &self.id]).output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default()
    }

    /// Waits until the logs contain `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.logs().contains(needle).then_some(())).is_some()
    }

    /// `docker kill -s SIGNAL` (e.g. "KILL").
    pub fn kill(&self, signal: &str) -> Result<()> {
        docker(&["kill", "-s", signal, &self.id]).map(|_| ())
    }

    /// `docker stop -t SECS` (SIGTERM, SIGKILL after SECS).
    pub fn stop(&self, secs: u32) -> Result<()> {
        docker(&["stop", "-t", &secs.to_string(), &self.id]).map(|_| ())
    }

    /// Whether the engine reports it running.
    pub fn running(&self) -> bool {
        docker(&["inspect", "--format", "{{.State.Running}}", &self.id])
            .is_ok_and(|s| s.trim() == "true")
    }

    /// How it ended: (exit code, OOM-killed).
    pub fn exit_state(&self) -> Result<(i32, bool)> {
        let text = docker(&[
            "inspect",
            "--format",
            "{{.State.ExitCode}} {{.State.OOMKilled}}",
            &self.id,
        ])?;
        let (code, oom) = text.trim().split_once(' ').context("bad inspect output")?;
        Ok((code.parse()?, oom == "true"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = docker(&["rm", "-f", &self.id]) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// The host's first global IPv4 address outside docker's bridges: what a port published on
/// "the host's address" is reached at.
pub fn host_address() -> Result<IpAddr> {
    let text = run_args("ip", &["-4", "-o", "addr", "show", "scope", "global"])?;
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let dev = it.nth(1)?;
            let addr = it.nth(1)?.split('/').next()?;
            let skip = dev == "docker0" || dev.starts_with("br-") || dev.starts_with("veth");
            (!skip).then(|| addr.parse().ok()).flatten()
        })
        .next()
        .context("this host has no global IPv4 address to publish a port on")
}
