//! The tenant account's day-2 settings, applied by `bootstrap_baseline` once the baseline stack is up
//! and again by a baseline rollout (which is how existing tenants get new settings): alternate
//! contacts, the ops group's Identity Center access, the tenant's region enabled if it is an opt-in
//! one, default VPCs removed, and the service quotas the account needs requested.
//!
//! Each part records what it did with the tenant, so a rerun repeats only what is not yet done, and
//! each part is idempotent on its own (AWS is asked before anything is changed), so a crash between
//! a call and its record repeats nothing harmful.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::aws::Aws;
use crate::aws::account::{Account, RegionState};
use crate::aws::ec2::{Ec2, OptIn, VpcFate};
use crate::aws::service_quotas::{OpenRequest, ServiceQuotas};
use crate::config::QuotaRequest;
use crate::domain::{Resource, StepError, StepOutcome};
use crate::engine::StepContext;

use super::Silo;

/// Default VPCs are removed in this many regions at once, under EC2's rate budget.
const VPC_REGIONS_AT_ONCE: usize = 4;

/// Applies every setting in order; `Some(wait)` while one of them waits on AWS (the tenant's region
/// being enabled, Identity Center assigning access).
pub(crate) async fn apply(
    silo: &Silo,
    ctx: &mut StepContext,
    inside: &Aws,
    account: &str,
) -> Result<Option<StepOutcome>, StepError> {
    set_alternate_contacts(silo, ctx, inside).await?;
    if let Some(wait) = assign_access(silo, ctx, account).await? {
        return Ok(Some(wait));
    }
    if let Some(wait) = enable_region(ctx, inside).await? {
        return Ok(Some(wait));
    }
    remove_default_vpcs(silo, ctx, inside).await?;
    request_quotas(silo, ctx, account).await?;
    Ok(None)
}

/// Sets the configured alternate contacts on the account, unless these very contacts were set by an
/// earlier run (a digest of them is kept with the tenant). Each call overwrites one contact, so a
/// rerun after a crash half-way repeats them harmlessly. Contacts removed from the configuration are
/// left on the account: vend does not delete what it cannot tell it set.
async fn set_alternate_contacts(
    silo: &Silo,
    ctx: &mut StepContext,
    inside: &Aws,
) -> Result<(), StepError> {
    let contacts = &silo.settings.alternate_contacts;
    if contacts.is_empty() {
        return Ok(());
    }
    let digest = contacts_digest(contacts);
    if ctx.resource_str(Resource::AlternateContacts) == Some(digest.as_str()) {
        return Ok(());
    }
    let account = Account::new(inside);
    for c in contacts {
        account.put_alternate_contact(c).await?;
    }
    ctx.set_resource(Resource::AlternateContacts, digest);
    Ok(())
}

fn contacts_digest(contacts: &[crate::config::AlternateContact]) -> String {
    digest(contacts.iter().flat_map(|c| {
        [
            c.kind.as_str().to_owned(),
            c.name.clone(),
            c.title.clone(),
            c.email.clone(),
            c.phone.clone(),
        ]
    }))
}

/// The first 16 hex digits of a SHA-256 over `parts`, each ended by a NUL.
fn digest(parts: impl IntoIterator<Item = String>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    super::hex(&h.finalize())[..16].to_owned()
}

