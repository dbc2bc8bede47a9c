//! nginx's error.log: find it, follow it, read its lines, and check a line against a reset.
//!
//! The join, as the event loop uses it:
//! 1. [`discover::discover`] lists the running nginx masters and their `error_log` files
//!    ([`discover::error_log_paths`] adds the /var/log/nginx/error.log fallback);
//!    [`discover::PidMap`] maps the pid nginx logs (its own pid namespace) to ours, and
//!    [`time::NginxTimeZone::of_process`] gives the zone its times are written in.
//! 2. [`follow::Follower::poll`] (on a ~100 ms tick) returns the complete new lines.
//! 3. [`ErrorLine::parse`] reads each line from the left: time, level, pid, `*connection`,
//!    the fixed message and errno ([`ErrorLine::is_reset`] for `(104: ...)`).
//! 4. For a reset verdict (receiver pid, upstream address or unix path, time),
//!    [`join::join`] says whether a line is its line: the pid maps to the receiver, the time
//!    covers the reset's ([`time::UtcSeconds::contains_ns`]) and
//!    [`ErrorLine::verify_upstream`] finds the upstream where nginx writes it. `Cut` and
//!    `Ambiguous` mean the upstream could not be checked (a 2 KiB line, or text the client
//!    injected): the join holds on worker and time alone and says so. Lines are written in
//!    the order the worker met the failures: pair the oldest unmatched reset with the oldest
//!    unmatched line. A reset line ([`ErrorLine::is_reset`]) no reset joins within the wait
//!    is the `unexplained` event. Feed live lines to [`time::NginxTimeZone::calibrate`]:
//!    nginx hides its `TZ`.
//!
//! Nothing here trusts text the client wrote: see [`upstream`] for how the request line,
//! Host and Referer are kept from changing what is read.

pub mod conf;
pub mod discover;
pub mod follow;
pub mod join;
pub mod live;
pub mod parse;
mod root;
pub mod stage;
pub mod time;
pub mod upstream;

pub use discover::{discover, error_log_paths, NginxInstance, PidMap};
pub use follow::{Follower, Limits, Line, Notice, StartAt};
pub use join::{join, Join, ResetKey};
pub use live::{LiveJoin, LogChoice};
pub use parse::{Errno, ErrorLine, Kind, Level, Syscall};
pub use stage::{Clock, JoinStage, LoggedLine, Released};
pub use time::{LogTime, NginxTimeZone, UtcSeconds};
pub use upstream::{verify_upstream, RequestContext, UpstreamAddr, UpstreamMatch};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod real_lines;
