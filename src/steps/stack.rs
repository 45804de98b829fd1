//! Converging a CloudFormation stack to its template: create, update when the template or parameters
//! changed, wait while in progress (as a durable timer), and turn failures into clear step errors.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::aws::cloudformation::{Cfn, StackInfo, StackSpec};
use crate::domain::{Resource, StackKind};
use crate::domain::{StepError, waits};
use crate::engine::StepContext;

use super::timing::Timed;

/// Tag carrying the hash of what a stack was deployed from, so a changed template is an update.
const HASH_TAG: &str = "vend:template-sha256";

pub enum StackProgress {
    Ready(StackInfo),
    /// Still changing: look again after `after`.
    InProgress {
        note: String,
        after: Duration,
    },
}

fn spec_hash(spec: &StackSpec) -> String {
    let mut h = Sha256::new();
    h.update(spec.template_body.as_bytes());
    for (k, v) in &spec.parameters {
        h.update(b"\0");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    if let Some(r) = &spec.role_arn {
        h.update(b"\0role=");
        h.update(r.as_bytes());
    }
    super::hex(&h.finalize())
}

/// A change of the stack has just been asked for: time it, and look first when such changes usually end.
async fn started(
    ctx: &mut StepContext,
    timer: &Timed<'_>,
    pool: &PgPool,
    status: &str,
) -> Result<StackProgress, StepError> {
    let expected = timer.expected(pool).await?;
    timer.start(ctx);
    Ok(StackProgress::InProgress {
        note: status.to_owned(),
        after: waits::next_look(Duration::ZERO, expected, ctx.poll_interval),
    })
}

/// How soon to look at a change set again: CloudFormation computes one in seconds.
const CHANGE_SET_LOOK: Duration = Duration::from_secs(2);

/// Updates a stack at rest to `spec` through the change set `name` (named after the content, so the
/// same change has the same name): created, looked at until CloudFormation has computed it, then
/// executed. `None` when there is nothing to change (or
/// this change set already ran); a spent or obsolete change set is deleted so the next look makes it
/// afresh. Every call is safe to repeat after a crash: the name and tokens come from the content.
async fn through_change_set(
    ctx: &mut StepContext,
    timer: &Timed<'_>,
    pool: &PgPool,
    cfn: &Cfn,
    spec: &StackSpec,
    name: &str,
    token: &str,
) -> Result<Option<StackProgress>, StepError> {
    let preparing = |what: &str| {
        Some(StackProgress::InProgress {
            note: format!("change set {name}: {what}"),
            after: CHANGE_SET_LOOK,
        })
    };
    let Some(cs) = cfn.change_set(&spec.name, name).await? else {
        if !cfn.create_change_set(spec, name, token).await? {
            return Ok(None);
        }
        return Ok(preparing("CREATE_PENDING"));
    };
    if cs.without_changes() {
        return Ok(None);
    }
    match (cs.status.as_str(), cs.execution_status.as_str()) {
        (_, "AVAILABLE") => {
            cfn.execute_change_set(&spec.name, name, &format!("{token}-execute"))
                .await?;
            started(ctx, timer, pool, "UPDATE_IN_PROGRESS")
                .await
                .map(Some)
        }
        (_, "EXECUTE_COMPLETE") => Ok(None),
        ("FAILED", _) => {
            cfn.delete_change_set(&spec.name, name).await?;
            Err(StepError::permanent(
                "ChangeSetFailed",
                format!(
                    "CloudFormation could not prepare the update of stack {}: {}; fix the cause, then retry",
                    spec.name,
                    cs.reason.as_deref().unwrap_or("no reason given")
                ),
            ))
        }
        (_, spent @ ("EXECUTE_FAILED" | "OBSOLETE")) => {
            cfn.delete_change_set(&spec.name, name).await?;
            Ok(preparing(&format!("{spent}, made again")))
        }
        (status, _) => Ok(preparing(status)),
    }
}

/// Drives the stack `spec` one step towards its template. `stack` names its entries in the tenant's
/// resources (its id, the failure seen, and the timing of the change in progress). How long a change
/// takes is learned (`stack:<kind>`), and the looks at it are timed by that.
pub async fn converge(
    ctx: &mut StepContext,
    pool: &PgPool,
    cfn: &Cfn,
    mut spec: StackSpec,
    stack_kind: StackKind,
) -> Result<StackProgress, StepError> {
    let kind = format!("stack:{}", stack_kind.as_str());
    let timer = Timed {
        kind: &kind,
        started_key: Resource::StackOpStartedAt(stack_kind),
        seen_key: Resource::StackOpSeenS(stack_kind),
    };
    let hash = spec_hash(&spec);
    spec.tags.push((HASH_TAG.into(), hash.clone()));
    // The same token for the same (stack, content): a repeated call after a crash is a no-op at AWS.
    let token = format!("vend-{}-{}", spec.name, &hash[..16]);
    let failed_key = Resource::StackFailed(stack_kind);
    let id_key = Resource::StackId(stack_kind);

    let Some(stack) = cfn.describe(&spec.name).await? else {
        cfn.create(&spec, &token).await?;
        if let Some(s) = cfn.describe(&spec.name).await? {
            ctx.save_resource(id_key, s.stack_id).await?;
        }
        return started(ctx, &timer, pool, "CREATE_IN_PROGRESS").await;
    };
    if ctx.resource_str(id_key) != Some(stack.stack_id.as_str()) {
        ctx.set_resource(id_key, stack.stack_id.clone());
    }
    let status = stack.status.as_str();
    // This stack's failure was seen and reported before: an operator has asked to try again. By the
    // stack, not its exact status: a failed creation may be reported at CREATE_FAILED and read again at
    // ROLLBACK_COMPLETE once the emulator (or AWS) has finished rolling back.
    let retrying = ctx
        .resource_str(failed_key)
        .is_some_and(|v| v.starts_with(&format!("{}:", stack.stack_id)));
    match status {
        s if s.ends_with("_IN_PROGRESS") => {
            let expected = timer.expected(pool).await?;
            let (after, note) = timer.unfinished(ctx, expected);
            Ok(StackProgress::InProgress {
                note: format!("{s}: {note}"),
                after,
            })
        }
        "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE" => {
            // The tag says what vend deployed last. A stack vend did not just change may have been
            // changed behind its back since (drift repair reruns this step for that): the template
            // it runs then tells, and a change set puts vend's back.
            // The change set is then named after what it changes from as well: one named after the
            // target alone may be the spent one that deployed it first.
            let change = if stack.tags.get(HASH_TAG) != Some(&hash) {
                Some((format!("vend-{}", &hash[..16]), token.clone()))
            } else if timer.elapsed(ctx).is_none()
                && let Some(running) = cfn.template(&spec.name).await?
                && running != spec.template_body
            {
                let from = &super::hex(&Sha256::digest(running.as_bytes()))[..8];
                Some((
                    format!("vend-{}-{from}", &hash[..16]),
                    format!("{token}-{from}"),
                ))
            } else {
                None
            };
            if let Some((name, token)) = change
                && let Some(progress) =
                    through_change_set(ctx, &timer, pool, cfn, &spec, &name, &token).await?
            {
                return Ok(progress);
            }
            timer.finished(pool, ctx).await?;
            ctx.set_resource(failed_key, serde_json::Value::Null);
            Ok(StackProgress::Ready(stack))
        }
        // A failed creation leaves a stack that can only be deleted. Report it once; when the operator
        // retries, delete it so the next pass creates it afresh.
        "ROLLBACK_COMPLETE" | "ROLLBACK_FAILED" | "CREATE_FAILED" if retrying => {
            cfn.delete(&spec.name, &format!("{token}-delete")).await?;
            ctx.set_resource(failed_key, serde_json::Value::Null);
            Ok(StackProgress::InProgress {
                note: "DELETE_IN_PROGRESS".into(),
                after: ctx.poll_interval,
            })
        }
        // A failed update rolled back to the last good state: on an operator retry, update again.
        "UPDATE_ROLLBACK_COMPLETE" if retrying => {
            let name = format!("vend-{}", &hash[..16]);
            match through_change_set(ctx, &timer, pool, cfn, &spec, &name, &token).await? {
                // Still preparing: the failure stays recorded, so the next look comes back here.
                Some(StackProgress::InProgress { note, after }) if !note.starts_with("UPDATE") => {
                    Ok(StackProgress::InProgress { note, after })
                }
                Some(progress) => {
                    ctx.set_resource(failed_key, serde_json::Value::Null);
                    Ok(progress)
                }
                None => {
                    ctx.set_resource(failed_key, serde_json::Value::Null);
                    Ok(StackProgress::Ready(stack))
                }
            }
        }
        "ROLLBACK_COMPLETE"
        | "ROLLBACK_FAILED"
        | "CREATE_FAILED"
        | "UPDATE_ROLLBACK_COMPLETE"
        | "UPDATE_FAILED"
        | "UPDATE_ROLLBACK_FAILED"
        | "DELETE_FAILED" => {
            let why = cfn
                .first_failure(&stack.stack_id)
                .await
                .ok()
                .flatten()
                .or(stack.reason.clone())
                .unwrap_or_else(|| "no reason given".into());
            ctx.set_resource(failed_key, format!("{}:{status}", stack.stack_id));
            Err(StepError::permanent(
                "StackFailed",
                format!(
                    "stack {} is {status}: {why}; fix the cause, then retry",
                    spec.name
                ),
            ))
        }
        other => Err(StepError::transient(
            "StackState",
            format!("stack {} is in unexpected state {other}", spec.name),
        )),
    }
}
