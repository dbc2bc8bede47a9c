//! The join's I/O, driven by the event loop: which error.log files to follow, the nginx
//! processes writing them (pids, time zones) read from /proc, and the follower polled on a
//! ~100 ms tick. The joining itself is [`super::stage::JoinStage`]'s.
use std::borrow::Borrow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::discover::{self, masters, NginxInstance, PidMap};
use super::follow::{Follower, Limits, Notice, StartAt};
use super::stage::{Clock, JoinStage, Released};
use super::time::NginxTimeZone;
use crate::model::Verdict;

/// How the operator chose the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogChoice {
    /// The running nginx's `error_log` files (looked for again every [`RESCAN`]), else
    /// /var/log/nginx/error.log when it exists.
    Discover,
    /// `--nginx-error-log PATH...`: these files only.
    Files(Vec<PathBuf>),
}

/// How often new nginx masters (and their workers after a reload) are looked for.
const RESCAN: Duration = Duration::from_secs(5);
/// The least time between two reads of /proc asked for by an unknown pid.
const REFRESH_MIN: Duration = Duration::from_secs(1);

pub struct LiveJoin<P = Verdict> {
    follower: Follower,
    stage: JoinStage<P>,
    discovering: bool,
    last_scan: Instant,
    last_refresh: Option<Instant>,
    /// What start-up found, kept until [`Self::announce`]: rsttrace says it before its
    /// `attached` line, which ends start-up for whoever waits for it.
    start_notes: Vec<String>,
}

impl<P: Borrow<Verdict>> LiveJoin<P> {
    /// Finds the files and the nginx processes; [`Self::announce`] says what it follows.
    pub fn start(choice: LogChoice, offset_ns: i128) -> Self {
        let instances = discover::discover();
        let (paths, discovering) = match choice {
            LogChoice::Discover => (discover::error_log_paths(&instances), true),
            LogChoice::Files(paths) => (paths, false),
        };
        let missing = paths.iter().filter(|p| !discovering && !p.exists()).map(|p| {
            format!(
                "warning: --nginx-error-log {}: no such file (yet); it is followed from when it appears",
                p.display()
            )
        });
        let missing: Vec<String> = missing.collect();
        let mut start_notes: Vec<String> = instances
            .iter()
            .flat_map(|i| {
                i.notes
                    .iter()
                    .map(|n| format!("nginx {}: {n}", i.master_pid))
            })
            .chain(missing)
            .collect();
        let mut live = Self {
            follower: Follower::new(paths, StartAt::End, Limits::default()),
            stage: JoinStage::new(offset_ns),
            discovering,
            last_scan: Instant::now(),
            last_refresh: None,
            start_notes: Vec::new(),
        };
        for instance in &instances {
            live.add_instance(instance);
        }
        live.update_following();
        for notice in live.follower.take_notices() {
            start_notes.push(live.say(&notice));
        }
        if live.follower.paths().next().is_none() {
            start_notes.push(format!(
                "following no nginx error.log (none found: no running nginx logs to a file, no \
                 {}); --nginx-error-log PATH names one",
                discover::DEFAULT_ERROR_LOG
            ));
        }
        live.start_notes = start_notes;
        live
    }

    /// Says on stderr what start-up found.
    pub fn announce(&mut self) {
        for note in self.start_notes.drain(..) {
            crate::note!("rsttrace: {note}");
        }
    }

    /// Whether `verdict` will wait for its line: its receiver is a worker of a followed
    /// nginx (whose pids are read again first when it names an `nginx` process not known yet:
    /// a reload started new workers).
    pub fn will_wait(&mut self, verdict: &Verdict) -> bool {
        if let Verdict::Reset(a) = verdict {
            let unknown_nginx = a
                .receiver
                .as_ref()
                .filter(|r| r.comm == "nginx" && !self.stage.is_worker(r.pid))
                .map(|r| r.pid);
            if let Some(pid) = unknown_nginx {
                self.refresh(false);
                // Not a new worker of a known master: nginx was restarted (a new master),
                // which the scheduled rescan would find only up to RESCAN later, its
                // workers' resets going out unjoined and their lines `unexplained` meanwhile.
                if !self.stage.is_worker(pid) && self.last_scan.elapsed() >= REFRESH_MIN {
                    self.rescan();
                }
            }
        }
        self.stage.waits(verdict)
    }

