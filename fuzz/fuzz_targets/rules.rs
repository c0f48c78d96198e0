//! The rule-file loader, from YAML text: never panics; every error has a line and column inside the
//! file; a file that loads gives rules whose expressions evaluate and whose annotations render against
//! fixed entities.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rabbitwatch::rules::parse_file;
use rabbitwatch_fuzz::{Fixed, labels};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines as YAML counts them (`\n`, `\r\n`, a lone `\r`); an error may point at the end of the file.
    let breaks =
        text.matches('\n').count() + text.matches('\r').count() - text.matches("\r\n").count();
    let last_line = breaks as u64 + 1;
    match parse_file(Path::new("rules/fuzz.yaml"), text) {
        Ok(file) => {
            for rule in &file.rules {
                let _ = rule.expr.eval_bool(&Fixed);
                if let Some(clear) = &rule.clear {
                    let _ = clear.eval_bool(&Fixed);
                }
                let labels = labels(rule.scope);
                for (_, template) in &rule.annotations {
                    let _ = template.render(&Fixed, &labels);
                }
                assert!(
                    rule.line >= 1 && rule.line <= last_line,
                    "rule at line {}",
                    rule.line
                );
            }
        }
        Err(diags) => {
            assert!(!diags.is_empty(), "invalid without a reason");
            for d in &diags {
                assert!(d.line >= 1 && d.col >= 1, "no location: {d}");
                assert!(
                    d.line <= last_line,
                    "past the end of a {last_line}-line file: {d}"
                );
            }
        }
    }
});