/// Assigns the configured permission set to the ops group on the account, once: an assignment that
/// exists (made by an earlier attempt whose answer was lost, or by hand) is taken as done. Identity
/// Center makes it asynchronously: `Some(wait)` until it shows.
async fn assign_access(
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
                    after: Duration::from_secs(5),
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

/// What to do about the tenant's region, from what the account says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RegionNext {
    Ready,
    Enable,
    Wait(&'static str),
}

fn region_next(state: RegionState) -> RegionNext {
    match state {
        RegionState::Enabled => RegionNext::Ready,
        RegionState::Disabled => RegionNext::Enable,
        RegionState::Enabling => RegionNext::Wait("AWS is enabling"),
        RegionState::Disabling => RegionNext::Wait("AWS is still disabling"),
    }
}

/// Enables the tenant's region for the account when it is an opt-in region the account has not
/// enabled (stacks cannot be made there before), and waits until AWS has. EC2 is asked first: it
/// knows every region's opt-in status, so a region that needs no opt-in costs one call.
async fn enable_region(ctx: &StepContext, inside: &Aws) -> Result<Option<StepOutcome>, StepError> {
    let region = match ctx.resource_str(Resource::Region) {
        Some(r) => r.to_owned(),
        None => return Ok(None),
    };
    match Ec2::new(inside).opt_in(&region).await? {
        Some(OptIn::NotRequired | OptIn::OptedIn) => return Ok(None),
        Some(OptIn::NotOptedIn) => {}
        None => {
            return Err(StepError::permanent(
                "UnknownRegion",
                format!("the tenant's region {region} is not a region this account knows"),
            ));
        }
    }
    let account = Account::new(inside);
    let wait = match region_next(account.region_state(&region).await?) {
        RegionNext::Ready => return Ok(None),
        RegionNext::Enable => {
            account.enable_region(&region).await?;
            "AWS is enabling"
        }
        RegionNext::Wait(what) => what,
    };
    Ok(Some(StepOutcome::Wait {
        // Enabling takes minutes, sometimes hours; asking every half minute costs nothing.
        after: Duration::from_secs(30),
        note: format!("{wait} the opt-in region {region} for the account"),
    }))
}

/// Removes the default VPC of every region enabled for the account (`VEND_DEFAULT_VPCS=remove`),
/// keeping any that something uses. Regions are swept a few at once, each call with patient retries;
/// the record (`default_vpcs`) lists the regions still to sweep, and is committed with every attempt's
/// outcome, failed ones included, so a throttle in one region repeats only that region's sweep.
async fn remove_default_vpcs(
    silo: &Silo,
    ctx: &mut StepContext,
    inside: &Aws,
) -> Result<(), StepError> {
    if !silo.settings.remove_default_vpcs {
        return Ok(());
    }
    let mut sweep = match ctx.resource(Resource::DefaultVpcs) {
        Some(r) => VpcSweep::from_record(r),
        None => VpcSweep::new(Ec2::new(inside).enabled_regions().await?),
    };
    if sweep.remaining.is_empty() {
        if ctx.resource(Resource::DefaultVpcs).is_none() {
            ctx.set_resource(Resource::DefaultVpcs, sweep.record());
        }
        return Ok(());
    }
    let patient = inside.patient();
    let swept: Vec<(String, Result<Fates, StepError>)> =
        futures::stream::iter(sweep.remaining.clone().into_iter().map(|region| {
            let aws = patient.in_region(&region);
            async move {
                let ec2 = Ec2::new(&aws);
                let fates = async {
                    let mut fates = Vec::new();
                    for vpc in ec2.default_vpcs().await? {
                        let fate = ec2.remove_default_vpc(&vpc).await?;
                        fates.push((format!("{region}:{vpc}"), fate));
                    }
                    Ok::<_, StepError>(fates)
                }
                .await;
                (region, fates)
            }
        }))
        .buffer_unordered(VPC_REGIONS_AT_ONCE)
        .collect()
        .await;
    let mut first_error = None;
    for (region, fates) in swept {
        match fates {
            Ok(fates) => sweep.done(&region, fates),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let kept = sweep.kept.clone();
    ctx.set_resource(Resource::DefaultVpcs, sweep.record());
    if let Some(e) = first_error {
        return Err(e);
    }
    if !kept.is_empty() {
        tracing::warn!(tenant = %ctx.tenant.slug, kept = ?kept, "default VPCs in use were kept");
    }
    Ok(())
}

/// What became of a region's default VPCs, each named `region:vpc`.
type Fates = Vec<(String, VpcFate)>;

/// Where the default VPC sweep of an account stands: the regions still to sweep, the VPCs removed
/// (`region:vpc`) and those kept with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct VpcSweep {
    remaining: Vec<String>,
    removed: Vec<String>,
    kept: std::collections::BTreeMap<String, String>,
}

impl VpcSweep {
    fn new(mut regions: Vec<String>) -> Self {
        regions.sort();
        regions.dedup();
        Self {
            remaining: regions,
            ..Self::default()
        }
    }

    /// A record as written by [`VpcSweep::record`]; one without `remaining` is a finished sweep.
    fn from_record(v: &Value) -> Self {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            remaining: strings(&v["remaining"]),
            removed: strings(&v["removed"]),
            kept: v["kept"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn done(&mut self, region: &str, fates: Fates) {
        self.remaining.retain(|r| r != region);
        for (vpc, fate) in fates {
            match fate {
                VpcFate::Removed => self.removed.push(vpc),
                VpcFate::Kept(why) => {
                    self.kept.insert(vpc, why);
                }
            }
        }
        self.removed.sort();
        self.removed.dedup();
    }

    /// `{"removed": [...], "kept": {...}}`, with `"remaining": [...]` while regions are left.
    fn record(&self) -> Value {
        let mut v = json!({"removed": self.removed, "kept": self.kept});
        if !self.remaining.is_empty() {
            v["remaining"] = json!(self.remaining);
        }
        v
    }
}

/// What became of one configured quota.
#[derive(Debug, Clone, PartialEq)]
enum QuotaFate {
    /// The account already has at least the value.
    Met(f64),
    /// A request is open with AWS (vend's, or one made before).
    Requested(OpenRequest),
}

/// Whether a quota needs a request, from its current value.
fn quota_met(current: Option<f64>, want: &QuotaRequest) -> Result<Option<f64>, StepError> {
    match current {
        None => Err(StepError::permanent(
            "UnknownServiceQuota",
            format!(
                "VEND_SERVICE_QUOTAS: {} has no quota {} in this region",
                want.service, want.quota
            ),
        )),
        Some(v) if v >= want.value => Ok(Some(v)),
        Some(_) => Ok(None),
    }
}

/// Requests the configured quota values the account lacks (in the tenant's region), once: an open
/// request for a quota (an earlier attempt's whose answer was lost) is taken as the request. The
/// outcome is recorded with a digest of the configuration, so only a changed configuration asks again.
async fn request_quotas(
    silo: &Silo,
    ctx: &mut StepContext,
    account: &str,
) -> Result<(), StepError> {
    let quotas = &silo.settings.service_quotas;
    if quotas.is_empty() {
        return Ok(());
    }
    let digest = digest(
        quotas
            .iter()
            .flat_map(|q| [q.service.clone(), q.quota.clone(), q.value.to_string()]),
    );
    let recorded = ctx.resource(Resource::ServiceQuotas);
    if recorded.and_then(|r| r["digest"].as_str()) == Some(digest.as_str()) {
        return Ok(());
    }
    // The account in the tenant's region is reached only when there is something to ask there.
    let in_region = super::in_tenant_region(silo, ctx, account).await?;
    let sq = ServiceQuotas::new(&in_region);
    let mut outcomes = Vec::new();
    for q in quotas {
        let fate = match quota_met(sq.value(&q.service, &q.quota).await?, q)? {
            Some(v) => QuotaFate::Met(v),
            None => match sq.open_request(&q.service, &q.quota).await? {
                Some(open) => QuotaFate::Requested(open),
                None => {
                    let id = match sq.request(&q.service, &q.quota, q.value).await {
                        Ok(id) => id,
                        // Another request went in since the look (a concurrent hand): that one stands.
                        Err(e) if e.code == "ResourceAlreadyExistsException" => sq
                            .open_request(&q.service, &q.quota)
                            .await?
                            .map(|o| o.id)
                            .unwrap_or_default(),
                        Err(e) => return Err(e.into()),
                    };
                    QuotaFate::Requested(OpenRequest {
                        id,
                        desired: q.value,
                    })
                }
            },
        };
        outcomes.push(quota_outcome(q, &fate));
    }
    ctx.set_resource(
        Resource::ServiceQuotas,
        json!({"digest": digest, "region": in_region.sdk.region().map(|r| r.to_string()), "quotas": outcomes}),
    );
    Ok(())
}

fn quota_outcome(q: &QuotaRequest, fate: &QuotaFate) -> Value {
    let mut v = json!({"service": q.service, "quota": q.quota, "value": q.value});
    match fate {
        QuotaFate::Met(current) => {
            v["outcome"] = "met".into();
            v["current"] = (*current).into();
        }
        QuotaFate::Requested(open) => {
            v["outcome"] = "requested".into();
            v["request_id"] = open.id.clone().into();
            v["requested"] = open.desired.into();
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(value: f64) -> QuotaRequest {
        QuotaRequest {
            service: "lambda".into(),
            quota: "L-B99A9384".into(),
            value,
        }
    }

    #[test]
    fn a_quota_is_requested_only_below_the_value_and_never_for_an_unknown_quota() {
        assert_eq!(
            quota_met(Some(1000.0), &quota(1000.0)).unwrap(),
            Some(1000.0)
        );
        assert_eq!(
            quota_met(Some(3000.0), &quota(1000.0)).unwrap(),
            Some(3000.0)
        );
        assert_eq!(quota_met(Some(10.0), &quota(1000.0)).unwrap(), None);
        let e = quota_met(None, &quota(1000.0)).unwrap_err();
        assert_eq!(e.code, "UnknownServiceQuota");
        assert!(e.message.contains("L-B99A9384"), "{}", e.message);
    }

    #[test]
    fn quota_outcomes_say_what_was_found_or_asked() {
        let met = quota_outcome(&quota(1000.0), &QuotaFate::Met(1500.0));
        assert_eq!(met["outcome"], "met");
        assert_eq!(met["current"], 1500.0);
        let asked = quota_outcome(
            &quota(1000.0),
            &QuotaFate::Requested(OpenRequest {
                id: "req-1".into(),
                desired: 800.0,
            }),
        );
        assert_eq!(
            (asked["outcome"].as_str(), asked["request_id"].as_str()),
            (Some("requested"), Some("req-1"))
        );
        // An earlier request for less is what stands; the record says so.
        assert_eq!(asked["requested"], 800.0);
        assert_eq!(asked["value"], 1000.0);
    }

    #[test]
    fn an_opt_in_region_is_enabled_once_and_waited_for() {
        assert_eq!(region_next(RegionState::Enabled), RegionNext::Ready);
        assert_eq!(region_next(RegionState::Disabled), RegionNext::Enable);
        assert!(matches!(
            region_next(RegionState::Enabling),
            RegionNext::Wait(_)
        ));
        // Enabling while AWS disables would be refused: wait for it to finish first.
        assert!(matches!(
            region_next(RegionState::Disabling),
            RegionNext::Wait(_)
        ));
    }

    #[test]
    fn a_vpc_sweep_remembers_the_regions_left_and_what_went_and_why_the_rest_stayed() {
        let mut sweep = VpcSweep::new(vec![
            "us-west-2".into(),
            "eu-west-1".into(),
            "us-east-1".into(),
        ]);
        sweep.done(
            "us-west-2",
            vec![("us-west-2:vpc-2".into(), VpcFate::Removed)],
        );
        sweep.done(
            "eu-west-1",
            vec![(
                "eu-west-1:vpc-3".into(),
                VpcFate::Kept("2 network interface(s) attached".into()),
            )],
        );
        let r = sweep.record();
        assert_eq!(r["remaining"], json!(["us-east-1"]));
        assert_eq!(r["removed"], json!(["us-west-2:vpc-2"]));
        assert_eq!(
            r["kept"]["eu-west-1:vpc-3"],
            "2 network interface(s) attached"
        );
        // A later attempt picks up from the record, and a finished sweep has nothing left.
        let mut again = VpcSweep::from_record(&r);
        assert_eq!(again, sweep);
        again.done(
            "us-east-1",
            vec![("us-east-1:vpc-1".into(), VpcFate::Removed)],
        );
        let r = again.record();
        assert!(r.get("remaining").is_none(), "{r}");
        assert_eq!(r["removed"], json!(["us-east-1:vpc-1", "us-west-2:vpc-2"]));
        assert!(VpcSweep::from_record(&r).remaining.is_empty());
    }

    #[test]
    fn digests_change_with_any_part_and_with_where_parts_split() {
        let d = |parts: &[&str]| digest(parts.iter().map(|s| s.to_string()));
        assert_eq!(d(&["a", "b"]), d(&["a", "b"]));
        assert_ne!(d(&["a", "b"]), d(&["a", "c"]));
        assert_ne!(d(&["ab", ""]), d(&["a", "b"]));
        assert_eq!(d(&["a"]).len(), 16);
    }
}
