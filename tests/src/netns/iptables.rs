//! iptables/ip6tables rules a test adds in a namespace (or the host's), each found again by
//! its own comment to read its packet counter: the ground truth that the rule fired.
//! Also a snapshot of the host's firewall and forwarding sysctls, restored exactly after
//! something (dockerd) rewrote them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{unique_tag, Netns};
use crate::command::{display, run, run_args};
use crate::process::wait_until;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    fn iptables(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    fn save(self) -> &'static str {
        match self {
            Self::V4 => "iptables-save",
            Self::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    /// nftables' family of the tables iptables-nft makes.
    fn nft(self) -> &'static str {
        match self {
            Self::V4 => "ip",
            Self::V6 => "ip6",
        }
    }

    fn port_unreachable(self) -> &'static str {
        match self {
            Self::V4 => "icmp-port-unreachable",
            Self::V6 => "icmp6-port-unreachable",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.iptables())
    }
}

/// iptables or ip6tables in one namespace (`None`: the host's).
#[derive(Debug, Clone)]
pub struct Iptables {
    netns: Option<Netns>,
    family: Family,
}

impl Iptables {
    pub fn new(netns: Option<Netns>, family: Family) -> Self {
        Self { netns, family }
    }

    /// The host's own namespace.
    pub fn host(family: Family) -> Self {
        Self::new(None, family)
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        }
    }

    /// `-t TABLE -A CHAIN SPEC... -m comment --comment <unique>`.
    pub fn append(&self, table: &str, chain: &str, spec: &[&str]) -> Result<IptRule> {
        IptRule::add(self.clone(), table, chain, spec, false)
    }

    /// Like [`Self::append`] but first in the chain (`-I CHAIN 1`), ahead of what docker or
    /// kube-proxy put there.
    pub fn insert(&self, table: &str, chain: &str, spec: &[&str]) -> Result<IptRule> {
        IptRule::add(self.clone(), table, chain, spec, true)
    }

    /// `filter CHAIN: MATCHES -j REJECT --reject-with tcp-reset` — netfilter answers the
    /// matched segment's *source* with a RST (nf_send_reset, net/ipv4/netfilter/nf_reject_ipv4.c).
    /// FORWARD in a router forges it on the path; OUTPUT in nginx's namespace makes it local.
    pub fn reject_tcp_reset(&self, chain: &str, matches: &[&str]) -> Result<IptRule> {
        let spec = with(matches, &["-j", "REJECT", "--reject-with", "tcp-reset"]);
        self.insert("filter", chain, &spec)
    }

    /// `filter CHAIN: MATCHES -j REJECT --reject-with icmp(6)-port-unreachable` — how
    /// kube-proxy refuses a Service without endpoints (the client's connect() gets
    /// ECONNREFUSED, no RST exists).
    pub fn reject_unreachable(&self, chain: &str, matches: &[&str]) -> Result<IptRule> {
        let kind = self.family.port_unreachable();
        let spec = with(matches, &["-j", "REJECT", "--reject-with", kind]);
        self.insert("filter", chain, &spec)
    }

    /// `filter CHAIN: MATCHES -j DROP` (the client times out).
    pub fn drop(&self, chain: &str, matches: &[&str]) -> Result<IptRule> {
        self.insert("filter", chain, &with(matches, &["-j", "DROP"]))
    }

    /// kube-proxy's translation of a virtual service address to a backend:
    /// `nat CHAIN -d VIP -p tcp --dport VPORT -j DNAT --to-destination BACKEND`. OUTPUT for
    /// connections made in this namespace, PREROUTING for forwarded ones.
    pub fn dnat(&self, chain: &str, service: SocketAddr, backend: SocketAddr) -> Result<IptRule> {
        let vip = service.ip().to_string();
        let vport = service.port().to_string();
        let to = backend.to_string();
        self.insert(
            "nat",
            chain,
            &[
                "-d",
                &vip,
                "-p",
                "tcp",
                "--dport",
                &vport,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        )
    }

    /// `nat POSTROUTING -o OUT_IF -j SNAT --to-source SOURCE`.
    pub fn snat(&self, out_if: &str, source: IpAddr) -> Result<IptRule> {
        let source = source.to_string();
        self.insert(
            "nat",
            "POSTROUTING",
            &["-o", out_if, "-j", "SNAT", "--to-source", &source],
        )
    }

    /// `nat POSTROUTING -o OUT_IF -j MASQUERADE`.
    pub fn masquerade(&self, out_if: &str) -> Result<IptRule> {
        self.insert("nat", "POSTROUTING", &["-o", out_if, "-j", "MASQUERADE"])
    }

    /// `iptables-save -c` of one table (the rules with their [packets:bytes]).
    pub fn save(&self, table: &str) -> Result<String> {
        run(self.command(self.family.save()).args(["-c", "-t", table]))
    }
}

