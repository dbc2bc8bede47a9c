//! Harness for rsttrace's root integration tests.
//!
//! Every test starts its own real servers (nginx, php-fpm, gunicorn) from config files in a
//! temporary folder, breaks an upstream for real, and checks both what the kernel did (through
//! a private tracefs instance, iptables counters) and what rsttrace reported (its JSON lines).
//! Servers run on loopback by default, or on any address inside a network namespace
//! ([`netns`]: a client/router/backend [`Topology`] with firewall rules and NAT); upstreams can
//! also be a real other kernel ([`guest`]: qemu on a tap) or a Docker container ([`docker`]).
//! Everything started here is stopped on drop, also when a test panics; on panic the logs of
//! every server and of rsttrace are printed.

pub mod abort_server;
mod cgroup;
pub mod command;
mod container_cgroup;
pub mod docker;
pub mod fixtures;
pub mod foreign_bpf;
pub mod guest;
mod gunicorn;
mod http;
mod namespaced_nginx;
pub mod netns;
mod nginx;
mod php_fpm;
mod process;
pub mod prometheus;
mod pyserver;
mod python;
mod rsttrace;
pub mod storm;
mod stream;
mod tempdir;
mod tracefs;
pub mod vm;

pub use abort_server::AbortServer;
pub use cgroup::{memory_hierarchy, CgroupVersion, MemCgroup};
pub use container_cgroup::{ContainerCgroup, ContainerLayout};
pub use docker::{Container, ContainerOptions, Docker, Publish};
pub use guest::{Guest, GuestOptions, Nic};
pub use gunicorn::{Gunicorn, GunicornOptions};
pub use http::{http_request, http_request_at, spawn_http_request};
pub use namespaced_nginx::{request_in_netns, NamespacedNginx, NamespacedNginxOptions};
pub use netns::{Family, FirewallSnapshot, IptRule, Iptables, Netns, OwnedNetns, Topology};
pub use nginx::{Location, Nginx, NginxOptions, Upstream};
pub use php_fpm::{PhpFpm, PhpFpmOptions, Pm};
pub use process::{
    capabilities, children_of, free_port, is_alive, peak_rss_bytes, proc_comm, require_root,
    send_signal, wait_for_exit, wait_for_file, wait_listening, wait_listening_at, wait_until,
    Placement,
};
pub use pyserver::PyProgram;
pub use python::{PythonPeer, PYTHON};
pub use rsttrace::{Rsttrace, RSTTRACE_BIN_ENV, RSTTRACE_RELEASE_BIN_ENV};
pub use stream::StreamingRsttrace;
pub use tempdir::TempDir;
pub use tracefs::{KernelResetTrace, TraceEvent};
