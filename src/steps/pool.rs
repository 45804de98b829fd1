//! The pool workflow (free and pro tenants): no account of their own, a place in the shared pool.
//!
//! `prepare_pool` makes sure the pool exists and matches the configuration: its account
//! (`VEND_POOL_ACCOUNT_ID`, or one vend creates once, by the same rules as a tenant's: intent
//! recorded before the call, adopted only with the `vend:tenant=pool` tag vend gives it, `pool` being a
//! reserved slug), the pooled stack (templates/pool-stack.yaml), one usage plan per pool tier with the
//! limits of workflows/, and the wildcard custom domain `*.<base domain>` mapped to the pooled API.
//! One tenant at a time does this, under the pool row's lease; once the pool is ready for the current
//! configuration, the step is one database read.
//!
//! Then, per tenant: `issue_api_key` (a key tagged `vend:tenant=<slug>` on its tier's plan),
//! `register_tenant` (its item in the tenant table) and `route_domain` (its record in the central zone,
//! an alias of the pool's wildcard domain). The record is per tenant, not a DNS wildcard: a slug that
//! is no tenant does not resolve, and switching a tenant between the pool and its own account is one
//! change of its own record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::aws::Aws;
use crate::aws::acm::{Acm, CertState};
use crate::aws::apigateway::{ApiGateway, PlanLimits};
use crate::aws::classify::outcome_unknown;
use crate::aws::cloudformation::{Cfn, StackSpec};
use crate::aws::dynamodb::{CONDITION_FAILED, TenantTable};
use crate::aws::organizations::CreateState;
use crate::config::Certificates;
use crate::db;
use crate::domain::{Resource, StackKind, StepError, StepOutcome, Tier, TierLimits};
use crate::engine::{NamedStep, StepContext};

use super::Silo;
use super::create_account::{owned_account, still_in_flight};
use super::map_domain::point_record;
use super::stack::{StackProgress, converge};

/// The pool's stand-in slug: its account's e-mail and name, its tag, its STS session. Reserved, so
/// no tenant can have it.
pub const POOL_SLUG: &str = "pool";
pub const POOL_STACK: &str = "vend-pool";
/// How long one step may hold the pool's lease.
const LEASE: Duration = Duration::from_secs(300);
/// How soon a tenant that found the pool being prepared looks again.
const BUSY_LOOK: Duration = Duration::from_secs(5);

/// What the pool steps share: the silo's adapters and the pool tiers' limits.
pub struct PoolCtx {
    pub silo: Arc<Silo>,
    pub limits: BTreeMap<Tier, TierLimits>,
}

/// What vend knows of the pool (`pool.state`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PoolState {
    pub account_id: Option<String>,
    pub create_intent_at: Option<String>,
    pub create_request_id: Option<String>,
    pub api_id: Option<String>,
    pub stage: Option<String>,
    pub table: Option<String>,
    /// The usage plan of each pool tier.
    pub plans: BTreeMap<String, String>,
    pub certificate_arn: Option<String>,
    pub domain_target: Option<String>,
    pub domain_zone: Option<String>,
}

/// The wildcard custom domain every pool tenant's name resolves to.
pub fn wildcard_domain(silo: &Silo) -> String {
    format!("*.{}", silo.settings.base_domain)
}

fn plan_name(tier: Tier) -> String {
    format!("vend-pool-{}", tier.as_str())
}

fn key_name(slug: &str) -> String {
    format!("vend-tenant-{slug}")
}

fn plan_limits(l: &TierLimits) -> PlanLimits {
    PlanLimits {
        rate_limit: l.rate_limit,
        burst_limit: l.burst_limit,
        monthly_quota: l.monthly_quota,
    }
}

fn db_error(e: sqlx::Error) -> StepError {
    StepError::transient("DatabaseError", e.to_string())
}

/// The digest of everything the pool is made from: a change of any of it makes the next pool
/// tenant converge the pool again.
fn version(p: &PoolCtx) -> String {
    let mut h = Sha256::new();
    h.update(p.silo.templates.pool_stack.as_bytes());
    for (t, l) in &p.limits {
        h.update(format!(
            "\0{}={}/{}/{:?}",
            t.as_str(),
            l.rate_limit,
            l.burst_limit,
            l.monthly_quota
        ));
    }
    h.update(format!("\0{}", p.silo.settings.base_domain));
    if let Certificates::Shared(arn) = &p.silo.settings.certificates {
        h.update(format!("\0{arn}"));
    }
    h.update(format!("\0{:?}", p.silo.settings.pool_account_id));
    super::hex(&h.finalize())
}

