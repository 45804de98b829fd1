//! Drift: every active tenant is checked at least once per `VEND_DRIFT_INTERVAL` against what the
//! contract says its AWS side is (the account under the tenant OU, which carries vend's SCPs; the
//! tenant's record pointing at its domain; the custom domain and its mapping; the baseline and tenant
//! stacks complete, not rolled back and without CloudFormation drift; the account's tags). What
//! differs is an open finding until a check no longer sees it. With `VEND_DRIFT_REPAIR=auto` vend repairs what is its own to repair: it
//! moves the tenant's account back, re-attaches its SCPs, tags the account again, or requeues the step
//! that makes the missing piece (which never takes over what someone else made, e.g. a record
//! pointing elsewhere stays a finding). A pool tenant has no account: its place in the pool is
//! checked instead (its record pointing at the pool, its API key on its tier's plan, its item in the
//! tenant table), and the shared pool itself once per interval.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::aws::AwsError;
use crate::aws::apigateway::ApiGateway;
use crate::aws::cloudformation::Cfn;
use crate::db;
use crate::db::tenants::Tenant;
use crate::domain::{Resource, Workflows};
use crate::reconcile::SCP_PREFIX;
use crate::steps::Silo;

/// What a check saw of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub domain: String,
    pub tenant_ou: String,
    /// The account's parent.
    pub parent: String,
    /// vend's SCPs (id, name) not attached to the tenant OU.
    pub missing_scps: Vec<(String, String)>,
    /// The tags vend puts on the tenant's account (key, value) that it does not carry, or carries
    /// with another value.
    pub missing_tags: Vec<(String, String)>,
    /// Where `<slug>.<base domain>` points in the central zone, if anywhere.
    pub record: Option<String>,
    /// The tenant's domain target as vend recorded it.
    pub domain_target: Option<String>,
    pub domain_exists: bool,
    pub mappings: usize,
    /// The tenant stack's status, if it exists.
    pub stack_status: Option<String>,
    /// The baseline stack's status, if it exists.
    pub baseline_status: Option<String>,
    /// What CloudFormation's last drift detection found on the tenant and the baseline stack.
    pub stack_drift: Option<String>,
    pub baseline_drift: Option<String>,
    /// The version of the template each stack runs and the one vend deployed, when both are known
    /// and no run of the tenant is changing the stacks.
    pub stack_template: Option<(String, String)>,
    pub baseline_template: Option<(String, String)>,
}

/// How vend repairs a finding, if it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// Move the account from this parent back into the tenant OU.
    MoveBack {
        from: String,
    },
    AttachScp {
        id: String,
    },
    /// Tag the tenant's account with these again.
    Tag {
        tags: Vec<(String, String)>,
    },
    /// Run the tenant's workflow again from this step.
    Requeue(&'static str),
    /// Not vend's to change: report only.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub resource: String,
    pub detail: String,
    pub repair: Repair,
}

