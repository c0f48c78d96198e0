//! rabbitwatch: queue-health alerting for RabbitMQ.
//!
//! The modules follow the data path (docs/architecture.md):
//! `scrape → snapshot → analysis → view → rules → alerts → engine → store/outbox → receivers`,
//! with `export` and `http` on the read side, `domain` the shared vocabulary at the bottom, `config`
//! assembling each module's own config type, `cli` the subcommands that print or talk to a running
//! daemon, and `app` the only place that wires them together. `layering` (a test) keeps every
//! module to the modules below it.

pub mod alerts;
pub mod analysis;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod export;
pub mod fault;
pub mod http;
#[cfg(test)]
mod layering;
pub mod liveness;
pub mod outbox;
pub mod probe;
pub mod process;
pub mod receivers;
pub mod rules;
pub mod ruletest;
pub mod scale;
pub mod scrape;
pub mod snapshot;
pub mod store;
pub mod view;
pub mod yaml;
