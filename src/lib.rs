//! vend: an account-vending control plane. One signup becomes a dedicated, guarded, deployed and
//! reachable AWS account. See DESIGN.md for the architecture.

pub mod app;
pub mod aws;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod drift;
pub mod engine;
mod group_commit;
pub mod http;
pub mod lifecycle;
pub mod net;
pub mod readiness;
pub mod reconcile;
pub mod standard_webhooks;
pub mod steps;
pub mod telemetry;
