//! The integration-test binary: one crate so the suite links once and its tests run in parallel.
//! Each module covers one area of behaviour; `util` holds the harness they share.

mod pipeline;
mod prometheus;
mod util;
