//! `move_account`: root → the tenant OU (which carries the SCPs). Idempotent: an account already in the
//! OU is left alone.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{StepError, StepOutcome};
use crate::engine::{Step, StepContext};

use super::{Silo, account_id, finish};

pub struct MoveAccount(pub Arc<Silo>);

#[async_trait]
impl Step for MoveAccount {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        finish(run(&self.0, ctx).await)
    }
}

async fn run(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let account = account_id(ctx)?;
    let ou = &silo.management.tenant_ou_id;
    let parent = silo.orgs.parent_of(&account).await?;
    if &parent != ou {
        silo.orgs.move_account(&account, &parent, ou).await?;
        tracing::info!(account.id = %account, from = %parent, to = %ou, "moved the account into the tenant OU");
    }
    ctx.set_resource("ou_id", ou.clone());
    Ok(StepOutcome::Succeeded)
}
