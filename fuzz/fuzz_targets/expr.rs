//! The rule expression language: lexing, parsing and type checking never panic, whatever the text; a
//! compiled expression prints in a canonical form that compiles back to an expression printing and
//! evaluating the same; evaluation and template rendering against fixed entities never panic.
//!
//! Input: the first byte picks the scope, the rest is the expression (also compiled as a template).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rabbitwatch::rules::expr::{Expr, Scope};
use rabbitwatch::rules::template::Template;
use rabbitwatch_fuzz::{Fixed, labels, same_value};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(src) = std::str::from_utf8(rest) else {
        return;
    };
    let scope = Scope::ALL[usize::from(pick) % Scope::ALL.len()];
    match Expr::compile(src, scope) {
        Ok(expr) => {
            let value = expr.eval(&Fixed);
            let _ = expr.eval_bool(&Fixed);
            let _ = expr.eval_number(&Fixed);
            let _ = expr.referenced_fields();
            let printed = expr.to_string();
            let again = Expr::compile(&printed, scope).unwrap_or_else(|e| {
                panic!("canonical form {printed:?} of {src:?} does not compile: {e:?}")
            });
            assert_eq!(
                again.to_string(),
                printed,
                "canonical form of {src:?} is not stable"
            );
            assert_eq!(again.ty(), expr.ty(), "{src:?}");
            assert!(
                same_value(&again.eval(&Fixed), &value),
                "{src:?} and its canonical form {printed:?} evaluate differently"
            );
            let _ = Expr::compile_bool(src, scope);
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "{src:?}: an error without a message");
            for e in &errors {
                assert!(e.line >= 1 && e.col >= 1, "{src:?}: {e:?}");
            }
        }
    }
    let labels = labels(scope);
    match Template::compile(src, scope, labels.keys()) {
        Ok(t) => {
            let _ = t.render(&Fixed, &labels);
            let _ = t.referenced_fields();
        }
        Err(errors) => {
            for e in &errors {
                assert!(e.line >= 1 && e.col >= 1, "{src:?}: {e:?}");
            }
        }
    }
});
