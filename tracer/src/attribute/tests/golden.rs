//! Golden verdicts: every recorded sequence's verdicts rendered through the real renderer
//! (`report::reset_json`, serialised as rsttrace prints it) and compared byte for byte with
//! `tracer/testdata/golden/<test>.jsonl` (and the text form in `<test>.txt`), so reshaping the engine cannot change what an
//! operator reads. `RSTTRACE_BLESS=1 cargo test` rewrites the files (review the diff).
use std::{collections::HashMap, fs, path::PathBuf};

use crate::{
    model::Attribution,
    report::{json_line, render_text, reset_json, MemcgInfo, Resolve},
};

/// Fixed facts for rendering: the test's reason names, one limited memory cgroup (id 77,
/// the worker's in these sequences), and a wall clock at a fixed offset from ktime.
struct Fixed {
    reasons: HashMap<u32, String>,
}

impl Resolve for Fixed {
    fn reason_name(&self, reason: u32) -> Option<&str> {
        self.reasons
            .get(&reason)
            .map(|n| crate::model::short_reason_name(n))
    }
    fn memcg(&self, memcg_id: u64) -> Option<MemcgInfo> {
        (memcg_id == 77).then(|| MemcgInfo {
            path: "/system.slice/php8.2-fpm.service".into(),
            limited_by: Some("/system.slice/php8.2-fpm.service".into()),
            limit_bytes: Some(64 << 20),
        })
    }
    fn wall_time_ns(&self, ktime_ns: u64) -> i128 {
        1_764_000_000_000_000_000 + i128::from(ktime_ns % (1 << 40))
    }
}

/// The JSON lines, then the text form of the same verdicts.
fn render(verdicts: &[Attribution]) -> (String, String) {
    let resolver = Fixed {
        reasons: super::reasons(),
    };
    let (mut json, mut text) = (Vec::new(), String::new());
    for v in verdicts {
        let j = reset_json(v, &resolver);
        json_line(&mut json, &j).expect("render");
        text.push_str(&render_text(&j));
        text.push('\n');
    }
    (String::from_utf8(json).expect("JSON is UTF-8"), text)
}

/// Compares `verdicts` with the golden file named after the running test (libtest names
/// each test's thread after the test). One call per test: a second would share the file.
pub fn check(verdicts: &[Attribution]) {
    let thread = std::thread::current();
    let name = thread
        .name()
        .and_then(|n| n.rsplit("::").next())
        .filter(|n| *n != "main")
        .expect("golden::check runs inside a libtest test thread");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden");
    let (json, text) = render(verdicts);
    for (rendered, ext) in [(json, "jsonl"), (text, "txt")] {
        let path = dir.join(format!("{name}.{ext}"));
        if std::env::var_os("RSTTRACE_BLESS").is_some() {
            fs::write(&path, &rendered).expect("writing the golden file");
            continue;
        }
        let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; create it with RSTTRACE_BLESS=1 cargo test",
                path.display()
            )
        });
        assert!(
            rendered == expected,
            "verdicts of {name} differ from {}:\n--- golden\n{expected}--- now\n{rendered}",
            path.display()
        );
    }
}
