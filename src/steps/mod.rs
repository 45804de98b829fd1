//! The steps of the silo and offboard workflows, one file per step kind (offboard.rs holds the
//! offboard workflow's). Every step is idempotent: it first looks at
//! what its tenant's saved resources and AWS already say, and only then acts; external ids are saved
//! the moment they are known.

mod account_settings;
mod await_account;
mod bootstrap_baseline;
mod create_account;
mod deploy_stack;
mod map_domain;
mod move_account;
mod offboard;
mod pool;
mod rollout;
mod stack;
mod tier;
mod timing;

use std::sync::Arc;

use crate::aws::Aws;
use crate::aws::accounts::Accounts;
use crate::aws::organizations::Organizations;
use crate::aws::route53::Route53;
use crate::config::AwsSettings;
use crate::db;
use crate::domain::Resource;
use crate::domain::StepError;
use crate::engine::{NamedStep, Registry};

pub use await_account::AwaitAccount;
pub use bootstrap_baseline::BootstrapBaseline;
pub use bootstrap_baseline::STACK_NAME as BASELINE_STACK;
pub use create_account::CreateAccount;
pub use deploy_stack::{DeployStack, STACK_NAME as TENANT_STACK};
pub use map_domain::MapDomain;
pub use move_account::MoveAccount;
pub use offboard::{
    CloseAccount, DarkenEndpoint, DeleteStack, GracePeriod, OFFBOARD_KINDS, UnmapDomain,
};
pub use pool::{
    IssueApiKey, POOL_KINDS, POOL_SLUG, PoolCtx, PoolState, PreparePool, RegisterTenant,
    RouteDomain, drift as pool_drift, outdated as pool_outdated, state as pool_state,
    unready as pool_unready,
};
pub use rollout::UpdateStack;
pub use tier::{ForgetAccount, LeavePool, RetireDomain, RetireGrace, SwitchTier, TIER_KINDS};

/// The step kinds of the silo workflow, in order (CONTRACT.md).
pub const SILO_KINDS: [&str; 6] = [
    CreateAccount::KIND,
    AwaitAccount::KIND,
    MoveAccount::KIND,
    BootstrapBaseline::KIND,
    DeployStack::KIND,
    MapDomain::KIND,
];

/// The step kinds of the rollout workflow (workflows/rollout.toml).
pub const ROLLOUT_KINDS: [&str; 1] = [UpdateStack::KIND];

/// What the management-account reconciler found or made at start; the steps build on it.
#[derive(Debug, Clone)]
pub struct Management {
    pub organization_id: String,
    pub management_account_id: String,
    pub root_id: String,
    pub tenant_ou_id: String,
    pub hosted_zone_id: String,
    pub event_bus_arn: String,
}

/// The CloudFormation templates, read once at start.
#[derive(Debug, Clone)]
pub struct Templates {
    pub baseline: String,
    pub tenant_stack: String,
    pub pool_stack: String,
}

impl Templates {
    pub fn load(dir: &std::path::Path) -> Result<Self, String> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p)
                .map_err(|e| format!("cannot read template {}: {e}", p.display()))
        };
        Ok(Self {
            baseline: read("baseline.yaml")?,
            tenant_stack: read("tenant-stack.yaml")?,
            pool_stack: read("pool-stack.yaml")?,
        })
    }
}

/// The template a tenant's `stack` (`tenant` or `baseline`) is deployed from while it provisions, and
/// its version: the newest rollout's (not aborted or halted) if there is one, else the file read at
/// start. A tenant that provisions during or after a rollout so joins the version the fleet moves to.
pub(crate) async fn provisioning_template(
    silo: &Silo,
    stack: &str,
) -> Result<(String, String), StepError> {
    let rolled = db::rollouts::current_template(&silo.pool, stack)
        .await
        .map_err(|e| StepError::transient("DatabaseError", e.to_string()))?;
    Ok(match rolled {
        Some((template, version)) => (template, version),
        None => {
            let file = match stack {
                "baseline" => &silo.templates.baseline,
                _ => &silo.templates.tenant_stack,
            };
            (file.clone(), crate::lifecycle::rollout::version(file))
        }
    })
}

