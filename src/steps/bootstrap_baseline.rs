//! `bootstrap_baseline`: assume the access role in the tenant account (a new account refuses for its
//! first minutes: retried, bounded by the step's timeout) and converge the baseline stack: the deployment
//! role for the tenant stack, event forwarding to the central bus, and the account's CloudTrail; then
//! the account's alternate contacts (`VEND_ALTERNATE_CONTACT_*`) and the ops group's Identity Center
//! access (`VEND_IDENTITY_CENTER_*`).

use std::sync::Arc;

use async_trait::async_trait;

use crate::aws::cloudformation::{Cfn, StackSpec};
use crate::domain::{Resource, StackKind};
use crate::domain::{StepError, StepOutcome};
use crate::engine::{NamedStep, StepContext};

use super::stack::{StackProgress, converge};
use super::{Silo, account_id};

pub const STACK_NAME: &str = "vend-baseline";

pub struct BootstrapBaseline(pub Arc<Silo>);

#[async_trait]
impl NamedStep for BootstrapBaseline {
    const KIND: &'static str = "bootstrap_baseline";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        run(&self.0, ctx).await
    }
}

async fn run(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let account = account_id(ctx)?;
    let inside = silo.accounts.in_account(&account, &ctx.tenant.slug).await?;
    let cfn = Cfn::new(&inside);
    let (template, version) = super::provisioning_template(silo, "baseline").await?;
    let spec = spec(silo, ctx, template);
    match converge(ctx, &silo.pool, &cfn, spec, StackKind::Baseline).await? {
        StackProgress::InProgress { note, after } => Ok(StepOutcome::Wait { after, note }),
        StackProgress::Ready(stack) => {
            let role = stack
                .outputs
                .get("DeploymentRoleArn")
                .cloned()
                .ok_or_else(|| {
                    StepError::permanent(
                        "StackOutputMissing",
                        "the baseline stack has no DeploymentRoleArn output",
                    )
                })?;
            ctx.set_resource(Resource::DeploymentRoleArn, role);
            ctx.set_resource(Resource::StackVersion(StackKind::Baseline), version);
            set_alternate_contacts(silo, ctx, &inside).await?;
            if let Some(wait) = assign_access(silo, ctx, &account).await? {
                return Ok(wait);
            }
            Ok(StepOutcome::Succeeded)
        }
    }
}

/// Sets the configured alternate contacts on the account, unless these very contacts were set by an
/// earlier run (a digest of them is kept with the tenant). Each call overwrites one contact, so a
/// rerun after a crash half-way repeats them harmlessly. Contacts removed from the configuration are
/// left on the account: vend does not delete what it cannot tell it set.
pub(crate) async fn set_alternate_contacts(
    silo: &Silo,
    ctx: &mut StepContext,
    inside: &crate::aws::Aws,
) -> Result<(), StepError> {
    let contacts = &silo.settings.alternate_contacts;
    if contacts.is_empty() {
        return Ok(());
    }
    let digest = contacts_digest(contacts);
    if ctx.resource_str(Resource::AlternateContacts) == Some(digest.as_str()) {
        return Ok(());
    }
    let account = crate::aws::account::Account::new(inside);
    for c in contacts {
        account.put_alternate_contact(c).await?;
    }
    ctx.set_resource(Resource::AlternateContacts, digest);
    Ok(())
}

/// Assigns the configured permission set to the ops group on the account, once: an assignment that
/// exists (made by an earlier attempt whose answer was lost, or by hand) is taken as done. Identity
/// Center makes it asynchronously: `Some(wait)` until it shows.
pub(crate) async fn assign_access(
    silo: &Silo,
    ctx: &mut StepContext,
    account: &str,
) -> Result<Option<StepOutcome>, StepError> {
    let Some((sso, key)) = super::identity_center(silo) else {
        return Ok(None);
    };
    if ctx.resource_str(Resource::AccessAssignment) == Some(key.as_str()) {
        return Ok(None);
    }
    if !sso.assigned(account).await? {
        use crate::aws::identity_center::Request;
        match sso.assign(account).await? {
            Request::Succeeded => {}
            Request::InProgress => {
                return Ok(Some(StepOutcome::Wait {
                    after: std::time::Duration::from_secs(5),
                    note: "Identity Center is assigning the ops group's access".into(),
                }));
            }
            Request::Failed(reason) => {
                return Err(StepError::permanent(
                    "AccessAssignmentFailed",
                    format!("Identity Center could not assign the ops group's access: {reason}"),
                ));
            }
        }
    }
    ctx.set_resource(Resource::AccessAssignment, key);
    Ok(None)
}

fn contacts_digest(contacts: &[crate::config::AlternateContact]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for c in contacts {
        for part in [c.kind.as_str(), &c.name, &c.title, &c.email, &c.phone] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
    }
    super::hex(&h.finalize())[..16].to_owned()
}

/// The tenant's baseline stack made from `template_body` (the file at start, or a rollout's).
pub(crate) fn spec(silo: &Silo, ctx: &StepContext, template_body: String) -> StackSpec {
    StackSpec {
        name: STACK_NAME.into(),
        template_body,
        parameters: vec![
            ("TenantSlug".into(), ctx.tenant.slug.clone()),
            (
                "CentralEventBusArn".into(),
                silo.management.event_bus_arn.clone(),
            ),
            (
                "EnableCloudTrail".into(),
                silo.settings.baseline_cloudtrail.to_string(),
            ),
        ],
        role_arn: None,
        tags: vec![("vend:tenant".into(), ctx.tenant.slug.clone())],
    }
}