/// The findings in what a check saw.
pub fn findings(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |resource: String, detail: String, repair: Repair| {
        out.push(Finding {
            resource,
            detail,
            repair,
        })
    };
    if f.parent != f.tenant_ou {
        add(
            "account.parent".into(),
            format!(
                "the account is under {}, not the tenant OU {}",
                f.parent, f.tenant_ou
            ),
            Repair::MoveBack {
                from: f.parent.clone(),
            },
        );
    }
    for (id, name) in &f.missing_scps {
        add(
            format!("ou.scp:{name}"),
            format!("the SCP {name} ({id}) is not attached to the tenant OU"),
            Repair::AttachScp { id: id.clone() },
        );
    }
    if !f.missing_tags.is_empty() {
        let list: Vec<String> = f
            .missing_tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        add(
            "account.tags".into(),
            format!("the account lacks the tags {}", list.join(", ")),
            Repair::Tag {
                tags: f.missing_tags.clone(),
            },
        );
    }
    match (&f.record, &f.domain_target) {
        (None, _) => add(
            "dns.record".into(),
            format!("no record {} in the central zone", f.domain),
            Repair::Requeue("map_domain"),
        ),
        (Some(r), Some(t)) if !same_name(r, t) => add(
            "dns.record".into(),
            format!(
                "{} points at {r}, not at the tenant's domain {t}; vend does not change a record \
                 it did not make",
                f.domain
            ),
            Repair::None,
        ),
        _ => {}
    }
    if !f.domain_exists {
        add(
            "apigateway.domain".into(),
            format!("no custom domain {} in the tenant account", f.domain),
            Repair::Requeue("map_domain"),
        );
    } else if f.mappings == 0 {
        add(
            "apigateway.mapping".into(),
            format!("the custom domain {} maps to no API", f.domain),
            Repair::Requeue("map_domain"),
        );
    }
    for (resource, stack, status, step) in [
        (
            "stack.baseline",
            "baseline",
            &f.baseline_status,
            "bootstrap_baseline",
        ),
        ("stack", "tenant", &f.stack_status, "deploy_stack"),
    ] {
        match status.as_deref() {
            None => add(
                resource.into(),
                format!("no {stack} stack in the tenant account"),
                Repair::Requeue(step),
            ),
            Some(s) if !s.ends_with("_COMPLETE") || s.contains("ROLLBACK") => add(
                resource.into(),
                format!("the {stack} stack is {s}"),
                Repair::Requeue(step),
            ),
            _ => {}
        }
    }
    for (resource, stack, template, step) in [
        (
            "stack.baseline.template",
            "baseline",
            &f.baseline_template,
            "bootstrap_baseline",
        ),
        (
            "stack.template",
            "tenant",
            &f.stack_template,
            "deploy_stack",
        ),
    ] {
        if let Some((running, deployed)) = template
            && running != deployed
        {
            add(
                resource.into(),
                format!(
                    "the {stack} stack runs a template vend did not deploy (version {running}; \
                     vend deployed {deployed})"
                ),
                Repair::Requeue(step),
            );
        }
    }
    // Changes made behind CloudFormation's back: a stack update with the same template would not
    // undo them (CloudFormation compares templates, not resources), and they are someone's doing.
    for (resource, stack, drift) in [
        ("stack.baseline.drift", "baseline", &f.baseline_drift),
        ("stack.drift", "tenant", &f.stack_drift),
    ] {
        if drift.as_deref() == Some("DRIFTED") {
            add(
                resource.into(),
                format!(
                    "the {stack} stack's resources differ from its template (CloudFormation drift \
                     detection); revert the change, or put it in the template and roll that out"
                ),
                Repair::None,
            );
        }
    }
    out
}

/// What a check saw of one pool tenant (free or pro: a place in the shared pool, no account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFacts {
    pub domain: String,
    /// Where `<slug>.<base domain>` points in the central zone, if anywhere.
    pub record: Option<String>,
    /// The pool's wildcard domain target, which the record is to point at.
    pub pool_target: String,
    /// Where vend last pointed the record (the pool's target then).
    pub recorded_target: Option<String>,
    pub tier: String,
    /// The tenant's API key as vend recorded it, and whether it still exists.
    pub key_id: String,
    pub key_exists: bool,
    /// Whether the key is on its tier's usage plan.
    pub on_plan: bool,
    /// The tenant id in the pool's tenant table under the slug (`None`: no item); `Err` when the
    /// table itself is gone.
    pub registered: Result<Option<String>, String>,
    pub tenant_id: String,
}