fn with<'a>(matches: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    matches.iter().chain(tail).copied().collect()
}

/// A rule the test added; drop deletes it (a namespace's rules also go with the namespace).
#[derive(Debug)]
pub struct IptRule {
    iptables: Iptables,
    table: String,
    chain: String,
    spec: Vec<String>,
    comment: String,
}

impl IptRule {
    fn add(
        iptables: Iptables,
        table: &str,
        chain: &str,
        spec: &[&str],
        first: bool,
    ) -> Result<Self> {
        let comment = format!("rsttrace-{}", unique_tag());
        let mut spec: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
        // The comment match goes before the target: `-j X --target-opts` must stay last.
        let at = spec.iter().position(|s| s == "-j").unwrap_or(spec.len());
        let tagged = ["-m", "comment", "--comment", comment.as_str()].map(String::from);
        spec.splice(at..at, tagged);
        let mut cmd = iptables.command(iptables.family.iptables());
        cmd.args(["-w", "-t", table]);
        if first {
            cmd.args(["-I", chain, "1"]);
        } else {
            cmd.args(["-A", chain]);
        }
        run(cmd.args(&spec))?;
        Ok(Self {
            iptables,
            table: table.to_string(),
            chain: chain.to_string(),
            spec,
            comment,
        })
    }

    /// The comment that identifies this rule in `iptables-save`.
    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// The rule as iptables-save prints it, with its counters, e.g.
    /// `[3:180] -A FORWARD -p tcp -m tcp --dport 8000 -m comment --comment rsttrace-1a2b-3 -j REJECT ...`.
    pub fn line(&self) -> Result<String> {
        let needle = format!("--comment {} ", self.comment);
        let saved = self.iptables.save(&self.table)?;
        saved
            .lines()
            .find(|l| l.contains(&needle) || l.ends_with(&format!("--comment {}", self.comment)))
            .map(String::from)
            .with_context(|| {
                format!(
                    "rule {} not found in {} -t {}:\n{saved}",
                    self.comment,
                    self.iptables.family.save(),
                    self.table
                )
            })
    }

    /// (packets, bytes) the rule matched so far.
    pub fn counters(&self) -> Result<(u64, u64)> {
        let line = self.line()?;
        let counters = line
            .strip_prefix('[')
            .and_then(|l| l.split_once(']'))
            .map(|(c, _)| c)
            .with_context(|| format!("no [packets:bytes] in {line:?}"))?;
        let (packets, bytes) = counters
            .split_once(':')
            .with_context(|| format!("bad counters {counters:?}"))?;
        Ok((
            packets.parse().context("packet counter")?,
            bytes.parse().context("byte counter")?,
        ))
    }

    /// Packets the rule matched so far.
    pub fn packets(&self) -> Result<u64> {
        Ok(self.counters()?.0)
    }

    /// Waits until the rule matched more than `before` packets; returns the count.
    pub fn wait_packets_above(&self, before: u64, timeout: Duration) -> Result<u64> {
        wait_until(timeout, || self.packets().ok().filter(|&n| n > before)).with_context(|| {
            format!(
                "rule {} did not fire within {timeout:?}: {}",
                self.comment,
                self.line().unwrap_or_else(|e| format!("{e:#}"))
            )
        })
    }
}

impl Drop for IptRule {
    fn drop(&mut self) {
        if let Some(ns) = &self.iptables.netns {
            if !ns.path().exists() {
                return; // gone with its namespace
            }
        }
        let mut cmd = self.iptables.command(self.iptables.family.iptables());
        cmd.args(["-w", "-t", &self.table, "-D", &self.chain])
            .args(&self.spec);
        if let Err(e) = run(&mut cmd) {
            eprintln!("warning: could not delete rule: {e:#}");
        }
    }
}

/// The host namespace's iptables (v4 and v6, every table that exists) and forwarding
/// sysctls, as they were, to put back after a program (dockerd) rewrote them: dockerd sets the
/// FORWARD policy to DROP, adds its chains, enables ip_forward, and leaves all that behind.
#[derive(Debug)]
pub struct FirewallSnapshot {
    /// (family, table, iptables-save text of that table)
    tables: Vec<(Family, String, String)>,
    sysctls: Vec<(String, String)>,
}

/// Sysctls dockerd (or a CNI) changes; absent ones are skipped.
const FORWARDING_SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv6/conf/default/forwarding",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
];