/// Everything the silo steps share.
pub struct Silo {
    pub aws: Aws,
    pub orgs: Arc<dyn Organizations>,
    pub accounts: Arc<Accounts>,
    pub route53: Arc<Route53>,
    pub settings: AwsSettings,
    pub management: Management,
    pub templates: Templates,
    pub pool: sqlx::PgPool,
}

impl Silo {
    /// vend's tags on a tenant account, then the configured cost-allocation tags.
    pub fn account_tags(&self, slug: &str, tier: &str) -> Vec<(String, String)> {
        let mut t = vec![
            ("vend:tenant".to_owned(), slug.to_owned()),
            ("vend:tier".to_owned(), tier.to_owned()),
            ("vend:managed-by".to_owned(), "vend".to_owned()),
        ];
        t.extend(self.settings.account_tags.iter().cloned());
        t
    }
}

/// The registry with every step: the silo, pool, tier change, offboard and rollout workflows'. The
/// pool steps take the pool tiers' limits from `workflows`, and `switch_tier` which workflow serves
/// each tier.
pub fn registry(silo: Arc<Silo>, workflows: Arc<crate::domain::Workflows>) -> Registry {
    let pool = Arc::new(PoolCtx {
        silo: silo.clone(),
        limits: workflows.limits(),
    });
    Registry::new()
        .with_named(SwitchTier {
            silo: silo.clone(),
            workflows,
        })
        .with_named(LeavePool(silo.clone()))
        .with_named(RetireGrace)
        .with_named(RetireDomain(silo.clone()))
        .with_named(ForgetAccount)
        .with_named(PreparePool(pool.clone()))
        .with_named(IssueApiKey(pool.clone()))
        .with_named(RegisterTenant(pool.clone()))
        .with_named(RouteDomain(pool))
        .with_named(CreateAccount(silo.clone()))
        .with_named(AwaitAccount(silo.clone()))
        .with_named(MoveAccount(silo.clone()))
        .with_named(BootstrapBaseline(silo.clone()))
        .with_named(DeployStack(silo.clone()))
        .with_named(MapDomain(silo.clone()))
        .with_named(DarkenEndpoint(silo.clone()))
        .with_named(GracePeriod)
        .with_named(UnmapDomain(silo.clone()))
        .with_named(DeleteStack(silo.clone()))
        .with_named(CloseAccount(silo.clone()))
        .with_named(UpdateStack(silo))
}

/// Lowercase hex of a digest (template hashes, idempotency tokens).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tenant's account, calling the tenant's region (`resources.region`, set at signup): its stack,
/// custom domain and certificate live there. The baseline stays in vend's own region.
pub(crate) async fn in_tenant_region(
    silo: &Silo,
    ctx: &crate::engine::StepContext,
    account: &str,
) -> Result<Aws, StepError> {
    Ok(tenant_region_aws(
        silo,
        account,
        &ctx.tenant.slug,
        ctx.resource_str(Resource::Region),
    )
    .await?)
}

/// `account` through its access role as `slug`, calling `region` when it is not vend's own.
pub(crate) async fn tenant_region_aws(
    silo: &Silo,
    account: &str,
    slug: &str,
    region: Option<&str>,
) -> Result<Aws, crate::aws::AwsError> {
    let aws = silo.accounts.in_account(account, slug).await?;
    Ok(match region {
        Some(r) if aws.sdk.region().is_none_or(|own| own.as_ref() != r) => aws.in_region(r),
        _ => aws,
    })
}

/// Identity Center as configured (and the key a tenant records of its assignment); `None` when it is
/// not configured.
pub(crate) fn identity_center(silo: &Silo) -> Option<(crate::aws::identity_center::Sso, String)> {
    let ic = silo.settings.identity_center.clone()?;
    let key = ic.key();
    Some((crate::aws::identity_center::Sso::new(&silo.aws, ic), key))
}

/// The tenant's account id, which every step after `await_account` needs.
pub(crate) fn account_id(ctx: &crate::engine::StepContext) -> Result<String, StepError> {
    ctx.resource_str(Resource::AccountId)
        .map(str::to_owned)
        .ok_or_else(|| {
            StepError::permanent(
                "NoAccount",
                "the tenant has no account id recorded; requeue from create_account",
            )
        })
}
