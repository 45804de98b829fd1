//! The steps of the silo workflow, one file per step kind.

/// The step kinds of the silo workflow, in order (CONTRACT.md).
pub const SILO_KINDS: [&str; 6] = [
    "create_account",
    "await_account",
    "move_account",
    "bootstrap_baseline",
    "deploy_stack",
    "map_domain",
];
