//! `map_domain`: the regional custom domain `<slug>.<base domain>` in the tenant account, mapped to the
//! tenant's API, and an alias record for it in the central hosted zone. Each piece is looked up before
//! it is made: API Gateway silently replaces a domain created twice, and allows one creation per 30 s.
//!
//! With per-account certificates the domain waits for its own: requested in the tenant account (found
//! again by name, or returned again for the same idempotency token, if an attempt ended before
//! recording it), its DNS validation record put in the central zone, and a durable wait until ACM
//! issues it (minutes on AWS).

use std::sync::Arc;

use async_trait::async_trait;

use crate::aws::Aws;
use crate::aws::acm::{Acm, CertState};
use crate::aws::apigateway::ApiGateway;
use crate::aws::route53::{ChangeAction, RECORD_EXISTS};
use crate::config::Certificates;
use crate::domain::Resource;
use crate::domain::{StepError, StepOutcome};
use crate::engine::{NamedStep, StepContext};

use super::timing::Timed;
use super::{Silo, account_id};

pub struct MapDomain(pub Arc<Silo>);

/// How a certificate's validation is timed: from its request to ACM's `ISSUED`.
const CERTIFICATE: Timed<'static> = Timed {
    kind: "certificate",
    started_key: Resource::CertificateRequestedAt,
    seen_key: Resource::CertificateSeenPendingS,
};

#[async_trait]
impl NamedStep for MapDomain {
    const KIND: &'static str = "map_domain";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        run(&self.0, ctx).await
    }
}

async fn run(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let account = account_id(ctx)?;
    let missing = |k: &str| {
        StepError::permanent(
            "NoApi",
            format!("no {k} recorded; requeue from deploy_stack"),
        )
    };
    let api_id = ctx
        .resource_str(Resource::ApiId)
        .map(str::to_owned)
        .ok_or_else(|| missing("api_id"))?;
    let stage = ctx
        .resource_str(Resource::ApiStage)
        .map(str::to_owned)
        .ok_or_else(|| missing("api_stage"))?;
    let domain = silo.settings.tenant_domain(&ctx.tenant.slug);

    let aws = super::in_tenant_region(silo, ctx, &account).await?;
    let apigw = ApiGateway::new(&aws);
    let target = match apigw.get_domain(&domain).await? {
        Some(t) => t,
        None => {
            let certificate = match &silo.settings.certificates {
                Certificates::Shared(arn) => arn.clone(),
                Certificates::PerAccount => {
                    match issued_certificate(silo, ctx, &aws, &domain).await? {
                        Ok(arn) => {
                            CERTIFICATE.finished(&silo.pool, ctx).await?;
                            arn
                        }
                        Err(note) => {
                            let expected = CERTIFICATE.expected(&silo.pool).await?;
                            let (after, timing) = CERTIFICATE.unfinished(ctx, expected);
                            return Ok(StepOutcome::Wait {
                                after,
                                note: format!("{note} ({timing})"),
                            });
                        }
                    }
                }
            };
            apigw.create_domain(&domain, &certificate).await?
        }
    };
    // The target this tenant's record was pointed at before (a domain since recreated has a new one).
    let previous = ctx.resource_str(Resource::DomainTarget).map(str::to_owned);
    ctx.save_resource(Resource::DomainName, domain.clone())
        .await?;
    ctx.save_resource(Resource::DomainTarget, target.regional_domain_name.clone())
        .await?;

    apigw.ensure_root_mapping(&domain, &api_id, &stage).await?;

    // The record may point at the pool (an upgrade): vend's own target for this name, so repointed.
    let mut own: Vec<String> = previous.into_iter().collect();
    own.extend(super::pool::pool_target(silo).await?);
    point_record(
        silo,
        &domain,
        &target.regional_domain_name,
        &target.regional_hosted_zone_id,
        &own,
    )
    .await?;
    ctx.set_resource(Resource::Endpoint, format!("https://{domain}"));
    Ok(StepOutcome::Succeeded)
}

