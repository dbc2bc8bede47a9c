//! client netns ── veth ── router netns (forwarding v4 and v6) ── veth ── backend netns
//!
//! The shape of a docker bridge or a Kubernetes node: nginx in `client`, upstreams in
//! `backend`, and a hop in between where firewall rules (REJECT, DROP, NAT) forge or rewrite
//! packets. Addresses are fixed (each topology is a world of its own, so two never clash);
//! namespace and interface names carry a unique tag, so tests that run one after another
//! never trip over each other's leftovers.
//!
//! | namespace | interface       | IPv4          | IPv6            |
//! |-----------|-----------------|---------------|-----------------|
//! | client    | `r<tag>c`       | 10.231.1.2/24 | fd72:7374:1::2/64 |
//! | router    | `r<tag>rc`      | 10.231.1.1/24 | fd72:7374:1::1/64 |
//! | router    | `r<tag>rb`      | 10.231.2.1/24 | fd72:7374:2::1/64 |
//! | backend   | `r<tag>b`       | 10.231.2.2/24 | fd72:7374:2::2/64 |
//!
//! Client and backend route everything through the router. The service address
//! 10.96.231.10 / fd72:7374:96::10 is routed (to the router) but owned by no one: it is the
//! virtual address DNAT rules translate, as kube-proxy's ClusterIPs are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use super::{unique_tag, Family, Netns, OwnedNetns};

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 1, 2);
const ROUTER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 1, 1);
const ROUTER_BACKEND_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 2, 1);
const BACKEND_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 2, 2);
const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 231, 10);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd72, 0x7374, 1, 0, 0, 0, 0, 2);
const ROUTER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd72, 0x7374, 1, 0, 0, 0, 0, 1);
const ROUTER_BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0xfd72, 0x7374, 2, 0, 0, 0, 0, 1);
const BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0xfd72, 0x7374, 2, 0, 0, 0, 0, 2);
const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd72, 0x7374, 0x96, 0, 0, 0, 0, 0x10);

/// The three namespaces and their links; drop deletes all of it.
#[derive(Debug)]
pub struct Topology {
    tag: String,
    // Dropped in this order; each drop kills what still runs inside first.
    client: OwnedNetns,
    backend: OwnedNetns,
    router: OwnedNetns,
}

impl Topology {
    /// Creates the namespaces, veth pairs, addresses (IPv6 without duplicate address
    /// detection, so they are usable at once), routes and forwarding. About 0.1 s.
    pub fn create() -> Result<Self> {
        let tag = unique_tag();
        let topo = Self {
            client: OwnedNetns::create(&format!("rsttrace-{tag}-client"))?,
            backend: OwnedNetns::create(&format!("rsttrace-{tag}-backend"))?,
            router: OwnedNetns::create(&format!("rsttrace-{tag}-router"))?,
            tag,
        };
        topo.wire()
            .context("wiring the client/router/backend topology")?;
        Ok(topo)
    }

    fn wire(&self) -> Result<()> {
        let router = self.router.name();
        self.client.ip(&[
            "link",
            "add",
            &self.client_if(),
            "type",
            "veth",
            "peer",
            "name",
            &self.router_client_if(),
            "netns",
            router,
        ])?;
        self.backend.ip(&[
            "link",
            "add",
            &self.backend_if(),
            "type",
            "veth",
            "peer",
            "name",
            &self.router_backend_if(),
            "netns",
            router,
        ])?;
        let ends: [(&Netns, String, IpAddr, IpAddr); 4] = [
            (
                &self.client,
                self.client_if(),
                CLIENT_V4.into(),
                CLIENT_V6.into(),
            ),
            (
                &self.router,
                self.router_client_if(),
                ROUTER_CLIENT_V4.into(),
                ROUTER_CLIENT_V6.into(),
            ),
            (
                &self.router,
                self.router_backend_if(),
                ROUTER_BACKEND_V4.into(),
                ROUTER_BACKEND_V6.into(),
            ),
            (
                &self.backend,
                self.backend_if(),
                BACKEND_V4.into(),
                BACKEND_V6.into(),
            ),
        ];
        for (ns, dev, v4, v6) in &ends {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        for (ns, via4, via6) in [
            (&self.client, ROUTER_CLIENT_V4, ROUTER_CLIENT_V6),
            (&self.backend, ROUTER_BACKEND_V4, ROUTER_BACKEND_V6),
        ] {
            ns.ip(&["route", "add", "default", "via", &via4.to_string()])?;
            ns.ip(&["-6", "route", "add", "default", "via", &via6.to_string()])?;
        }
        self.router.sysctl("net.ipv4.ip_forward", "1")?;
        self.router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(())
    }

    /// The tag in every name of this topology (for leftover checks).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Where nginx runs.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The hop between client and backend (forwarding on).
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// Where the upstreams run.
    pub fn backend(&self) -> &Netns {
        &self.backend
    }

    /// The client's interface (towards the router).
    pub fn client_if(&self) -> String {
        format!("r{}c", self.tag)
    }

    /// The router's interface towards the client.
    pub fn router_client_if(&self) -> String {
        format!("r{}rc", self.tag)
    }

    /// The router's interface towards the backend.
    pub fn router_backend_if(&self) -> String {
        format!("r{}rb", self.tag)
    }

    /// The backend's interface (towards the router).
    pub fn backend_if(&self) -> String {
        format!("r{}b", self.tag)
    }

    pub fn client_ip(&self, family: Family) -> IpAddr {
        pick(family, CLIENT_V4, CLIENT_V6)
    }

    pub fn backend_ip(&self, family: Family) -> IpAddr {
        pick(family, BACKEND_V4, BACKEND_V6)
    }

    /// The router's address on the client's link (the client's gateway).
    pub fn router_client_ip(&self, family: Family) -> IpAddr {
        pick(family, ROUTER_CLIENT_V4, ROUTER_CLIENT_V6)
    }

    /// The router's address on the backend's link (the backend's gateway).
    pub fn router_backend_ip(&self, family: Family) -> IpAddr {
        pick(family, ROUTER_BACKEND_V4, ROUTER_BACKEND_V6)
    }

    /// A virtual address nobody owns, routed towards the router: the target of DNAT rules
    /// (a Service's ClusterIP) or of a REJECT (a Service without endpoints).
    pub fn service_ip(&self, family: Family) -> IpAddr {
        pick(family, SERVICE_V4, SERVICE_V6)
    }
}

fn pick(family: Family, v4: Ipv4Addr, v6: Ipv6Addr) -> IpAddr {
    match family {
        Family::V4 => v4.into(),
        Family::V6 => v6.into(),
    }
}
