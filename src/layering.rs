//! The module layering of docs/architecture.md, checked: every module of `src/` may use only the modules its
//! row lists. A lower module reaching up (say `store` importing `alerts`) fails this test, so the
//! layering stays true without anyone remembering it. A new module fails until it is given a row.
//!
//! Only `crate::…` paths in code count (comments are skipped); `main.rs` and `lib.rs` stand above
//! everything. Test code in a module counts too: a test that needs a higher module belongs higher.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it may use. Shared vocabulary and utilities at the bottom, the data path in
/// the middle, the read side and the wiring on top.
const MAY_USE: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("fault", &[]),
    ("process", &[]),
    ("yaml", &["domain"]),
    ("liveness", &["domain"]),
    ("snapshot", &["domain"]),
    ("scrape", &["domain", "snapshot"]),
    ("probe", &["domain", "yaml", "liveness", "snapshot"]),
    ("analysis", &["domain", "snapshot"]),
    ("view", &["domain", "snapshot", "analysis", "scrape"]),
    ("rules", &["domain", "yaml", "snapshot", "analysis", "view"]),
    ("alerts", &["domain", "rules"]),
    ("scale", &["domain", "yaml", "snapshot", "analysis", "view"]),
    ("ruletest", &["domain", "yaml", "rules", "alerts"]),
    ("store", &["domain"]),
    ("receivers", &["domain", "yaml"]),
    (
        "outbox",
        &[
            "domain",
            "fault",
            "liveness",
            "receivers",
            "store",
            "alerts",
        ],
    ),
    (
        "engine",
        &["domain", "rules", "alerts", "store", "view", "scale"],
    ),
    (
        "export",
        &[
            "domain", "process", "snapshot", "analysis", "view", "alerts", "engine", "outbox",
            "probe",
        ],
    ),
    (
        "http",
        &[
            "domain", "process", "snapshot", "scrape", "analysis", "view", "alerts", "engine",
            "export", "liveness", "outbox", "store", "probe",
        ],
    ),
    (
        "config",
        &[
            "domain",
            "yaml",
            "liveness",
            "scrape",
            "analysis",
            "rules",
            "alerts",
            "outbox",
            "receivers",
            "scale",
            "probe",
        ],
    ),
    (
        "app",
        &[
            "domain",
            "fault",
            "process",
            "yaml",
            "liveness",
            "snapshot",
            "scrape",
            "analysis",
            "view",
            "rules",
            "alerts",
            "store",
            "receivers",
            "outbox",
            "engine",
            "export",
            "http",
            "config",
            "probe",
        ],
    ),
    // The top: the subcommands may use any module.
    ("cli", &["*"]),
];

/// Modules that do no I/O and never read the clock: `now` is passed in.
const PURE: &[&str] = &["snapshot", "analysis", "view", "rules", "alerts", "scale"];

/// Ways of reading the clock.
const CLOCKS: &[&str] = &["Timestamp::now(", "SystemTime::now(", "Instant::now("];

/// The top-level modules this source text names through `crate::` (in `use crate::{a, b::c}` too).
fn crate_paths(source: &str) -> BTreeSet<String> {
    let code: Vec<&str> = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect();
    let code = code.join("\n");
    let mut out = BTreeSet::new();
    {
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::{c, d}}`, over several lines too: the first segment of each item.
                let mut depth = 0;
                let mut item_start = true;
                let mut name = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            if !name.is_empty() {
                                out.insert(std::mem::take(&mut name));
                            }
                            item_start = true;
                        }
                        c if item_start && (c.is_alphanumeric() || c == '_') => name.push(c),
                        _ if !name.is_empty() => {
                            out.insert(std::mem::take(&mut name));
                            item_start = false;
                        }
                        _ => {}
                    }
                }
                if !name.is_empty() {
                    out.insert(name);
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// Every `crate::` use in `source`, a file of `module`, that its row does not allow.
fn violations(module: &str, source: &str) -> Result<Vec<String>, String> {
    let allowed: BTreeMap<&str, &[&str]> = MAY_USE.iter().copied().collect();
    let Some(may) = allowed.get(module) else {
        return Err(format!(
            "module {module} has no row in layering::MAY_USE: say which modules it may use"
        ));
    };
    Ok(crate_paths(source)
        .into_iter()
        .filter(|m| m != module && !may.contains(&m.as_str()) && !may.contains(&"*"))
        .map(|m| {
            let why = if reaches(&allowed, &m, module) {
                "an upward import"
            } else {
                "not in its row of layering::MAY_USE"
            };
            format!("{module} uses crate::{m} ({why})")
        })
        .collect())
}

/// Whether `from` may use `to`, directly or through the modules it may use.
fn reaches(allowed: &BTreeMap<&str, &[&str]>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from];
    while let Some(m) = todo.pop() {
        for &next in allowed.get(m).copied().unwrap_or_default() {
            if next == to {
                return true;
            }
            if seen.insert(next) {
                todo.push(next);
            }
        }
    }
    false
}

/// The top-level module a file under `src/` belongs to; `None` for the crate roots.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "main" | "lib" | "layering")).then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("reading src/").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        let Some(module) = module_of(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("reading a source file");
        match violations(&module, &text) {
            Ok(v) => problems.extend(v.into_iter().map(|p| format!("{}: {p}", rel.display()))),
            Err(e) => problems.push(e),
        }
        if PURE.contains(&module.as_str()) {
            for clock in CLOCKS.iter().filter(|c| text.contains(**c)) {
                problems.push(format!(
                    "{}: a pure module reads the clock ({clock}…)",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    assert!(
        problems.is_empty(),
        "layering broken:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn a_reintroduced_upward_import_is_caught() {
    let cases = [
        // What `store` used to do before the vocabulary moved down into `domain`: `alerts` is no
        // layer above the store, but not one it may use either.
        (
            "store",
            "use crate::alerts::Alert;\nuse crate::domain::Silence;\n",
            "store uses crate::alerts (not in its row of layering::MAY_USE)",
        ),
        (
            "store",
            "fn f(e: &crate::engine::Engine) {}",
            "store uses crate::engine (an upward import)",
        ),
        (
            "receivers",
            "use crate::{\n    config::Secret, domain::{Notification, AlertSummary}};",
            "receivers uses crate::config (an upward import)",
        ),
        (
            "rules",
            "    let s = crate::engine::Engine::new(); // crate::app in a comment is fine",
            "rules uses crate::engine (an upward import)",
        ),
    ];
    for (module, source, expected) in cases {
        assert_eq!(
            violations(module, source).unwrap(),
            vec![expected],
            "{source}"
        );
    }
    // A module without a row is refused until it is given one.
    assert!(
        violations("canary", "").is_err(),
        "a new module needs a row"
    );
}

#[test]
fn grouped_imports_name_each_first_segment() {
    let found = crate_paths("use crate::{alerts::{a, b}, domain, store::{x::y, z}};");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec!["alerts", "domain", "store"]
    );
}
