//! The vocabulary of vend and its rules, in plain Rust without I/O.

pub mod events;
pub mod names;
pub mod resources;
pub mod retry;
pub mod step;
pub mod tenant;
pub mod waits;
pub mod workflow;

pub use events::EventType;
pub use names::{DeliveryState, HistoryKind, RolloutState, RolloutTenantState, RunState};
pub use resources::{Resource, Resources, StackKind};
pub use retry::{Jitter, RetryPolicy};
pub use step::{
    Decision, ErrorClass, FailReason, StepError, StepOutcome, StepProgress, StepRules, StepState,
    WaitReason, decide,
};
pub use tenant::{
    AccountNamingTemplates, OwnerEmail, Regions, Signup, Slug, SlugRefusal, SlugRules, TenantName,
    TenantState, Tier, ValidationError,
};
pub use workflow::{Purpose, StepDef, TierLimits, Workflow, WorkflowError, Workflows};
