//! rsttrace: explains every TCP reset a local process (nginx) receives.
//!
//! Data flows one way: kernel hooks (`tracer-ebpf`) -> ring buffer (`loader`) ->
//! [`decode`] -> [`attribute`] (pure) -> [`report`] (JSON lines / text).
//! Everything that depends on the running kernel is resolved once, in [`kernel`].
pub mod attribute;
pub mod cgroup;
pub mod decode;
pub mod kernel;
pub mod loader;
pub mod model;
pub mod procfs;
pub mod report;
pub mod timefmt;
pub mod tracefs;
pub mod unix;
pub mod watch;