async fn load(silo: &Silo) -> Result<(PoolState, Option<String>), StepError> {
    let row = db::pool::get(&silo.pool).await.map_err(db_error)?;
    let state = serde_json::from_value(row.state).unwrap_or_default();
    Ok((state, row.version))
}

async fn save(silo: &Silo, patch: serde_json::Value) -> Result<(), StepError> {
    db::pool::merge(&silo.pool, &patch).await.map_err(db_error)
}

/// The pool as the per-tenant steps need it: ready, with its account.
pub(crate) async fn ready_pool(silo: &Silo) -> Result<(PoolState, String), StepError> {
    let (state, _) = load(silo).await?;
    match state.account_id.clone() {
        Some(a) if state.api_id.is_some() && state.domain_target.is_some() => Ok((state, a)),
        _ => Err(StepError::permanent(
            "PoolNotReady",
            "the pool is not ready; requeue the tenant from prepare_pool",
        )),
    }
}

/// What vend knows of the pool, ready or not.
pub(crate) async fn load_pool(silo: &Silo) -> Result<PoolState, StepError> {
    Ok(load(silo).await?.0)
}

/// The pool account through its access role, as the tenant `slug`.
pub(crate) async fn pool_in(silo: &Silo, account: &str, slug: &str) -> Result<Aws, StepError> {
    pool_aws(silo, account, slug).await
}

/// The pool's wildcard domain target, once the pool has one: records pointing at it are vend's.
pub(crate) async fn pool_target(silo: &Silo) -> Result<Option<String>, StepError> {
    Ok(load(silo).await?.0.domain_target)
}

/// The pool account, seen through its access role.
async fn pool_aws(silo: &Silo, account: &str, as_slug: &str) -> Result<Aws, StepError> {
    Ok(silo.accounts.in_account(account, as_slug).await?)
}

pub struct PreparePool(pub Arc<PoolCtx>);

#[async_trait]
impl NamedStep for PreparePool {
    const KIND: &'static str = "prepare_pool";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        let p = &self.0;
        let want = version(p);
        let (_, have) = load(&p.silo).await?;
        if have.as_deref() == Some(want.as_str()) {
            return Ok(StepOutcome::Succeeded);
        }
        if !db::pool::claim(&p.silo.pool, ctx.tenant.id, LEASE)
            .await
            .map_err(db_error)?
        {
            return Ok(StepOutcome::Wait {
                after: BUSY_LOOK,
                note: "another tenant's step is preparing the pool".into(),
            });
        }
        let outcome = prepare(p, ctx, &want).await;
        db::pool::release(&p.silo.pool, ctx.tenant.id)
            .await
            .map_err(db_error)?;
        outcome
    }
}

async fn prepare(p: &PoolCtx, ctx: &mut StepContext, want: &str) -> Result<StepOutcome, StepError> {
    let silo = &p.silo;
    let (mut state, _) = load(silo).await?;
    let account = match pool_account(silo, &mut state).await? {
        Ok(a) => a,
        Err(note) => {
            return Ok(StepOutcome::Wait {
                after: ctx.poll_interval,
                note,
            });
        }
    };
    let aws = pool_aws(silo, &account, POOL_SLUG).await?;

    let spec = StackSpec {
        name: POOL_STACK.into(),
        template_body: silo.templates.pool_stack.clone(),
        parameters: vec![],
        role_arn: None,
        tags: vec![("vend:managed-by".into(), "vend".into())],
    };
    let stack = match converge(ctx, &silo.pool, &Cfn::new(&aws), spec, StackKind::Pool).await? {
        StackProgress::InProgress { note, after } => {
            return Ok(StepOutcome::Wait {
                after,
                note: format!("pool stack {note}"),
            });
        }
        StackProgress::Ready(s) => s,
    };
    let output = |k: &str| {
        stack.outputs.get(k).cloned().ok_or_else(|| {
            StepError::permanent(
                "StackOutputMissing",
                format!("the pool stack has no {k} output"),
            )
        })
    };
    let (api, stage) = (output("ApiId")?, output("StageName")?);
    state.api_id = Some(api.clone());
    state.stage = Some(stage.clone());
    state.table = Some(output("TableName")?);
    save(
        silo,
        json!({"api_id": api, "stage": stage, "table": state.table}),
    )
    .await?;

    let apigw = ApiGateway::new(&aws);
    for (tier, limits) in &p.limits {
        let id = usage_plan(&apigw, *tier, &plan_limits(limits), &api, &stage).await?;
        state.plans.insert(tier.as_str().to_owned(), id);
    }
    save(silo, json!({"plans": state.plans})).await?;

    let domain = wildcard_domain(silo);
    let target = match apigw.get_domain(&domain).await? {
        Some(t) => t,
        None => {
            let certificate = match &silo.settings.certificates {
                Certificates::Shared(arn) => arn.clone(),
                Certificates::PerAccount => {
                    match pool_certificate(silo, &aws, &mut state, &domain).await? {
                        Ok(arn) => arn,
                        Err(note) => {
                            return Ok(StepOutcome::Wait {
                                after: ctx.poll_interval,
                                note,
                            });
                        }
                    }
                }
            };
            apigw.create_domain(&domain, &certificate).await?
        }
    };
    apigw.ensure_root_mapping(&domain, &api, &stage).await?;
    save(
        silo,
        json!({"domain_target": target.regional_domain_name, "domain_zone": target.regional_hosted_zone_id}),
    )
    .await?;
    db::pool::set_version(&silo.pool, Some(want))
        .await
        .map_err(db_error)?;
    tracing::info!(pool.account = %account, "the pool is ready");
    Ok(StepOutcome::Succeeded)
}

