//! The config loader, from YAML text: never panics, and every error it reports has a line and column.
//!
//! The config sits in a directory that does not exist, so relative paths (`rules: [rules/*.yaml]`,
//! `password_file: secret`) fail fast instead of reading the working directory on every run.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rabbitwatch::config::{self, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| match name {
        "RABBITMQ_PASSWORD" | "RW_PASSWORD" => Some("s3cret".to_string()),
        "SLACK_WEBHOOK_URL" => Some("https://hooks.slack.invalid/services/T/B/x".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let path = Path::new("/nonexistent/rabbitwatch-fuzz/rabbitwatch.yaml");
    match config::parse(path, text, &env) {
        Ok(c) => {
            assert!(!c.clusters.is_empty());
            let _ = format!("{c:?}");
        }
        Err(ConfigError::Invalid(diags)) => {
            assert!(!diags.is_empty(), "invalid without a reason");
            for d in &diags {
                assert!(d.line >= 1 && d.col >= 1, "no location: {d}");
            }
            let _ = ConfigError::Invalid(diags).to_string();
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parse read a file of its own: {e}"),
    }
});
