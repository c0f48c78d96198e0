//! Test-only fault injection: `RABBITWATCH_FAULT=<name>` makes the daemon misbehave on purpose, so the
//! fault-injection tests can prove the watchdog, the cycle deadline and the state writer.
//!
//! Compiled in only with the `fault-injection` cargo feature (`scripts/test` enables it). Without it,
//! `from_env` never reads the variable and `is` is the constant `false`, so a production build
//! carries no hang switches: the optimiser removes every branch that tests for one.

use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Every poll loop hangs forever after its first cycle, outside the cycle deadline: a bug.
    StallPollLoop,
    /// The dispatcher tick hangs forever after its first tick.
    StallDispatcher,
    /// Every scrape hangs forever inside the cycle: the cycle deadline must cut it off.
    HangScrape,
    /// Every notification delivery hangs forever: the outbox worker stops beating.
    HangDelivery,
    /// After the third poll cycle, every async worker thread blocks forever (blocking code on the
    /// runtime, a deadlock): no task runs any more, `/healthz` included.
    BlockRuntime,
    /// Every commit of alert state takes `SLOW_DISK` longer, as on a saturated disk.
    SlowStateDisk,
}

/// How much `SlowStateDisk` adds to each state commit.
pub const SLOW_DISK: Duration = Duration::from_secs(2);

impl Fault {
    /// The fault `RABBITWATCH_FAULT` names; `None` in a build without the `fault-injection` feature.
    pub fn from_env() -> Fault {
        if !cfg!(feature = "fault-injection") {
            return Fault::None;
        }
        let Ok(value) = std::env::var("RABBITWATCH_FAULT") else {
            return Fault::None;
        };
        let fault = match value.as_str() {
            "stall-poll-loop" => Fault::StallPollLoop,
            "stall-dispatcher" => Fault::StallDispatcher,
            "hang-scrape" => Fault::HangScrape,
            "hang-delivery" => Fault::HangDelivery,
            "block-runtime" => Fault::BlockRuntime,
            "slow-state-disk" => Fault::SlowStateDisk,
            _ => Fault::None,
        };
        tracing::warn!(fault = %value, active = fault != Fault::None, "RABBITWATCH_FAULT is set: fault injection for tests");
        fault
    }

    /// Whether this fault is injected; always false in a production build.
    pub fn is(self, fault: Fault) -> bool {
        cfg!(feature = "fault-injection") && self == fault
    }
}
