//! `move_account`: root → the tenant OU (which carries the SCPs). Idempotent: an account already in the
//! OU is left alone. Only from the root: an account somewhere else in the organization was put there by
//! someone, and vend does not take it from them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::Resource;
use crate::domain::{StepError, StepOutcome};
use crate::engine::{NamedStep, StepContext};

use super::{Silo, account_id};

pub struct MoveAccount(pub Arc<Silo>);

#[async_trait]
impl NamedStep for MoveAccount {
    const KIND: &'static str = "move_account";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        run(&self.0, ctx).await
    }
}

async fn run(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let account = account_id(ctx)?;
    let ou = &silo.management.tenant_ou_id;
    let parent = silo.orgs.parent_of(&account).await?;
    if &parent != ou {
        if parent != silo.management.root_id {
            return Err(StepError::permanent(
                "AccountOutsideRoot",
                format!(
                    "account {account} is under {parent}, not the organization root; vend moves \
                     accounts into the tenant OU only from the root and leaves this one where it is"
                ),
            ));
        }
        silo.orgs.move_account(&account, &parent, ou).await?;
        tracing::info!(account.id = %account, from = %parent, to = %ou, "moved the account into the tenant OU");
    }
    ctx.set_resource(Resource::OuId, ou.clone());
    Ok(StepOutcome::Succeeded)
}
