//! YAML files the user writes (config, rules, rule tests) → serde types, with a syntax or type error
//! reported as one `Diagnostic` at its `file:line:col`.

use std::path::Path;

use serde::Deserialize;

use crate::domain::Diagnostic;

pub fn parse<T: for<'de> Deserialize<'de>>(file: &Path, text: &str) -> Result<T, Diagnostic> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (line, col) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        // serde-saphyr appends " at line X column Y" to some messages; the location is printed once.
        let msg = e.to_string();
        let msg = msg.lines().next().unwrap_or_default();
        let msg = msg.find(" at line ").map_or(msg, |i| &msg[..i]);
        Diagnostic {
            file: file.to_path_buf(),
            line,
            col,
            message: msg.to_string(),
        }
    })
}
