//! rsttrace: explains every TCP reset a local process (nginx) receives.
//!
//! Data flows one way: kernel hooks (`tracer-ebpf`, catalogued in [`hooks`]) -> ring
//! buffer ([`loader`]) -> [`decode`] -> [`attribute`] (pure) -> [`report`] (JSON lines /
//! text) -> [`output`]. Everything that depends on the running kernel is resolved once, in
//! [`kernel`]; [`session`] runs the loop and [`check`] renders `--check`.
/// Writes one line to stderr and ignores a failure to: `eprintln!` panics when stderr is a
/// closed pipe (`rsttrace 2>&1 | head`), which would turn a reader going away into exit
/// 101. What stdout's closure means is decided where stdout is written.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod attribute;
pub mod cgroup;
pub mod check;
pub mod container;
pub mod decode;
pub mod generate;
pub mod hooks;
pub mod host;
pub mod kernel;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod nginx;
pub mod output;
pub mod privileges;
pub mod procfs;
pub mod record;
pub mod report;
pub mod session;
pub mod summary;
pub mod timefmt;
pub mod unix;
pub mod watch;
