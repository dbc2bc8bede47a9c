//! `rsttrace --generate KIND` (hidden): the man page and the shell completions, made from
//! the same clap definition as `--help` so they cannot drift; `cargo xtask package` puts
//! them in the .deb.
use std::io::{self, Write};

use clap::{Command, ValueEnum};
use clap_complete::Shell;
use clap_mangen::Man;
use roff::{bold, roman, Roff};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generated {
    /// rsttrace(8), roff.
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

/// Sections the command line does not carry, for the installed package.
const FILES: &[(&str, &str)] = &[
    (
        "/lib/systemd/system/rsttrace.service",
        "the service (not enabled on install): JSON lines to the journal, restarted on \
         failure, with capabilities instead of root",
    ),
    (
        "/etc/default/rsttrace",
        "RSTTRACE_OPTIONS, the service's options",
    ),
    (
        "/usr/share/doc/rsttrace/README.md.gz",
        "every JSON field, the causes, the limits",
    ),
    (
        "/sys/kernel/tracing, /sys/kernel/btf/vmlinux",
        "tracepoint formats and the kernel's BTF, read at start",
    ),
];
const SEE_ALSO: &str = "capabilities(7), systemd.exec(5), journalctl(1), bpftool(8)";

pub fn generate(kind: Generated, cmd: Command, out: &mut dyn Write) -> io::Result<()> {
    let name = cmd.get_name().to_string();
    let shell = match kind {
        Generated::Man => return man(cmd, out),
        Generated::CompleteBash => Shell::Bash,
        Generated::CompleteZsh => Shell::Zsh,
        Generated::CompleteFish => Shell::Fish,
    };
    clap_complete::generate(shell, &mut visible_only(&cmd), name, out);
    Ok(())
}

/// clap_complete offers hidden options too (its option lists do not filter them):
/// complete from a copy that has the visible ones only.
fn visible_only(cmd: &Command) -> Command {
    let mut copy = Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned());
    if let Some(about) = cmd.get_about() {
        copy = copy.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        copy = copy.version(version.to_string());
    }
    copy
}

/// clap_mangen's sections, then the `--help` epilogue's blocks ("Examples:", "Exit
/// status:"...) each as a section of its own, then FILES and SEE ALSO.
fn man(cmd: Command, out: &mut dyn Write) -> io::Result<()> {
    let epilogue = cmd
        .get_after_help()
        .map(ToString::to_string)
        .unwrap_or_default();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let page = Man::new(cmd)
        .section("8")
        .source(format!("rsttrace {version}"))
        .manual("System Manager's Manual");
    let mut roff_text = Vec::new();
    page.render_title(&mut roff_text)?;
    page.render_name_section(&mut roff_text)?;
    page.render_synopsis_section(&mut roff_text)?;
    page.render_description_section(&mut roff_text)?;
    page.render_options_section(&mut roff_text)?;
    let mut roff = Roff::new();
    for block in epilogue.split("\n\n") {
        epilogue_section(&mut roff, block);
    }
    roff.control("SH", ["FILES"]);
    for (path, what) in FILES {
        roff.control("TP", [])
            .text([bold(*path)])
            .text([roman(*what)]);
    }
    roff.control("SH", ["SEE ALSO"]).text([roman(SEE_ALSO)]);
    roff.to_writer(&mut roff_text)?;
    page.render_version_section(&mut roff_text)?;
    // Each piece starts with the same two-line definition of the apostrophe string; once
    // is enough.
    let text = String::from_utf8_lossy(&roff_text);
    let preamble: Vec<&str> = text.lines().take_while(|l| !l.starts_with(".TH")).collect();
    for line in &preamble {
        writeln!(out, "{line}")?;
    }
    for line in text.lines().filter(|l| !preamble.contains(l)) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// One block of the epilogue: a "Heading:" line, then indented lines. A line with a
/// command and its explanation apart ("  rsttrace --check    what this kernel supports")
/// becomes a tagged paragraph; other lines are prose, filled by the formatter.
fn epilogue_section(roff: &mut Roff, block: &str) {
    let mut lines = block.lines();
    let Some(heading) = lines.next().and_then(|l| l.trim().strip_suffix(':')) else {
        return;
    };
    roff.control("SH", [heading.to_uppercase().as_str()]);
    let mut prose = Vec::new();
    for line in lines.map(str::trim) {
        match line.split_once("  ") {
            Some((example, meaning)) => {
                flush(roff, &mut prose);
                roff.control("TP", [])
                    .text([bold(example)])
                    .text([roman(meaning.trim())]);
            }
            None => prose.push(line),
        }
    }
    flush(roff, &mut prose);
}

fn flush(roff: &mut Roff, prose: &mut Vec<&str>) {
    if !prose.is_empty() {
        roff.control("PP", []).text([roman(prose.join(" "))]);
        prose.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cli() -> Command {
        Command::new("rsttrace")
            .version("9.9.9")
            .about("Explain resets")
            .arg(
                Arg::new("check")
                    .long("check")
                    .action(ArgAction::SetTrue)
                    .help("What this kernel supports"),
            )
            .arg(
                Arg::new("debug-events")
                    .long("debug-events")
                    .action(ArgAction::SetTrue)
                    .hide(true),
            )
            .after_help(
                "Examples:\n  sudo rsttrace --check    what this kernel supports\n\n\
                 Exit status:\n  0 stopped normally;\n  3 cannot run here.",
            )
    }

    fn render(kind: Generated) -> String {
        let mut out = Vec::new();
        generate(kind, cli(), &mut out).expect("rendering");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn man_page_has_the_epilogue_as_sections() {
        let page = render(Generated::Man);
        assert!(page.contains("\n.TH rsttrace 8 "), "{page}");
        assert_eq!(page.matches(".ds Aq").count(), 2, "{page}");
        assert!(page.contains(".SH EXAMPLES\n.TP\n\\fBsudo rsttrace \\-\\-check\\fR"));
        assert!(page.contains(".SH \"EXIT STATUS\"\n.PP\n0 stopped normally; 3 cannot run here."));
        assert!(page.contains(".SH FILES"));
        assert!(!page.contains("debug\\-events"));
        assert!(page.contains("9.9.9"));
    }

    #[test]
    fn completions_name_the_options() {
        for kind in [
            Generated::CompleteBash,
            Generated::CompleteZsh,
            Generated::CompleteFish,
        ] {
            let script = render(kind);
            assert!(script.contains("check"), "{kind:?}");
            assert!(script.contains("version"), "{kind:?}");
            assert!(!script.contains("debug-events"), "{kind:?}: {script}");
        }
    }
}
