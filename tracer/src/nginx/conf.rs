//! Just enough of nginx's configuration syntax (src/core/ngx_conf_file.c) to find the
//! `error_log` files: tokens, quotes, escapes, comments, blocks and `include` globs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::root::resolve_in_root;

/// A directive as written: its name, arguments, and whether it sits at the top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub top_level: bool,
}

/// `include` depth and file count nginx configurations never come near; they stop loops.
const MAX_INCLUDE_DEPTH: usize = 16;
const MAX_FILES: usize = 4096;
/// Configuration files larger than this are not read (nginx's own are kilobytes).
const MAX_CONF_BYTES: u64 = 16 * 1024 * 1024;

/// What reading a configuration found.
#[derive(Debug, Default)]
pub struct Conf {
    pub directives: Vec<Directive>,
    /// Files that could not be read, and why.
    pub problems: Vec<String>,
}

/// Reads `conf_file` (a path inside `root`) and every file it includes, relative paths
/// resolved against `conf_prefix` (the folder of the main file, as nginx does), plus the
/// `-g` directives given on the command line.
pub fn read(root: &Path, conf_file: &Path, conf_prefix: &Path, globals: Option<&str>) -> Conf {
    let mut conf = Conf::default();
    let mut files = 0;
    read_file(root, conf_file, conf_prefix, 0, 0, &mut files, &mut conf);
    if let Some(g) = globals {
        match tokenize(g) {
            Ok(tokens) => conf.directives.extend(directives(&tokens, 0)),
            Err(e) => conf.problems.push(format!("-g {g:?}: {e}")),
        }
    }
    conf
}

fn read_file(
    root: &Path,
    file: &Path,
    conf_prefix: &Path,
    depth: usize,
    block_depth: usize,
    files: &mut usize,
    conf: &mut Conf,
) {
    *files += 1;
    if depth > MAX_INCLUDE_DEPTH || *files > MAX_FILES {
        conf.problems.push(format!(
            "{}: includes nest too deep or too many",
            file.display()
        ));
        return;
    }
    let tokens = match load(root, file).and_then(|text| tokenize(&text)) {
        Ok(t) => t,
        Err(e) => {
            conf.problems.push(format!("{}: {e:#}", file.display()));
            return;
        }
    };
    for d in directives(&tokens, block_depth) {
        if d.name == "include" {
            for arg in &d.args {
                let pattern = absolute(conf_prefix, arg);
                let level = if d.top_level { 0 } else { 1 };
                for inc in expand(root, &pattern, conf) {
                    read_file(root, &inc, conf_prefix, depth + 1, level, files, conf);
                }
            }
        } else {
            conf.directives.push(d);
        }
    }
}