/// Points the tenant's record `domain` in the central zone at `target` (an API Gateway domain in
/// `target_zone`), creating it, or repointing it from one of `own` (targets vend pointed it at for
/// this tenant); a record pointing anywhere else is refused and left alone.
pub(crate) async fn point_record(
    silo: &Silo,
    domain: &str,
    target: &str,
    target_zone: &str,
    own: &[String],
) -> Result<(), StepError> {
    let zone = &silo.management.hosted_zone_id;
    let current = silo.route53.target_of(zone, domain).await?;
    let action = match record_action(current.as_deref(), target, own) {
        RecordAction::Keep => None,
        RecordAction::Create => Some(ChangeAction::Create),
        RecordAction::Replace => Some(ChangeAction::Upsert),
        RecordAction::Refuse(other) => return Err(record_conflict(domain, &other)),
    };
    let Some(action) = action else {
        return Ok(());
    };
    match silo
        .route53
        .set_target(action, zone, domain, target, target_zone)
        .await
    {
        Ok(_) => Ok(()),
        // The name appeared between the look and the CREATE: this step's own earlier CREATE
        // whose answer was lost, or someone else's record. Only a look tells which.
        Err(e) if e.code == RECORD_EXISTS => {
            let now = silo.route53.target_of(zone, domain).await?;
            match record_action(now.as_deref(), target, &[]) {
                RecordAction::Keep => Ok(()),
                _ => Err(record_conflict(
                    domain,
                    now.as_deref().unwrap_or("a record of another type"),
                )),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// What to do with the tenant's record in the central zone.
#[derive(Debug, PartialEq, Eq)]
enum RecordAction {
    /// It points at the tenant's domain already.
    Keep,
    /// There is none: create it (a CREATE, which AWS refuses if one appears meanwhile).
    Create,
    /// It points at the tenant's own earlier target: repoint it.
    Replace,
    /// It points somewhere vend did not point it for this tenant: leave it.
    Refuse(String),
}

fn record_action(current: Option<&str>, target: &str, own: &[String]) -> RecordAction {
    let same = |a: &str, b: &str| {
        a.trim_end_matches('.')
            .eq_ignore_ascii_case(b.trim_end_matches('.'))
    };
    match current {
        None => RecordAction::Create,
        Some(c) if same(c, target) => RecordAction::Keep,
        Some(c) if own.iter().any(|p| same(c, p)) => RecordAction::Replace,
        Some(c) => RecordAction::Refuse(c.to_owned()),
    }
}

fn record_conflict(domain: &str, points_at: &str) -> StepError {
    tracing::warn!(
        record = domain,
        "the tenant's name is taken in the central zone; leaving the record alone"
    );
    StepError::permanent(
        "RecordConflict",
        format!(
            "the record {domain} already exists in the central zone and points at {points_at}, which is \
             not this tenant's domain; vend leaves it unchanged. Remove it (or pick another slug), then retry"
        ),
    )
}

/// The tenant account's own certificate for `domain` once ACM has issued it; `Err(note)` while it is
/// being validated. Requests it if the account has none, and keeps its validation record in the zone.
async fn issued_certificate(
    silo: &Silo,
    ctx: &mut StepContext,
    aws: &Aws,
    domain: &str,
) -> Result<Result<String, String>, StepError> {
    let acm = Acm::new(aws);
    let recorded = ctx
        .resource_str(Resource::CertificateArn)
        .map(str::to_owned);
    let known = match &recorded {
        // Gone if a person deleted it (to replace a failed one): then another one is found or requested.
        Some(arn) => acm.state(arn).await?.map(|state| (arn.clone(), state)),
        None => None,
    };
    let (arn, state) = match known {
        Some(known) => known,
        None => {
            let arn = match acm.find(domain).await? {
                Some(arn) => arn,
                None => {
                    let token = idempotency_token(ctx.tenant.id, recorded.as_deref());
                    let arn = acm.request(domain, &token).await?;
                    CERTIFICATE.start(ctx);
                    arn
                }
            };
            // Recorded once ACM shows it, not before: a certificate not visible yet would read as
            // deleted on the next attempt and be replaced. Until it is recorded, a retry finds it by
            // name or gets it again for the same token.
            let state = acm.state(&arn).await?.ok_or_else(|| {
                StepError::transient(
                    "CertificateNotVisible",
                    format!("ACM does not show the certificate {arn} it just returned yet"),
                )
            })?;
            ctx.save_resource(Resource::CertificateArn, arn.clone())
                .await?;
            (arn, state)
        }
    };
    match state {
        CertState::Issued => Ok(Ok(arn)),
        CertState::PendingValidation(None) => Ok(Err(format!(
            "certificate {arn}: waiting for ACM to name its DNS validation record"
        ))),
        CertState::PendingValidation(Some((name, value))) => {
            let zone = &silo.management.hosted_zone_id;
            let want = value.trim_end_matches('.');
            if silo.route53.target_of(zone, &name).await?.as_deref() != Some(want) {
                // Left in place afterwards: ACM renews the certificate by finding it again.
                silo.route53
                    .upsert_cname(zone, &name, want, "vend: certificate validation")
                    .await?;
            }
            Ok(Err(format!("certificate {arn}: pending DNS validation")))
        }
        CertState::Unusable(why) => Err(StepError::permanent(
            "CertificateUnusable",
            format!(
                "the tenant's certificate {arn} will not be issued ({why}); delete it in the tenant \
                 account and requeue from map_domain"
            ),
        )),
    }
}

/// ACM's idempotency token (at most 32 word characters) for the tenant's certificate that replaces
/// `replacing` (`None` for its first). A repeat of the request within the hour ACM remembers a token
/// returns the same certificate; replacing a deleted one must not be answered with the deleted one.
fn idempotency_token(tenant: uuid::Uuid, replacing: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update(replacing.unwrap_or("").as_bytes());
    super::hex(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::{RecordAction, idempotency_token, record_action};

    #[test]
    fn a_record_is_created_kept_or_repointed_only_when_it_is_the_tenants() {
        let t = "d-new.execute-api.us-east-1.amazonaws.com";
        let old = ["d-old.x".to_owned(), "d-pool.y".to_owned()];
        assert_eq!(record_action(None, t, &[]), RecordAction::Create);
        assert_eq!(record_action(Some(t), t, &[]), RecordAction::Keep);
        assert_eq!(
            record_action(Some("D-NEW.execute-api.us-east-1.amazonaws.com."), t, &[]),
            RecordAction::Keep
        );
        assert_eq!(
            record_action(Some("d-old.x"), t, &old),
            RecordAction::Replace
        );
        assert_eq!(
            record_action(Some("d-pool.y."), t, &old),
            RecordAction::Replace
        );
        assert_eq!(
            record_action(Some("www.saas.example"), t, &[]),
            RecordAction::Refuse("www.saas.example".into())
        );
        assert_eq!(
            record_action(Some("192.0.2.1"), t, &old),
            RecordAction::Refuse("192.0.2.1".into())
        );
    }

    #[test]
    fn idempotency_tokens_fit_acm_and_change_only_with_what_they_replace() {
        let tenant = uuid::Uuid::now_v7();
        let first = idempotency_token(tenant, None);
        assert_eq!(first.len(), 32);
        assert!(first.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(first, idempotency_token(tenant, None));
        assert_ne!(first, idempotency_token(tenant, Some("arn:aws:acm:x")));
        assert_ne!(first, idempotency_token(uuid::Uuid::now_v7(), None));
    }
}