/// The pool account: configured, recorded, or created once. `Err(note)` while AWS creates it.
async fn pool_account(
    silo: &Silo,
    state: &mut PoolState,
) -> Result<Result<String, String>, StepError> {
    if let Some(id) = &silo.settings.pool_account_id {
        if state.account_id.as_ref() != Some(id) {
            save(silo, json!({"account_id": id})).await?;
            state.account_id = Some(id.clone());
        }
        return Ok(Ok(id.clone()));
    }
    if let Some(id) = &state.account_id {
        return Ok(Ok(id.clone()));
    }
    let email = silo.settings.account_email(POOL_SLUG);
    let name = silo.settings.account_name(POOL_SLUG);
    if let Some(request) = state.create_request_id.clone() {
        let r = silo.orgs.describe_create_request(&request).await?;
        return match r.state {
            CreateState::Succeeded { account_id } => {
                created(silo, state, &account_id).await?;
                Ok(Ok(account_id))
            }
            CreateState::InProgress => Ok(Err(format!(
                "AWS is creating the pool account (request {request})"
            ))),
            CreateState::Failed { reason } => {
                let found = silo.orgs.find_accounts(&email, &name).await?;
                match owned_account(silo, POOL_SLUG, found.into_iter().map(|a| a.id)).await? {
                    Some(id) => {
                        created(silo, state, &id).await?;
                        Ok(Ok(id))
                    }
                    None => {
                        save(
                            silo,
                            json!({"create_request_id": null, "create_intent_at": null}),
                        )
                        .await?;
                        Err(StepError::permanent(
                            "PoolAccountFailed",
                            format!(
                                "creating the pool account failed: {reason}; retry to try again"
                            ),
                        ))
                    }
                }
            }
        };
    }
    if let Some(intent) = state.create_intent_at.clone() {
        let found = silo.orgs.find_accounts(&email, &name).await?;
        if let Some(id) = owned_account(silo, POOL_SLUG, found.into_iter().map(|a| a.id)).await? {
            created(silo, state, &id).await?;
            return Ok(Ok(id));
        }
        if let Some(r) = silo.orgs.find_create_request(&name).await? {
            save(silo, json!({"create_request_id": r.id})).await?;
            return Ok(Err("found the pool account's CreateAccount request".into()));
        }
        if still_in_flight(silo, &intent).is_some() {
            return Ok(Err(
                "an earlier CreateAccount for the pool may still be in flight; looking again before calling".into(),
            ));
        }
    } else {
        let indexed = db::org::accounts_matching(&silo.pool, &email, &name)
            .await
            .map_err(db_error)?;
        if let Some(id) =
            owned_account(silo, POOL_SLUG, indexed.into_iter().map(|a| a.account_id)).await?
        {
            created(silo, state, &id).await?;
            return Ok(Ok(id));
        }
    }
    save(silo, json!({"create_intent_at": Utc::now().to_rfc3339()})).await?;
    let tags = vec![
        (
            super::create_account::TENANT_TAG.to_owned(),
            POOL_SLUG.to_owned(),
        ),
        ("vend:role".to_owned(), "pool".to_owned()),
        ("vend:managed-by".to_owned(), "vend".to_owned()),
    ];
    match silo.orgs.create_account(&email, &name, &tags).await {
        Ok(r) => {
            save(silo, json!({"create_request_id": r.id})).await?;
            tracing::info!(request.id = %r.id, "CreateAccount requested for the pool");
            if let CreateState::Succeeded { account_id } = &r.state {
                created(silo, state, account_id).await?;
                return Ok(Ok(account_id.clone()));
            }
            Ok(Err(format!(
                "AWS is creating the pool account (request {})",
                r.id
            )))
        }
        Err(e) if !outcome_unknown(&e) => {
            save(silo, json!({"create_intent_at": null})).await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The account vend created for the pool exists: record it and move it under vend's guardrails.
async fn created(silo: &Silo, state: &mut PoolState, account: &str) -> Result<(), StepError> {
    let ou = &silo.management.tenant_ou_id;
    let parent = silo.orgs.parent_of(account).await?;
    if &parent != ou {
        silo.orgs.move_account(account, &parent, ou).await?;
    }
    save(silo, json!({"account_id": account})).await?;
    state.account_id = Some(account.to_owned());
    Ok(())
}

/// The tier's usage plan: vend's own (found by name and tag) brought to `limits`, or a new one. A
/// plan of that name that vend did not make is left alone and fails the step.
async fn usage_plan(
    apigw: &ApiGateway,
    tier: Tier,
    limits: &PlanLimits,
    api: &str,
    stage: &str,
) -> Result<String, StepError> {
    let name = plan_name(tier);
    let found = apigw.usage_plans_named(&name).await?;
    let ours = |p: &&crate::aws::apigateway::UsagePlan| {
        p.tags
            .iter()
            .any(|(k, v)| k == "vend:tier" && v == tier.as_str())
    };
    match found.iter().find(ours) {
        Some(p) => {
            if &p.limits != limits {
                apigw.set_plan_limits(&p.id, &p.limits, limits).await?;
            }
            Ok(p.id.clone())
        }
        None if !found.is_empty() => Err(StepError::permanent(
            "UsagePlanConflict",
            format!(
                "the pool account has a usage plan named {name} that vend did not make (no vend:tier tag); \
                 vend leaves it alone. Rename or remove it, then retry"
            ),
        )),
        None => Ok(apigw
            .create_usage_plan(
                &name,
                api,
                stage,
                limits,
                &[
                    ("vend:tier".into(), tier.as_str().into()),
                    ("vend:managed-by".into(), "vend".into()),
                ],
            )
            .await?),
    }
}

/// The pool account's certificate for the wildcard domain once issued; `Err(note)` meanwhile.
async fn pool_certificate(
    silo: &Silo,
    aws: &Aws,
    state: &mut PoolState,
    domain: &str,
) -> Result<Result<String, String>, StepError> {
    let acm = Acm::new(aws);
    let arn = match &state.certificate_arn {
        Some(arn) => arn.clone(),
        None => {
            let arn = match acm.find(domain).await? {
                Some(arn) => arn,
                None => {
                    let token = &super::hex(&Sha256::digest(format!("vend-pool|{domain}")))[..32];
                    acm.request(domain, token).await?
                }
            };
            save(silo, json!({"certificate_arn": arn})).await?;
            state.certificate_arn = Some(arn.clone());
            arn
        }
    };
    match acm.state(&arn).await? {
        Some(CertState::Issued) => Ok(Ok(arn)),
        Some(CertState::PendingValidation(Some((name, value)))) => {
            let zone = &silo.management.hosted_zone_id;
            let want = value.trim_end_matches('.');
            if silo.route53.target_of(zone, &name).await?.as_deref() != Some(want) {
                silo.route53
                    .upsert_cname(zone, &name, want, "vend: pool certificate validation")
                    .await?;
            }
            Ok(Err(format!(
                "the pool's certificate {arn}: pending DNS validation"
            )))
        }
        Some(CertState::PendingValidation(None)) => Ok(Err(format!(
            "the pool's certificate {arn}: waiting for ACM to name its validation record"
        ))),
        None => {
            save(silo, json!({"certificate_arn": null})).await?;
            state.certificate_arn = None;
            Ok(Err(
                "the pool's certificate is gone; requesting another".into()
            ))
        }
        Some(CertState::Unusable(why)) => Err(StepError::permanent(
            "CertificateUnusable",
            format!(
                "the pool's certificate {arn} will not be issued ({why}); delete it in the pool account and retry"
            ),
        )),
    }
}

/// What differs in AWS from the pool vend made, by read-only looks: the stack gone or failed, a
/// tier's usage plan gone or with other limits, the wildcard domain or its mapping gone. Empty when
/// the pool is as made, or there is no pool yet. `(true, _)` when a usage plan or the wildcard
/// domain is gone: every tenant's key must be put on the plan's replacement, or its record pointed at
/// the new domain.
pub async fn drift(
    p: &PoolCtx,
    state: &PoolState,
) -> Result<(bool, Vec<String>), crate::aws::AwsError> {
    let silo = &p.silo;
    let (Some(account), Some(api)) = (state.account_id.clone(), state.api_id.clone()) else {
        return Ok((false, Vec::new()));
    };
    let aws = silo.accounts.in_account(&account, POOL_SLUG).await?;
    let mut found = Vec::new();
    match Cfn::new(&aws).describe(POOL_STACK).await? {
        None => found.push(format!("the pool stack {POOL_STACK} is gone")),
        Some(s) if !s.status.ends_with("_COMPLETE") || s.status.contains("ROLLBACK") => {
            found.push(format!("the pool stack {POOL_STACK} is {}", s.status))
        }
        Some(_) => {}
    }
    let apigw = ApiGateway::new(&aws);
    let mut all_tenants = false;
    for (tier, limits) in &p.limits {
        let name = plan_name(*tier);
        let ours = apigw
            .usage_plans_named(&name)
            .await?
            .into_iter()
            .find(|pl| {
                pl.tags
                    .iter()
                    .any(|(k, v)| k == "vend:tier" && v == tier.as_str())
            });
        match ours {
            None => {
                all_tenants = true;
                found.push(format!("the usage plan {name} is gone"));
            }
            Some(pl) if pl.limits != plan_limits(limits) => found.push(format!(
                "the usage plan {name} has other limits than workflows/ gives the tier"
            )),
            Some(_) => {}
        }
    }
    let domain = wildcard_domain(silo);
    if apigw.get_domain(&domain).await?.is_none() {
        all_tenants = true;
        found.push(format!("the custom domain {domain} is gone"));
    } else if apigw
        .root_mapping(&domain)
        .await?
        .is_none_or(|m| m.rest_api_id != api)
    {
        found.push(format!(
            "the custom domain {domain} is not mapped to the pooled API"
        ));
    }
    Ok((all_tenants, found))
}

/// What vend knows of the pool (for the drift check).
pub async fn state(silo: &Silo) -> Result<PoolState, sqlx::Error> {
    Ok(serde_json::from_value(db::pool::get(&silo.pool).await?.state).unwrap_or_default())
}

/// Whether the pool was made ready from other inputs than `p`'s: its template, a tier's limits or
/// the domain changed since, so the next `prepare_pool` converges it.
pub async fn outdated(p: &PoolCtx) -> Result<bool, sqlx::Error> {
    let row = db::pool::get(&p.silo.pool).await?;
    let state: PoolState = serde_json::from_value(row.state).unwrap_or_default();
    Ok(state.account_id.is_some() && row.version.is_some_and(|v| v != version(p)))
}

/// The pool is to be made ready again by the next `prepare_pool`.
pub async fn unready(silo: &Silo) -> Result<(), sqlx::Error> {
    db::pool::set_version(&silo.pool, None).await
}

/// The tier the tenant is being moved to (a tier change in progress), else its own.
pub(crate) fn target_tier(ctx: &StepContext) -> Tier {
    ctx.resource_str(Resource::TierTo)
        .and_then(|t| Tier::parse(t).ok())
        .unwrap_or(ctx.tenant.tier)
}

pub struct IssueApiKey(pub Arc<PoolCtx>);

#[async_trait]
impl NamedStep for IssueApiKey {
    const KIND: &'static str = "issue_api_key";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        let silo = &self.0.silo;
        let (pool, account) = ready_pool(silo).await?;
        let slug = ctx.tenant.slug.clone();
        let tier = target_tier(ctx);
        let plan = pool.plans.get(tier.as_str()).cloned().ok_or_else(|| {
            StepError::permanent(
                "NoUsagePlan",
                format!(
                    "the pool has no usage plan for tier {}: give it [limits.{}] in the pool workflow",
                    tier.as_str(),
                    tier.as_str()
                ),
            )
        })?;
        let apigw = ApiGateway::new(&pool_aws(silo, &account, &slug).await?);
        let recorded = ctx.resource_str(Resource::PoolApiKeyId).map(str::to_owned);
        // A recorded key someone deleted is made again (drift repair reruns this step for that).
        let recorded = match recorded {
            Some(k) if apigw.api_key_exists(&k).await? => Some(k),
            _ => None,
        };
        let key = match recorded {
            Some(k) => k,
            None => {
                let name = key_name(&slug);
                let found = apigw.api_keys_named(&name).await?;
                let ours = found.iter().find(|k| {
                    k.tags
                        .iter()
                        .any(|(t, v)| t == super::create_account::TENANT_TAG && v == &slug)
                });
                let id = match ours {
                    Some(k) => k.id.clone(),
                    None if !found.is_empty() => {
                        return Err(StepError::permanent(
                            "ApiKeyConflict",
                            format!(
                                "the pool account has an API key named {name} without the tag \
                                 vend:tenant={slug}; vend leaves it alone. Remove it, then retry"
                            ),
                        ));
                    }
                    None => {
                        apigw
                            .create_api_key(
                                &name,
                                &[
                                    (super::create_account::TENANT_TAG.into(), slug.clone()),
                                    ("vend:managed-by".into(), "vend".into()),
                                ],
                            )
                            .await?
                    }
                };
                ctx.save_resource(Resource::PoolApiKeyId, id.clone())
                    .await?;
                id
            }
        };
        // A key may be on one plan per API stage: off the other tier's plan first, then on its own.
        // Between the two, for a moment, its requests are refused: a pro <-> free move costs that.
        let vend_plans: Vec<&String> = pool.plans.values().collect();
        for other in apigw.plans_of_key(&key).await? {
            if other.id != plan && vend_plans.contains(&&other.id) {
                apigw.remove_key_from_plan(&other.id, &key).await?;
            }
        }
        apigw.add_key_to_plan(&plan, &key).await?;
        ctx.set_resource(Resource::PoolPlanTier, tier.as_str());
        Ok(StepOutcome::Succeeded)
    }
}

pub struct RegisterTenant(pub Arc<PoolCtx>);

#[async_trait]
impl NamedStep for RegisterTenant {
    const KIND: &'static str = "register_tenant";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        let silo = &self.0.silo;
        let (pool, account) = ready_pool(silo).await?;
        let slug = ctx.tenant.slug.clone();
        let key = ctx
            .resource_str(Resource::PoolApiKeyId)
            .map(str::to_owned)
            .ok_or_else(|| {
                StepError::permanent(
                    "NoApiKey",
                    "no API key recorded; requeue from issue_api_key",
                )
            })?;
        let table = TenantTable::new(
            &pool_aws(silo, &account, &slug).await?,
            pool.table.as_deref().unwrap_or("vend-pool-tenants"),
        );
        let tier = target_tier(ctx);
        match table
            .register(&slug, &ctx.tenant.id.to_string(), tier.as_str(), &key)
            .await
        {
            Ok(()) => Ok(StepOutcome::Succeeded),
            Err(e) if e.code == CONDITION_FAILED => Err(StepError::permanent(
                "SlugTaken",
                format!(
                    "the pool's tenant table has {slug} registered for another tenant; vend leaves it alone"
                ),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

pub struct RouteDomain(pub Arc<PoolCtx>);

#[async_trait]
impl NamedStep for RouteDomain {
    const KIND: &'static str = "route_domain";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        let silo = &self.0.silo;
        let (pool, _) = ready_pool(silo).await?;
        let target = pool.domain_target.clone().unwrap_or_default();
        let zone = pool.domain_zone.clone().unwrap_or_default();
        let domain = silo.settings.tenant_domain(&ctx.tenant.slug);
        // The record may point at the tenant's own account (a downgrade): vend's, so repointed.
        let previous: Vec<String> = ctx
            .resource_str(Resource::DomainTarget)
            .map(str::to_owned)
            .into_iter()
            .collect();
        point_record(silo, &domain, &target, &zone, &previous).await?;
        // Recorded once the record points here (a crash before would find it so and keep it).
        ctx.set_resource(Resource::DomainTarget, target.clone());
        ctx.set_resource(Resource::DomainName, domain.clone());
        ctx.set_resource(Resource::Endpoint, format!("https://{domain}"));
        Ok(StepOutcome::Succeeded)
    }
}

/// The step kinds of the pool workflow, in order (workflows/pool.toml).
pub const POOL_KINDS: [&str; 4] = [
    PreparePool::KIND,
    IssueApiKey::KIND,
    RegisterTenant::KIND,
    RouteDomain::KIND,
];
