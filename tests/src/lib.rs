//! Harness for rsttrace's root integration tests.
//!
//! Every test starts its own real servers (nginx, php-fpm, gunicorn) from config files in a
//! temporary folder, on loopback only, breaks an upstream for real, and checks both what the
//! kernel did (through a private tracefs instance) and what rsttrace reported (its JSON lines).
//! Everything started here is stopped on drop, also when a test panics; on panic the logs of
//! every server and of rsttrace are printed.

mod cgroup;
pub mod fixtures;
mod gunicorn;
mod http;
mod nginx;
mod php_fpm;
mod process;
mod python;
mod rsttrace;
mod tempdir;
mod tracefs;

pub use cgroup::{memory_hierarchy, CgroupVersion, MemCgroup};
pub use gunicorn::{Gunicorn, GunicornOptions};
pub use http::{http_request, spawn_http_request};
pub use nginx::{Location, Nginx, Upstream};
pub use php_fpm::{PhpFpm, PhpFpmOptions, Pm};
pub use process::{
    capabilities, children_of, free_port, is_alive, proc_comm, require_root, send_signal,
    wait_for_exit, wait_for_file, wait_listening, wait_until,
};
pub use python::{PythonPeer, PYTHON};
pub use rsttrace::{Rsttrace, RSTTRACE_BIN_ENV};
pub use tempdir::TempDir;
pub use tracefs::{KernelResetTrace, TraceEvent};
