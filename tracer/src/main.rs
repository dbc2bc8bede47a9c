//! rsttrace: parse the command line ([`cli`]), check or run a session, map its failure to
//! an exit status.
use std::{
    io::{self, Write},
    process::ExitCode,
    time::Instant,
};

use clap::{CommandFactory as _, Parser};
use rsttrace::{
    check,
    generate::generate,
    loader,
    session::{self, Failure, FailureKind},
};

mod cli;
use cli::Args;

/// Exit statuses (also in --help and README). Bad usage, 2, is clap's own exit.
const EXIT_OK: u8 = 0;
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNSUPPORTED: u8 = 3;

fn main() -> ExitCode {
    let started = Instant::now();
    let args = Args::parse();
    if let Some(kind) = args.generate {
        return match generate(kind, Args::command(), &mut io::stdout()) {
            Ok(()) => ExitCode::from(EXIT_OK),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(EXIT_OK),
            Err(e) => {
                rsttrace::note!("rsttrace: error: writing to stdout: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        };
    }
    let opts = args.options();
    let preload = loader::Preload::start();
    let result = session::prepare(&opts).and_then(|facts| {
        if args.check {
            let loaded = loader::load_only(&facts, preload);
            let (report, usable) = check::report(&facts, &loaded);
            // A closed pipe (`rsttrace --check | head`) is no error.
            let _ = io::stdout().write_all(report.as_bytes());
            return Ok(if usable { EXIT_OK } else { EXIT_UNSUPPORTED });
        }
        session::run(&facts, &opts, started, preload).map(|()| EXIT_OK)
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure { kind, error }) => {
            rsttrace::note!("rsttrace: error: {error:#}");
            ExitCode::from(match kind {
                FailureKind::Runtime => EXIT_RUNTIME,
                FailureKind::Usage => EXIT_USAGE,
                FailureKind::Unsupported => EXIT_UNSUPPORTED,
            })
        }
    }
}