/// The findings in what a check saw of a pool tenant.
pub fn pool_findings(f: &PoolFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |resource: &str, detail: String, repair: Repair| {
        out.push(Finding {
            resource: resource.into(),
            detail,
            repair,
        })
    };
    match &f.record {
        None => add(
            "dns.record",
            format!("no record {} in the central zone", f.domain),
            Repair::Requeue("route_domain"),
        ),
        Some(r) if same_name(r, &f.pool_target) => {}
        // vend's own record, left at a wildcard domain the pool had before (one made again).
        Some(r)
            if f.recorded_target
                .as_deref()
                .is_some_and(|t| same_name(r, t)) =>
        {
            add(
                "dns.record",
                format!(
                    "{} points at {r}, the pool's former domain, not at its domain {}",
                    f.domain, f.pool_target
                ),
                Repair::Requeue("route_domain"),
            )
        }
        Some(r) => add(
            "dns.record",
            format!(
                "{} points at {r}, not at the pool's domain {}; vend does not change a record it \
                 did not make",
                f.domain, f.pool_target
            ),
            Repair::None,
        ),
    }
    if !f.key_exists {
        add(
            "apigateway.api_key",
            format!(
                "the tenant's API key {} is gone from the pool account",
                f.key_id
            ),
            Repair::Requeue("issue_api_key"),
        );
    } else if !f.on_plan {
        add(
            "apigateway.usage_plan",
            format!(
                "the tenant's API key {} is not on the {} usage plan",
                f.key_id, f.tier
            ),
            Repair::Requeue("issue_api_key"),
        );
    }
    match &f.registered {
        Ok(None) => add(
            "dynamodb.tenant",
            "the pool's tenant table has no item for the tenant".into(),
            Repair::Requeue("register_tenant"),
        ),
        Ok(Some(id)) if *id != f.tenant_id => add(
            "dynamodb.tenant",
            format!(
                "the pool's tenant table has the slug registered for another tenant ({id}); vend \
                 leaves it alone"
            ),
            Repair::None,
        ),
        Ok(Some(_)) => {}
        Err(table) => add(
            "dynamodb.table",
            format!(
                "the pool's tenant table {table} is gone (deleted outside CloudFormation); update \
                 the pool stack to make it again"
            ),
            Repair::None,
        ),
    }
    out
}

/// Two DNS names are the same whatever their case and trailing dot.
fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// The steps drift may rerun, in their workflow's order (the silo's, then the pool's; a tenant runs
/// one of the two).
const REQUEUE_ORDER: [&str; 6] = [
    "bootstrap_baseline",
    "deploy_stack",
    "map_domain",
    "issue_api_key",
    "register_tenant",
    "route_domain",
];

/// The periodic checker.
pub struct DriftChecker {
    pub silo: Arc<Silo>,
    pub workflows: Arc<Workflows>,
    pub interval: Duration,
    pub repair: bool,
}

/// Tenants checked per round of the loop.
const BATCH: i64 = 20;

