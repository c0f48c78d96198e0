//! rabbitwatch: queue-health alerting for RabbitMQ.
//!
//! The modules follow the data path: `scrape → snapshot → analysis → view`, with `export` and `http`
//! on the read side and `app` the only place that wires them together. `cli` holds the subcommands
//! that print or talk to a running daemon (`status`, `silence`, `deadletters`, ...).

pub mod alerts;
pub mod analysis;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod export;
pub mod http;
pub mod liveness;
pub mod outbox;
pub mod process;
pub mod receivers;
pub mod rules;
pub mod scrape;
pub mod snapshot;
pub mod store;
pub mod view;
pub mod yaml;