    /// See [`JoinStage::set_offset`].
    pub fn set_offset(&mut self, offset_ns: i128) {
        self.stage.set_offset(offset_ns);
    }

    /// A verdict from the engine, before the `--pid`/`--pid-of` filter (after
    /// [`Self::will_wait`]).
    pub fn offer(&mut self, verdict: P, now: Clock, out: &mut Vec<Released<P>>) {
        self.stage.offer(verdict, now, out);
    }

    /// Reads the new lines and ends the waits that are over; every ~100 ms.
    pub fn tick(&mut self, now: Clock, out: &mut Vec<Released<P>>) {
        let lines = self.follower.poll();
        for notice in self.follower.take_notices() {
            crate::note!("rsttrace: {}", self.say(&notice));
        }
        if !lines.is_empty() {
            self.stage.lines(lines, now, out);
        }
        if self.stage.take_unknown_writer() {
            self.refresh(false);
        }
        self.stage.tick(now, out);
        for note in self.stage.take_notes() {
            crate::note!("rsttrace: {note}");
        }
        if self.last_scan.elapsed() >= RESCAN {
            self.rescan();
        }
    }

    /// At stop: the last lines, then every wait ends.
    pub fn finish(&mut self, now: Clock, out: &mut Vec<Released<P>>) {
        let lines = self.follower.poll();
        self.stage.lines(lines, now, out);
        self.stage.finish(out);
    }

    /// Something waits: a verdict for its line, or a line for its verdict.
    pub fn busy(&self) -> bool {
        self.stage.waiting() > 0 || self.stage.lines_waiting() > 0
    }

    fn update_following(&mut self) {
        self.stage
            .set_following(self.follower.paths().next().is_some());
    }

    fn add_instance(&mut self, instance: &NginxInstance) {
        let Ok(pids) = PidMap::of_master(instance.master_pid) else {
            return;
        };
        let tz = NginxTimeZone::of_process(instance.master_pid)
            .unwrap_or_else(|e| NginxTimeZone::utc(&format!("UTC ({e:#})")));
        self.stage.set_master(pids, tz);
        for log in &instance.error_logs {
            self.stage
                .assign_file(log.path.clone(), instance.master_pid);
        }
    }

    /// New masters (with, when discovering, their files), gone masters, new workers.
    fn rescan(&mut self) {
        self.last_scan = Instant::now();
        let running = masters();
        let known: Vec<u32> = self.stage.masters().collect();
        for gone in known.iter().filter(|m| !running.contains(m)) {
            self.stage.remove_master(*gone);
        }
        for master in running.iter().filter(|m| !known.contains(m)) {
            let Ok(instance) = discover::instance(*master) else {
                continue;
            };
            if self.discovering {
                for log in &instance.error_logs {
                    self.follower.add(log.path.clone(), StartAt::End);
                }
            }
            self.add_instance(&instance);
        }
        self.update_following();
        self.refresh(true);
    }

    /// Reads the pids of every known nginx again (workers change on reload), at most once a
    /// second unless `scheduled`.
    fn refresh(&mut self, scheduled: bool) {
        if !scheduled && self.last_refresh.is_some_and(|t| t.elapsed() < REFRESH_MIN) {
            return;
        }
        self.last_refresh = Some(Instant::now());
        let known: Vec<u32> = self.stage.masters().collect();
        for master in known {
            match PidMap::of_master(master) {
                // The zone argument is ignored for a known master.
                Ok(pids) => self.stage.set_master(pids, NginxTimeZone::utc("")),
                Err(_) => self.stage.remove_master(master),
            }
        }
    }

    fn say(&self, notice: &Notice) -> String {
        match notice {
            Notice::Opened(path) => format!(
                "following nginx error log {}{}",
                path.display(),
                self.writer_of(path)
            ),
            Notice::Rotated(path) => format!(
                "{} was rotated (renamed): following the new file, reading the old one until nginx reopens its logs",
                path.display()
            ),
            Notice::Truncated(path) => format!(
                "{} was truncated (copytruncate): reading it from its start",
                path.display()
            ),
            Notice::Unreadable { path, error } => {
                format!("warning: cannot follow {}: {error}", path.display())
            }
        }
    }

    fn writer_of(&self, path: &std::path::Path) -> String {
        match self.stage.writer_of(path) {
            Some((master, zone)) => format!(" (nginx master {master}, times read as {zone})"),
            None => String::new(),
        }
    }
}