impl DriftChecker {
    /// Checks due tenants until shutdown, a batch at a time; idle, it looks again every tenth of the
    /// interval (at most every minute).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let idle = (self.interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        if let Err(e) = self.converge_pool().await {
            tracing::warn!(error = %e, "cannot look whether the pool is current; the drift check will");
        }
        loop {
            // Drift checks spend only the spare AWS budget: vending tenants come first.
            let pause = match crate::aws::limiter::in_background(self.check_due(BATCH)).await {
                Ok(n) if n as i64 == BATCH => Duration::ZERO,
                Ok(_) => idle,
                Err(e) => {
                    tracing::warn!(error = %e, "drift check failed; will try again");
                    idle
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Checks up to `limit` tenants that are due; returns how many.
    pub async fn check_due(&self, limit: i64) -> Result<usize, sqlx::Error> {
        if db::org::claim_periodic(&self.silo.pool, "pool-drift", self.interval).await? {
            self.converge_pool().await?;
            self.check_pool().await?;
        }
        let due = db::drift::claim_due(&self.silo.pool, self.interval, limit).await?;
        let pool = crate::steps::pool_state(&self.silo).await?;
        for tenant in &due {
            let found = match self.look(tenant, &pool).await {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    // AWS did not answer: no conclusion about this tenant this time.
                    tracing::warn!(tenant.slug = %tenant.slug, error = %e, "drift check incomplete");
                    db::drift::recheck_soon(&self.silo.pool, tenant.id).await?;
                    continue;
                }
            };
            let mut repaired = Vec::new();
            if self.repair && !found.is_empty() {
                repaired = self.repair(tenant, &found).await?;
            }
            if !found.is_empty() {
                tracing::warn!(tenant.slug = %tenant.slug, findings = found.len(), repaired = repaired.len(), "drift found");
            }
            let list: Vec<(String, String)> = found
                .iter()
                .map(|f| (f.resource.clone(), f.detail.clone()))
                .collect();
            let opened = db::drift::record(&self.silo.pool, tenant.id, &list, &repaired).await?;
            if !opened.is_empty() {
                let detail: Vec<serde_json::Value> = found
                    .iter()
                    .filter(|f| opened.contains(&f.resource))
                    .map(|f| serde_json::json!({"resource": f.resource, "detail": f.detail}))
                    .collect();
                let payload = crate::domain::events::payload(
                    &tenant.for_event(),
                    None,
                    serde_json::json!({"findings": detail, "repair": self.repair}),
                );
                db::outbox::report(
                    &self.silo.pool,
                    tenant.id,
                    crate::domain::EventType::DriftDetected,
                    &payload,
                )
                .await?;
            }
        }
        Ok(due.len())
    }

    fn pool_ctx(&self) -> crate::steps::PoolCtx {
        crate::steps::PoolCtx {
            silo: self.silo.clone(),
            limits: self.workflows.limits(),
        }
    }

    /// When the pool was made from another template, other tier limits or another domain than
    /// this vend runs with, requeues a pool tenant from `prepare_pool`, which converges the pool (a
    /// change in `workflows/` or `templates/` is applied like a changed SCP file, repair mode or
    /// not). Returns whether one was requeued.
    pub async fn converge_pool(&self) -> Result<bool, sqlx::Error> {
        if !crate::steps::pool_outdated(&self.pool_ctx()).await? {
            return Ok(false);
        }
        tracing::info!("the pool's template, tier limits or domain changed; converging the pool");
        self.requeue_pool_tenants(false, "config").await
    }

    /// Checks the shared pool (its stack, usage plans and wildcard domain) and returns what drifted.
    /// Drift makes the next `prepare_pool` converge the pool again; with repair on, a pool tenant is
    /// requeued from `prepare_pool` for that (every active one when a usage plan or the wildcard
    /// domain is gone, so that their keys join the new plan and their records point at the new
    /// domain; one beyond the bulk limit is found by its own check).
    pub async fn check_pool(&self) -> Result<Vec<String>, sqlx::Error> {
        let s = &self.silo;
        let ctx = self.pool_ctx();
        let state = crate::steps::pool_state(s).await?;
        let (all_tenants, found) = match crate::steps::pool_drift(&ctx, &state).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "pool drift check incomplete");
                return Ok(Vec::new());
            }
        };
        if found.is_empty() {
            return Ok(found);
        }
        tracing::warn!(findings = ?found, repair = self.repair, "the pool drifted");
        crate::steps::pool_unready(s).await?;
        if self.repair {
            self.requeue_pool_tenants(all_tenants, "drift").await?;
        }
        Ok(found)
    }

    /// Requeues active pool tenants from `prepare_pool`, newest first: one (the first that can be:
    /// one mid-change is skipped), or with `all` every one up to the bulk limit.
    async fn requeue_pool_tenants(&self, all: bool, actor: &str) -> Result<bool, sqlx::Error> {
        use crate::lifecycle::operator::{BULK_LIMIT, Requeued, requeue};
        let workflow = self.workflows.for_tier(crate::domain::Tier::Free);
        if workflow.step("prepare_pool").is_none() {
            // No tier is served by the pool (any more): nothing would converge it.
            return Ok(false);
        }
        let workflow = &workflow.name;
        let mut any = false;
        for slug in db::pool::active_tenants(&self.silo.pool, workflow, BULK_LIMIT).await? {
            let r = requeue(
                &self.silo.pool,
                &self.workflows,
                &slug,
                "prepare_pool",
                actor,
            )
            .await?;
            any |= matches!(r, Requeued::Done);
            if any && !all {
                break;
            }
        }
        Ok(any)
    }

    /// What is amiss with one tenant: `None` when it is not checked now (between tiers, or not made
    /// by either workflow).
    async fn look(
        &self,
        tenant: &Tenant,
        pool: &crate::steps::PoolState,
    ) -> Result<Option<Vec<Finding>>, AwsError> {
        // A tenant between tiers is held to neither home until the change is over.
        let moving = tenant
            .resources
            .get(Resource::TierTo.key())
            .is_some_and(|v| v.is_string());
        if moving {
            return Ok(None);
        }
        let steps = &self.workflows.for_tier(tenant.tier).steps;
        if steps.iter().any(|st| st.kind == "map_domain") {
            return Ok(self.facts(tenant).await?.map(|f| findings(&f)));
        }
        if steps.iter().any(|st| st.kind == "route_domain") {
            return Ok(self
                .pool_facts(tenant, pool)
                .await?
                .map(|f| pool_findings(&f)));
        }
        Ok(None)
    }

    /// What a pool tenant's place in the pool looks like: four reads (its record, its key, the
    /// key's plans, its table item).
    async fn pool_facts(
        &self,
        tenant: &Tenant,
        state: &crate::steps::PoolState,
    ) -> Result<Option<PoolFacts>, AwsError> {
        let s = &self.silo;
        let Some(key_id) = tenant
            .resources
            .get(Resource::PoolApiKeyId.key())
            .and_then(|v| v.as_str())
            .map(str::to_owned)
        else {
            return Ok(None);
        };
        let (Some(account), Some(pool_target)) =
            (state.account_id.clone(), state.domain_target.clone())
        else {
            return Ok(None);
        };
        let domain = s.settings.tenant_domain(&tenant.slug);
        let record = s
            .route53
            .target_of(&s.management.hosted_zone_id, &domain)
            .await?;
        let aws = s
            .accounts
            .in_account(&account, crate::steps::POOL_SLUG)
            .await?;
        let apigw = ApiGateway::new(&aws);
        let key_exists = apigw.api_key_exists(&key_id).await?;
        let on_plan = match state.plans.get(tenant.tier.as_str()) {
            // A plan missing from the pool is the pool's drift, found and repaired there.
            None => true,
            Some(plan) => {
                !key_exists
                    || apigw
                        .plans_of_key(&key_id)
                        .await?
                        .iter()
                        .any(|p| &p.id == plan)
            }
        };
        let table = state
            .table
            .clone()
            .unwrap_or_else(|| "vend-pool-tenants".into());
        let registered = match crate::aws::dynamodb::TenantTable::new(&aws, &table)
            .get(&tenant.slug)
            .await
        {
            Ok(item) => Ok(item.map(|(id, _)| id)),
            Err(e) if e.code == "ResourceNotFoundException" => Err(table),
            Err(e) => return Err(e),
        };
        Ok(Some(PoolFacts {
            domain,
            record,
            pool_target,
            recorded_target: tenant.known_resources().domain_target,
            tier: tenant.tier.as_str().to_owned(),
            key_id,
            key_exists,
            on_plan,
            registered,
            tenant_id: tenant.id.to_string(),
        }))
    }

    async fn facts(&self, tenant: &Tenant) -> Result<Option<Facts>, AwsError> {
        let s = &self.silo;
        let Some(account) = tenant.account_id().map(str::to_owned) else {
            return Ok(None);
        };
        let domain = s.settings.tenant_domain(&tenant.slug);
        let ou = s.management.tenant_ou_id.clone();
        let parent = s.orgs.parent_of(&account).await?;
        let attached = s.orgs.scps_attached_to(&ou).await?;
        let mut missing_scps = Vec::new();
        for p in s.orgs.list_scps().await? {
            if !p.name.starts_with(SCP_PREFIX) || attached.contains(&p.id) {
                continue;
            }
            // Only vend's own policies (tagged at creation) are its to re-attach, whatever their name.
            if crate::aws::organizations::managed_by_vend(s.orgs.as_ref(), &p.id).await? {
                missing_scps.push((p.id, p.name));
            }
        }
        let tags = s.orgs.tags_of(&account).await?;
        let missing_tags = s
            .account_tags(&tenant.slug, tenant.tier.as_str())
            .into_iter()
            .filter(|want| !tags.contains(want))
            .collect();
        let record = s
            .route53
            .target_of(&s.management.hosted_zone_id, &domain)
            .await?;
        let aws =
            crate::steps::tenant_region_aws(s, &account, &tenant.slug, tenant.region()).await?;
        let apigw = ApiGateway::new(&aws);
        let domain_exists = apigw.get_domain(&domain).await?.is_some();
        let mappings = if domain_exists {
            apigw.mapping_count(&domain).await?
        } else {
            0
        };
        let cfn = Cfn::new(&aws);
        let stack = cfn.describe(crate::steps::TENANT_STACK).await?;
        let baseline = cfn.describe(crate::steps::BASELINE_STACK).await?;
        // The detection started now is read by the next check. One that cannot start (one already
        // running, throttled, or an emulator without it) costs this check nothing.
        for (name, info) in [
            (crate::steps::TENANT_STACK, &stack),
            (crate::steps::BASELINE_STACK, &baseline),
        ] {
            if info
                .as_ref()
                .is_some_and(|i| i.status.ends_with("_COMPLETE"))
                && let Err(e) = cfn.detect_drift(name).await
            {
                tracing::debug!(tenant.slug = %tenant.slug, stack = name, error = %e, "drift detection not started");
            }
        }
        // A run in flight (a rollout, a requeue) may be changing a stack: its template is compared
        // when the run is over.
        let settled = match db::tenants::current_run(&s.pool, tenant.id).await {
            Ok(run) => run.is_none_or(|r| r.state != crate::domain::RunState::Running),
            Err(_) => false,
        };
        let recorded = tenant.known_resources();
        let mut templates = Vec::new();
        for (name, info, deployed) in [
            (
                crate::steps::TENANT_STACK,
                &stack,
                recorded.tenant_stack_version.clone(),
            ),
            (
                crate::steps::BASELINE_STACK,
                &baseline,
                recorded.baseline_stack_version.clone(),
            ),
        ] {
            let complete = info
                .as_ref()
                .is_some_and(|i| i.status.ends_with("_COMPLETE"));
            templates.push(match deployed {
                Some(deployed) if settled && complete => cfn
                    .template(name)
                    .await?
                    .map(|t| (crate::lifecycle::rollout::version(&t), deployed)),
                _ => None,
            });
        }
        let baseline_template = templates.pop().flatten();
        let stack_template = templates.pop().flatten();
        let (stack_status, stack_drift) = stack.map_or((None, None), |s| (Some(s.status), s.drift));
        let (baseline_status, baseline_drift) =
            baseline.map_or((None, None), |s| (Some(s.status), s.drift));
        Ok(Some(Facts {
            domain,
            tenant_ou: ou,
            parent,
            missing_scps,
            missing_tags,
            record,
            domain_target: tenant.known_resources().domain_target,
            domain_exists,
            mappings,
            stack_status,
            baseline_status,
            stack_drift,
            baseline_drift,
            stack_template,
            baseline_template,
        }))
    }

    /// Starts the repairs vend may make; returns the resources it started a repair for.
    async fn repair(&self, tenant: &Tenant, found: &[Finding]) -> Result<Vec<String>, sqlx::Error> {
        let s = &self.silo;
        let tenant_ou = &s.management.tenant_ou_id;
        let mut repaired = Vec::new();
        let mut requeue_from: Option<&'static str> = None;
        for f in found {
            let done = match &f.repair {
                Repair::MoveBack { from } => match tenant.account_id() {
                    Some(account) => s
                        .orgs
                        .move_account(account, from, tenant_ou)
                        .await
                        .map_err(|e| tracing::warn!(error = %e, "drift repair: move failed"))
                        .is_ok(),
                    None => false,
                },
                Repair::AttachScp { id } => s
                    .orgs
                    .attach_scp(id, tenant_ou)
                    .await
                    .map_err(|e| tracing::warn!(error = %e, "drift repair: attach failed"))
                    .is_ok(),
                Repair::Tag { tags } => match tenant.account_id() {
                    Some(account) => s
                        .orgs
                        .tag_account(account, tags)
                        .await
                        .map_err(|e| tracing::warn!(error = %e, "drift repair: tagging failed"))
                        .is_ok(),
                    None => false,
                },
                Repair::Requeue(step) => {
                    // The earliest step wins: a rerun from it redoes every later one.
                    let at = |s: &str| REQUEUE_ORDER.iter().position(|x| *x == s);
                    requeue_from = Some(match requeue_from {
                        Some(earlier) if at(earlier) <= at(step) => earlier,
                        _ => step,
                    });
                    true
                }
                Repair::None => false,
            };
            if done {
                repaired.push(f.resource.clone());
            }
        }
        if let Some(step) = requeue_from {
            let r = crate::lifecycle::operator::requeue(
                &s.pool,
                &self.workflows,
                &tenant.slug,
                step,
                "drift",
            )
            .await?;
            if !matches!(r, crate::lifecycle::operator::Requeued::Done) {
                tracing::warn!(tenant.slug = %tenant.slug, step, outcome = ?r, "drift repair: requeue refused");
                repaired.retain(|res| {
                    !res.starts_with("dns.")
                        && !res.starts_with("apigateway.")
                        && !res.starts_with("dynamodb.")
                        && !res.starts_with("stack")
                });
            }
        }
        if !repaired.is_empty() {
            // Look again at the next sweep, not an interval later: that closes what was repaired.
            db::drift::recheck_soon(&s.pool, tenant.id).await?;
        }
        Ok(repaired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Facts {
        Facts {
            domain: "acme.t.example".into(),
            tenant_ou: "ou-1".into(),
            parent: "ou-1".into(),
            missing_scps: vec![],
            missing_tags: vec![],
            record: Some("d-1.execute-api.us-east-1.amazonaws.com".into()),
            domain_target: Some("d-1.execute-api.us-east-1.amazonaws.com.".into()),
            domain_exists: true,
            mappings: 1,
            stack_status: Some("UPDATE_COMPLETE".into()),
            baseline_status: Some("CREATE_COMPLETE".into()),
            stack_drift: Some("IN_SYNC".into()),
            baseline_drift: Some("NOT_CHECKED".into()),
            stack_template: Some(("0a1b2c".into(), "0a1b2c".into())),
            baseline_template: None,
        }
    }

    #[test]
    fn a_healthy_tenant_has_no_findings() {
        assert_eq!(findings(&healthy()), vec![]);
    }

    #[test]
    fn each_kind_of_drift_is_found_with_its_repair() {
        let mut f = healthy();
        f.parent = "r-root".into();
        f.missing_scps = vec![("p-1".into(), "vend-deny-leave".into())];
        f.missing_tags = vec![("vend:tenant".into(), "acme".into())];
        f.record = None;
        f.mappings = 0;
        f.stack_status = Some("UPDATE_ROLLBACK_COMPLETE".into());
        f.baseline_status = None;
        f.stack_drift = Some("DRIFTED".into());
        f.stack_template = Some(("ffffff".into(), "0a1b2c".into()));
        let found = findings(&f);
        let by: Vec<(&str, &Repair)> = found
            .iter()
            .map(|x| (x.resource.as_str(), &x.repair))
            .collect();
        assert_eq!(
            by,
            vec![
                (
                    "account.parent",
                    &Repair::MoveBack {
                        from: "r-root".into()
                    }
                ),
                (
                    "ou.scp:vend-deny-leave",
                    &Repair::AttachScp { id: "p-1".into() }
                ),
                (
                    "account.tags",
                    &Repair::Tag {
                        tags: vec![("vend:tenant".into(), "acme".into())]
                    }
                ),
                ("dns.record", &Repair::Requeue("map_domain")),
                ("apigateway.mapping", &Repair::Requeue("map_domain")),
                ("stack.baseline", &Repair::Requeue("bootstrap_baseline")),
                ("stack", &Repair::Requeue("deploy_stack")),
                ("stack.template", &Repair::Requeue("deploy_stack")),
                ("stack.drift", &Repair::None),
            ]
        );
    }

    #[test]
    fn a_record_pointing_elsewhere_is_reported_never_repaired() {
        let mut f = healthy();
        f.record = Some("www.example.org".into());
        let found = findings(&f);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].repair, Repair::None);
        f.domain_exists = false;
        assert_eq!(findings(&f)[1].resource, "apigateway.domain");
    }

    fn healthy_pool() -> PoolFacts {
        PoolFacts {
            domain: "freddy.t.example".into(),
            record: Some("d-9.execute-api.us-east-1.amazonaws.com".into()),
            pool_target: "D-9.execute-api.us-east-1.amazonaws.com.".into(),
            recorded_target: Some("d-9.execute-api.us-east-1.amazonaws.com".into()),
            tier: "free".into(),
            key_id: "k1".into(),
            key_exists: true,
            on_plan: true,
            registered: Ok(Some("t-1".into())),
            tenant_id: "t-1".into(),
        }
    }

    fn resources_and_repairs(found: &[Finding]) -> Vec<(&str, &Repair)> {
        found
            .iter()
            .map(|x| (x.resource.as_str(), &x.repair))
            .collect()
    }

    #[test]
    fn a_pool_tenant_in_place_has_no_findings() {
        assert_eq!(pool_findings(&healthy_pool()), vec![]);
    }

    #[test]
    fn a_pool_tenant_missing_pieces_is_repaired_by_the_step_that_makes_them() {
        let mut f = healthy_pool();
        f.record = None;
        f.on_plan = false;
        f.registered = Ok(None);
        assert_eq!(
            resources_and_repairs(&pool_findings(&f)),
            vec![
                ("dns.record", &Repair::Requeue("route_domain")),
                ("apigateway.usage_plan", &Repair::Requeue("issue_api_key")),
                ("dynamodb.tenant", &Repair::Requeue("register_tenant")),
            ]
        );
        // A key that is gone is one finding, whatever plan it was on.
        f.key_exists = false;
        assert_eq!(pool_findings(&f)[1].resource, "apigateway.api_key");
        assert_eq!(pool_findings(&f).len(), 3);
    }

    #[test]
    fn what_a_pool_tenant_shares_with_others_is_reported_never_taken_over() {
        let mut f = healthy_pool();
        f.record = Some("www.example.org".into());
        f.registered = Ok(Some("t-2".into()));
        let found = pool_findings(&f);
        assert_eq!(
            resources_and_repairs(&found),
            vec![
                ("dns.record", &Repair::None),
                ("dynamodb.tenant", &Repair::None)
            ]
        );
        // vend's record left at the pool's former domain is vend's to repoint.
        f.recorded_target = Some("www.example.org".into());
        assert_eq!(pool_findings(&f)[0].repair, Repair::Requeue("route_domain"));
        f.registered = Err("vend-pool-tenants".into());
        let found = pool_findings(&f);
        assert_eq!(found[1].resource, "dynamodb.table");
        assert_eq!(found[1].repair, Repair::None);
    }
}
