//! What the proxy counted, served at `/_proxy/stats`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Per-operation counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpStats {
    pub calls: u64,
    /// Throttles from a quota.
    pub quota_throttles: u64,
    /// Random throttles.
    pub injected_throttles: u64,
    pub injected_errors: u64,
    pub lost_responses: u64,
    /// Answered from a script instead of the emulator.
    #[serde(default)]
    pub scripted: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProxyStats {
    pub operations: BTreeMap<String, OpStats>,
    pub create_account_max_in_flight: usize,
    /// CreateAccount calls made while the cap was already reached (must stay 0 for a polite client).
    pub create_account_over_cap: u64,
    pub create_account_started: u64,
    pub duplicate_emails_refused: u64,
    /// CloseAccount calls refused over the closure quota.
    #[serde(default)]
    pub close_account_refused: u64,
}

impl ProxyStats {
    pub fn total_calls(&self) -> u64 {
        self.operations.values().map(|o| o.calls).sum()
    }

    pub fn total_throttles(&self) -> u64 {
        self.operations
            .values()
            .map(|o| o.quota_throttles + o.injected_throttles)
            .sum()
    }

    pub fn calls(&self, op: &str) -> u64 {
        self.operations.get(op).map_or(0, |o| o.calls)
    }

    /// Calls of every operation of `service` (as the credential scope names it: `ec2`, `sts`).
    pub fn service_calls(&self, service: &str) -> u64 {
        self.operations
            .iter()
            .filter(|(op, _)| op.split_once('.').is_some_and(|(s, _)| s == service))
            .map(|(_, o)| o.calls)
            .sum()
    }
}