impl FirewallSnapshot {
    pub fn capture() -> Result<Self> {
        let mut tables = Vec::new();
        for family in [Family::V4, Family::V6] {
            let text = run_args(family.save(), &[])?;
            for table in table_names(&text) {
                let dump = run_args(family.save(), &["-t", &table])?;
                tables.push((family, table, dump));
            }
        }
        let sysctls = FORWARDING_SYSCTLS
            .iter()
            .filter_map(|key| {
                let value = std::fs::read_to_string(format!("/proc/sys/{key}")).ok()?;
                Some((key.to_string(), value.trim().to_string()))
            })
            .collect();
        Ok(Self { tables, sysctls })
    }

    /// Puts every table back as it was (iptables-restore flushes the table first, dropping
    /// chains added since), deletes the tables that did not exist (nft: iptables-nft has no
    /// command for it), and resets the sysctls that changed.
    pub fn restore(&self) -> Result<()> {
        let mut problems = Vec::new();
        for family in [Family::V4, Family::V6] {
            let now = run_args(family.save(), &[])?;
            for table in table_names(&now) {
                let before = self
                    .tables
                    .iter()
                    .find(|(f, t, _)| *f == family && *t == table);
                let result = match before {
                    Some((_, _, dump)) => restore_table(family, dump),
                    None => delete_table(family, &table),
                };
                if let Err(e) = result {
                    problems.push(format!("{family} table {table}: {e:#}"));
                }
            }
        }
        for (key, value) in &self.sysctls {
            let path = format!("/proc/sys/{key}");
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            if now.trim() != value {
                if let Err(e) = std::fs::write(&path, value) {
                    problems.push(format!("{key} back to {value}: {e}"));
                }
            }
        }
        if !problems.is_empty() {
            bail!(
                "the firewall could not be restored: {}",
                problems.join("; ")
            );
        }
        Ok(())
    }

    /// iptables-save and ip6tables-save of the host now, without the comment lines (dates)
    /// and counters: equal before and after means restored exactly.
    pub fn rules_now() -> Result<String> {
        let mut all = String::new();
        for family in [Family::V4, Family::V6] {
            all.push_str(&format!("## {}\n", family.save()));
            for line in run_args(family.save(), &[])?.lines() {
                if !line.starts_with('#') {
                    all.push_str(&strip_counters(line));
                    all.push('\n');
                }
            }
        }
        Ok(all)
    }

    /// The forwarding sysctls as captured.
    pub fn sysctls(&self) -> &[(String, String)] {
        &self.sysctls
    }
}

fn table_names(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix('*'))
        .map(|t| t.trim().to_string())
        .collect()
}

fn restore_table(family: Family, dump: &str) -> Result<()> {
    use std::io::Write as _;
    let mut cmd = Command::new(family.restore());
    cmd.arg("-w")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", display(&cmd)))?;
    child
        .stdin
        .take()
        .context("no stdin pipe")?
        .write_all(dump.as_bytes())
        .context("feeding the saved rules")?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            display(&cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn delete_table(family: Family, table: &str) -> Result<()> {
    let version = run_args(family.iptables(), &["-V"])?;
    if !version.contains("nf_tables") {
        bail!(
            "{table} did not exist before, and the legacy iptables backend ({}) cannot delete a table; \
             flush it by hand: {} -t {table} -F; {} -t {table} -X",
            version.trim(),
            family.iptables(),
            family.iptables()
        );
    }
    run_args("nft", &["delete", "table", family.nft(), table]).map(|_| ())
}

fn strip_counters(line: &str) -> String {
    // ":CHAIN POLICY [p:b]" and "[p:b] -A ..." (with -c); the counters change with traffic.
    let line = line
        .strip_prefix('[')
        .and_then(|l| l.split_once("] "))
        .map_or(line, |(_, rest)| rest);
    match (line.starts_with(':'), line.rfind(" [")) {
        (true, Some(at)) => line[..at].to_string(),
        _ => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{strip_counters, table_names};

    #[test]
    fn strips_counters() {
        assert_eq!(strip_counters(":FORWARD DROP [12:345]"), ":FORWARD DROP");
        assert_eq!(
            strip_counters("[3:180] -A INPUT -j DROP"),
            "-A INPUT -j DROP"
        );
        assert_eq!(strip_counters("-A INPUT -j DROP"), "-A INPUT -j DROP");
    }

    #[test]
    fn finds_tables() {
        let save = "# Generated\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n*nat\nCOMMIT\n";
        assert_eq!(table_names(save), ["filter", "nat"]);
    }
}
