//! rabbitwatch: queue-health alerting for RabbitMQ.
//!
//! The modules follow the data path: `scrape → snapshot → analysis → view`, with `export` and `http`
//! on the read side and `app` the only place that wires them together.

pub mod analysis;
pub mod app;
pub mod config;
pub mod console;
pub mod domain;
pub mod export;
pub mod http;
pub mod scrape;
pub mod snapshot;
pub mod view;
