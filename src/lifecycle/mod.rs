//! Every operation that changes a tenant's state, in one place: HTTP handlers, the CLI (through the
//! API) and the engine call these; they decide what is written, `db` writes it, and nothing here
//! speaks HTTP. See docs/architecture.md.

pub mod attempt;
pub mod offboard;
pub mod operator;
pub mod rollout;
pub mod signup;
pub mod tier;