fn load(root: &Path, file: &Path) -> Result<String> {
    let path = resolve_in_root(root, file)?;
    let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
    if meta.len() > MAX_CONF_BYTES {
        bail!("larger than {MAX_CONF_BYTES} bytes");
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `path` if absolute, else `prefix/path`.
pub fn absolute(prefix: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        prefix.join(p)
    }
}

/// The files an `include` pattern names, as paths inside `root`, sorted (nginx uses glob()
/// with its default sorting).
fn expand(root: &Path, pattern: &Path, conf: &mut Conf) -> Vec<PathBuf> {
    let text = pattern.to_string_lossy();
    if !text.contains(['*', '?', '[']) {
        return vec![pattern.to_path_buf()];
    }
    // The folder part holds no wildcard in practice (`/etc/nginx/sites-enabled/*`); resolve
    // it inside the root so that absolute symlinks in a container stay in the container.
    let (dir, file_pattern) = match (pattern.parent(), pattern.file_name()) {
        (Some(d), Some(f)) if !d.to_string_lossy().contains(['*', '?', '[']) => (d, f),
        _ => {
            conf.problems.push(format!(
                "include {text}: wildcards in folder names are not followed"
            ));
            return Vec::new();
        }
    };
    let Ok(real_dir) = resolve_in_root(root, dir) else {
        return Vec::new();
    };
    let full = real_dir.join(file_pattern);
    let Ok(paths) = glob::glob(&full.to_string_lossy()) else {
        conf.problems.push(format!("include {text}: bad pattern"));
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = paths
        .flatten()
        .filter_map(|p| p.file_name().map(|f| dir.join(f)))
        .collect();
    out.sort();
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

/// Splits configuration text into words (quotes and escapes undone), `;`, `{` and `}`.
fn tokenize(text: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            ';' | '{' | '}' => {
                chars.next();
                tokens.push(match c {
                    ';' => Token::Semicolon,
                    '{' => Token::Open,
                    _ => Token::Close,
                });
            }
            '"' | '\'' => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => bail!("unterminated {c}quoted{c} string"),
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some('n') => word.push('\n'),
                            Some('t') => word.push('\t'),
                            Some('r') => word.push('\r'),
                            Some(e @ ('"' | '\'' | '\\')) => word.push(e),
                            Some(e) => {
                                word.push('\\');
                                word.push(e);
                            }
                            None => bail!("unterminated string"),
                        },
                        Some(o) => word.push(o),
                    }
                }
                tokens.push(Token::Word(word));
            }
            _ => {
                let mut word = String::new();
                while let Some(&w) = chars.peek() {
                    if w.is_whitespace() || matches!(w, ';' | '{' | '}') {
                        break;
                    }
                    chars.next();
                    if w == '\\' {
                        if let Some(e) = chars.next() {
                            word.push(e);
                        }
                    } else {
                        word.push(w);
                    }
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

/// Directives ending in `;` (block openers are not directives of interest here).
fn directives(tokens: &[Token], start_depth: usize) -> Vec<Directive> {
    let mut out = Vec::new();
    let mut depth = start_depth;
    let mut words: Vec<String> = Vec::new();
    for t in tokens {
        match t {
            Token::Word(w) => words.push(w.clone()),
            Token::Semicolon => {
                if !words.is_empty() {
                    let name = words.remove(0);
                    out.push(Directive {
                        name,
                        args: std::mem::take(&mut words),
                        top_level: depth == 0,
                    });
                }
            }
            Token::Open => {
                words.clear();
                depth += 1;
            }
            Token::Close => {
                words.clear();
                depth = depth.saturating_sub(1);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_quotes_comments_and_blocks() {
        let text = "user www-data; # comment ; {\nerror_log \"/var/log/a b.log\" info;\n\
                    http { error_log '/x/\\'y.log'; server { error_log logs/s.log; } }\n\
                    error_log syslog:server=unix:/dev/log;";
        let tokens = tokenize(text).expect("valid syntax");
        let d = directives(&tokens, 0);
        let logs: Vec<(&str, bool)> = d
            .iter()
            .filter(|d| d.name == "error_log")
            .map(|d| (d.args[0].as_str(), d.top_level))
            .collect();
        assert_eq!(
            logs,
            [
                ("/var/log/a b.log", true),
                ("/x/'y.log", false),
                ("logs/s.log", false),
                ("syslog:server=unix:/dev/log", true)
            ]
        );
        assert!(tokenize("error_log \"open").is_err());
    }

    #[test]
    fn includes_with_globs_relative_to_the_conf_folder() {
        let dir = std::env::temp_dir().join(format!("rsttrace-conf-{}", std::process::id()));
        let sites = dir.join("sites-enabled");
        std::fs::create_dir_all(&sites).expect("temp dir");
        std::fs::write(
            dir.join("nginx.conf"),
            "error_log /top.log;\nhttp {\n include sites-enabled/*.conf;\n include missing.conf;\n}\n",
        )
        .expect("write");
        std::fs::write(sites.join("b.conf"), "server { error_log /b.log; }").expect("write");
        std::fs::write(sites.join("a.conf"), "error_log /a.log;").expect("write");
        std::fs::write(sites.join("a.conf.off"), "error_log /off.log;").expect("write");
        let conf = read(
            Path::new("/"),
            &dir.join("nginx.conf"),
            &dir,
            Some("daemon off;"),
        );
        let logs: Vec<(&str, bool)> = conf
            .directives
            .iter()
            .filter(|d| d.name == "error_log")
            .map(|d| (d.args[0].as_str(), d.top_level))
            .collect();
        assert_eq!(
            logs,
            [("/top.log", true), ("/a.log", false), ("/b.log", false)]
        );
        assert!(conf.directives.iter().any(|d| d.name == "daemon"));
        assert_eq!(conf.problems.len(), 1, "{:?}", conf.problems);
        assert!(conf.problems[0].contains("missing.conf"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
