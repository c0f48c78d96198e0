//! The integration-test binary: one crate so the suite links once and its tests run in parallel.
//! Each module covers one area of behaviour; the `util*` modules hold the harness they share.

mod alerting;
mod broker_outage;
mod cli;
mod cluster4;
mod continuity;
mod defaults;
mod faults;
mod ha;
mod muting;
mod pipeline;
mod probe;
mod prometheus;
mod receivers;
mod resilience;
mod rules_export;
mod scaling;
mod secrets;
mod sharding;
mod sources;
mod startup;
mod storm;
mod streams;
mod tls;
mod topology;
mod util;
mod util_alertmanager;
mod util_broker;
mod util_faults;
mod util_proxy;
mod util_slack;
mod util_smtp;
mod util_stream;
