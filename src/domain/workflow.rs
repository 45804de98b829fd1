//! Workflows: declarative step lists with a retry policy per step, loaded from `workflows/*.toml` and
//! validated before anything runs. Which workflow a tier gets is declared there too, not in code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::events::EventType;
use super::retry::{Jitter, RetryPolicy};
use super::step::StepRules;
use super::tenant::{TenantState, Tier};

#[derive(Debug, Clone, PartialEq)]
pub struct StepDef {
    pub name: String,
    /// Which implementation runs the step (several steps may share a kind).
    pub kind: String,
    pub rules: StepRules,
    /// The interval between polls for steps that wait on AWS, if the step polls.
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    pub name: String,
    pub purpose: Purpose,
    pub tiers: Vec<Tier>,
    pub steps: Vec<StepDef>,
    /// The API limits of the tiers this workflow serves in the shared pool (`[limits.<tier>]`).
    pub limits: BTreeMap<Tier, TierLimits>,
    /// The tier changes a `tier` workflow makes: every tier of `from` to every other of `to`.
    pub changes: Vec<(Tier, Tier)>,
}

/// A pool tier's API limits: its usage plan's throttle and monthly quota.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// Steady-state requests per second.
    pub rate_limit: f64,
    /// The most requests at once above the rate.
    pub burst_limit: i32,
    /// Requests per calendar month; none means no quota.
    pub monthly_quota: Option<i32>,
}

impl TierLimits {
    fn validate(&self) -> Result<(), String> {
        if !(self.rate_limit.is_finite() && self.rate_limit > 0.0) {
            return Err(format!("rate_limit = {} must be above 0", self.rate_limit));
        }
        if self.burst_limit < 1 {
            return Err(format!(
                "burst_limit = {} must be at least 1",
                self.burst_limit
            ));
        }
        if self.monthly_quota.is_some_and(|q| q < 1) {
            return Err("monthly_quota must be at least 1 (leave it out for none)".into());
        }
        Ok(())
    }
}

/// What a run of a workflow does to its tenant: the state the tenant is in while it runs, the state
/// and event its last step's success brings, and what a failed step makes of the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// Builds the tenant's home (silo, pool): `provisioning` → `active`, a failure → `failed`.
    #[default]
    Provision,
    /// Takes it down: `offboarding` → `closed`; a failed step leaves the tenant `offboarding`.
    Offboard,
    /// Changes a live tenant (a fleet rollout): the tenant stays `active` throughout, failed or not.
    Update,
    /// Moves a live tenant to another tier (`from` → `to`): it stays `active` and served where it was
    /// until its new home takes over; a failed step leaves it so.
    Tier,
}

impl Purpose {
    pub fn running_state(self) -> TenantState {
        match self {
            Purpose::Provision => TenantState::Provisioning,
            Purpose::Offboard => TenantState::Offboarding,
            Purpose::Update | Purpose::Tier => TenantState::Active,
        }
    }

    pub fn done_state(self) -> TenantState {
        match self {
            Purpose::Provision | Purpose::Update | Purpose::Tier => TenantState::Active,
            Purpose::Offboard => TenantState::Closed,
        }
    }

    pub fn done_event(self) -> EventType {
        match self {
            Purpose::Provision => EventType::TenantActive,
            Purpose::Offboard => EventType::TenantClosed,
            Purpose::Update => EventType::StackUpdated,
            Purpose::Tier => EventType::TierChangeCompleted,
        }
    }

    /// The tenant's state once a step has failed for good.
    pub fn failed_state(self) -> TenantState {
        match self {
            Purpose::Provision => TenantState::Failed,
            // The account may be half torn down: the tenant stays visibly offboarding until ops retry.
            Purpose::Offboard => TenantState::Offboarding,
            // The old stack keeps serving (CloudFormation rolled the update back): still active.
            // A tier change switches the endpoint in one step: before it, the old home serves.
            Purpose::Update | Purpose::Tier => TenantState::Active,
        }
    }
}

impl Workflow {
    pub fn step(&self, name: &str) -> Option<(usize, &StepDef)> {
        self.steps.iter().enumerate().find(|(_, s)| s.name == name)
    }
}

/// Every workflow, and which one each tier gets.
#[derive(Debug, Clone)]
pub struct Workflows {
    by_name: BTreeMap<String, Workflow>,
    by_tier: BTreeMap<&'static str, String>,
    by_change: BTreeMap<(Tier, Tier), String>,
    offboard: Option<String>,
    update: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("cannot read workflow directory {}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read workflow file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("workflow file {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("workflows: {0}")]
    Set(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    name: String,
    #[serde(default)]
    purpose: Purpose,
    #[serde(default)]
    tiers: Vec<String>,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    limits: BTreeMap<String, TierLimits>,
    #[serde(default)]
    from: Vec<String>,
    #[serde(default)]
    to: Vec<String>,
    steps: Vec<StepFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Defaults {
    #[serde(default)]
    retry: RetryFile,
    poll_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    kind: Option<String>,
    poll_interval: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    retry: RetryFile,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    initial_interval: Option<String>,
    backoff_coefficient: Option<f64>,
    maximum_interval: Option<String>,
    maximum_attempts: Option<u32>,
    jitter: Option<Jitter>,
    non_retryable_errors: Option<Vec<String>>,
}

impl RetryFile {
    /// `self` over `base`, field by field.
    fn over(&self, base: &RetryPolicy) -> Result<RetryPolicy, String> {
        Ok(RetryPolicy {
            initial_interval: opt_duration(&self.initial_interval, "initial_interval")?
                .unwrap_or(base.initial_interval),
            backoff_coefficient: self.backoff_coefficient.unwrap_or(base.backoff_coefficient),
            maximum_interval: opt_duration(&self.maximum_interval, "maximum_interval")?
                .unwrap_or(base.maximum_interval),
            maximum_attempts: self.maximum_attempts.unwrap_or(base.maximum_attempts),
            jitter: self.jitter.unwrap_or(base.jitter),
            non_retryable_errors: self
                .non_retryable_errors
                .clone()
                .unwrap_or_else(|| base.non_retryable_errors.clone()),
        })
    }
}

fn opt_duration(s: &Option<String>, field: &str) -> Result<Option<Duration>, String> {
    s.as_deref()
        .map(|s| {
            humantime::parse_duration(s).map_err(|e| {
                format!("{field} = {s:?} is not a duration like \"5s\" or \"2m\": {e}")
            })
        })
        .transpose()
}

const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);

impl Workflow {
    /// Parses one workflow file. `known_kinds` are the step implementations this binary has.
    pub fn parse(text: &str, known_kinds: &BTreeSet<String>) -> Result<Self, String> {
        let file: WorkflowFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        let tiers = file
            .tiers
            .iter()
            .map(|t| Tier::parse(t).map_err(|e| format!("tiers: {t:?} {}", e.message)))
            .collect::<Result<Vec<_>, _>>()?;
        if file.steps.is_empty() {
            return Err("a workflow needs at least one step".into());
        }
        if file.purpose != Purpose::Provision && !tiers.is_empty() {
            return Err("only a provision workflow serves tiers (tiers = [])".into());
        }
        let parse_tiers = |field: &str, list: &[String]| {
            list.iter()
                .map(|t| Tier::parse(t).map_err(|e| format!("{field}: {t:?} {}", e.message)))
                .collect::<Result<Vec<_>, _>>()
        };
        let (from, to) = (
            parse_tiers("from", &file.from)?,
            parse_tiers("to", &file.to)?,
        );
        let changes: Vec<(Tier, Tier)> = from
            .iter()
            .flat_map(|f| to.iter().filter(move |t| *t != f).map(move |t| (*f, *t)))
            .collect();
        match file.purpose {
            Purpose::Tier if changes.is_empty() => {
                return Err("a tier workflow needs from = [...] and to = [...] tiers (a change to another tier)".into());
            }
            Purpose::Tier => {}
            _ if !from.is_empty() || !to.is_empty() => {
                return Err("only a tier workflow (purpose = \"tier\") has from and to".into());
            }
            _ => {}
        }
        let mut limits = BTreeMap::new();
        for (t, l) in &file.limits {
            let tier = Tier::parse(t).map_err(|e| format!("limits.{t}: {}", e.message))?;
            if !tiers.contains(&tier) {
                return Err(format!("limits.{t}: this workflow does not serve tier {t}"));
            }
            l.validate().map_err(|e| format!("limits.{t}: {e}"))?;
            limits.insert(tier, *l);
        }
        let base = file.defaults.retry.over(&RetryPolicy::default())?;
        base.validate()
            .map_err(|e| format!("defaults.retry: {e}"))?;
        let default_poll = opt_duration(&file.defaults.poll_interval, "defaults.poll_interval")?
            .unwrap_or(DEFAULT_POLL_INTERVAL);

        let mut seen = BTreeSet::new();
        let mut steps = Vec::with_capacity(file.steps.len());
        for s in &file.steps {
            let at = |m: String| format!("step {:?}: {m}", s.name);
            if s.name.is_empty()
                || !s
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
            {
                return Err(at("a step name is lowercase letters, digits and '_'".into()));
            }
            if !seen.insert(s.name.clone()) {
                return Err(at("appears twice".into()));
            }
            let kind = s.kind.clone().unwrap_or_else(|| s.name.clone());
            if !known_kinds.contains(&kind) {
                let known: Vec<&str> = known_kinds.iter().map(String::as_str).collect();
                return Err(at(format!(
                    "unknown step kind {kind:?} (known: {})",
                    known.join(", ")
                )));
            }
            let retry = s.retry.over(&base).map_err(&at)?;
            retry.validate().map_err(|e| at(format!("retry: {e}")))?;
            let timeout = opt_duration(&s.timeout, "timeout").map_err(&at)?;
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(at("timeout must be greater than zero".into()));
            }
            let poll_interval = opt_duration(&s.poll_interval, "poll_interval")
                .map_err(&at)?
                .unwrap_or(default_poll);
            if poll_interval.is_zero() {
                return Err(at("poll_interval must be greater than zero".into()));
            }
            steps.push(StepDef {
                name: s.name.clone(),
                kind,
                rules: StepRules { retry, timeout },
                poll_interval,
            });
        }
        Ok(Self {
            name: file.name,
            purpose: file.purpose,
            tiers,
            steps,
            limits,
            changes,
        })
    }
}

impl Workflows {
    /// Builds the set and checks that every tier maps to exactly one workflow.
    pub fn new(workflows: Vec<Workflow>) -> Result<Self, WorkflowError> {
        let mut by_name = BTreeMap::new();
        let mut by_tier: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut offboard = None;
        let mut update = None;
        let mut by_change = BTreeMap::new();
        for w in workflows {
            for c in &w.changes {
                if let Some(other) = by_change.insert(*c, w.name.clone()) {
                    return Err(WorkflowError::Set(format!(
                        "the change {} -> {} is claimed by both {other:?} and {:?}",
                        c.0.as_str(),
                        c.1.as_str(),
                        w.name
                    )));
                }
            }
            if w.purpose == Purpose::Update
                && let Some(other) = update.replace(w.name.clone())
            {
                return Err(WorkflowError::Set(format!(
                    "two update workflows: {other:?} and {:?}",
                    w.name
                )));
            }
            if w.purpose == Purpose::Offboard
                && let Some(other) = offboard.replace(w.name.clone())
            {
                return Err(WorkflowError::Set(format!(
                    "two offboard workflows: {other:?} and {:?}",
                    w.name
                )));
            }
            for t in &w.tiers {
                if let Some(other) = by_tier.insert(t.as_str(), w.name.clone()) {
                    return Err(WorkflowError::Set(format!(
                        "tier {} is claimed by both {other:?} and {:?}",
                        t.as_str(),
                        w.name
                    )));
                }
            }
            let name = w.name.clone();
            if by_name.insert(name.clone(), w).is_some() {
                return Err(WorkflowError::Set(format!(
                    "two workflows are named {name:?}"
                )));
            }
        }
        for t in Tier::ALL {
            if !by_tier.contains_key(t.as_str()) {
                return Err(WorkflowError::Set(format!(
                    "no workflow serves tier {}",
                    t.as_str()
                )));
            }
        }
        Ok(Self {
            by_name,
            by_tier,
            by_change,
            offboard,
            update,
        })
    }

    /// Loads every `*.toml` in `dir`.
    pub fn load_dir(dir: &Path, known_kinds: &BTreeSet<String>) -> Result<Self, WorkflowError> {
        let entries = std::fs::read_dir(dir).map_err(|source| WorkflowError::ReadDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut workflows = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| WorkflowError::Read {
                path: path.clone(),
                source,
            })?;
            let w =
                Workflow::parse(&text, known_kinds).map_err(|message| WorkflowError::Invalid {
                    path: path.clone(),
                    message,
                })?;
            workflows.push(w);
        }
        Self::new(workflows)
    }

    pub fn for_tier(&self, tier: Tier) -> &Workflow {
        let name = &self.by_tier[tier.as_str()];
        &self.by_name[name]
    }

    pub fn get(&self, name: &str) -> Option<&Workflow> {
        self.by_name.get(name)
    }

    /// The workflow a fleet rollout runs for each tenant, if one is loaded.
    pub fn update(&self) -> Option<&Workflow> {
        self.update.as_ref().map(|n| &self.by_name[n])
    }

    /// The workflow that offboards a tenant, if one is loaded.
    pub fn offboard(&self) -> Option<&Workflow> {
        self.offboard.as_ref().map(|n| &self.by_name[n])
    }

    pub fn all(&self) -> impl Iterator<Item = &Workflow> {
        self.by_name.values()
    }

    /// The workflow that moves a tenant from one tier to another, if one is loaded.
    pub fn for_change(&self, from: Tier, to: Tier) -> Option<&Workflow> {
        self.by_change.get(&(from, to)).map(|n| &self.by_name[n])
    }

    /// Every tier's pool limits, from whichever workflow serves it.
    pub fn limits(&self) -> BTreeMap<Tier, TierLimits> {
        self.by_name
            .values()
            .flat_map(|w| w.limits.iter().map(|(t, l)| (*t, *l)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds() -> BTreeSet<String> {
        ["a", "b"].iter().map(|s| s.to_string()).collect()
    }

    const GOOD: &str = r#"
        name = "w"
        tiers = ["free", "pro", "enterprise"]
        [defaults.retry]
        initial_interval = "2s"
        maximum_attempts = 4
        [[steps]]
        name = "a"
        [[steps]]
        name = "second"
        kind = "b"
        timeout = "1h"
        poll_interval = "15s"
        [steps.retry]
        maximum_attempts = 9
        non_retryable_errors = ["X"]
    "#;

    #[test]
    fn parses_steps_with_defaults_and_overrides() {
        let w = Workflow::parse(GOOD, &kinds()).unwrap();
        assert_eq!(w.steps.len(), 2);
        assert_eq!(w.steps[0].kind, "a");
        assert_eq!(w.steps[0].rules.retry.maximum_attempts, 4);
        assert_eq!(
            w.steps[0].rules.retry.initial_interval,
            Duration::from_secs(2)
        );
        assert_eq!(w.steps[1].kind, "b");
        assert_eq!(w.steps[1].rules.retry.maximum_attempts, 9);
        assert_eq!(
            w.steps[1].rules.retry.initial_interval,
            Duration::from_secs(2)
        );
        assert_eq!(w.steps[1].rules.timeout, Some(Duration::from_secs(3600)));
        assert_eq!(w.steps[1].poll_interval, Duration::from_secs(15));
        assert_eq!(w.steps[1].rules.retry.non_retryable_errors, vec!["X"]);
    }

    #[test]
    fn unknown_kind_is_named() {
        let e =
            Workflow::parse(&GOOD.replace("kind = \"b\"", "kind = \"zz\""), &kinds()).unwrap_err();
        assert!(e.contains("unknown step kind \"zz\""), "{e}");
        assert!(e.contains("second"), "{e}");
    }

    #[test]
    fn bad_policy_is_named() {
        let e = Workflow::parse(
            &GOOD.replace("maximum_attempts = 9", "maximum_attempts = 0"),
            &kinds(),
        )
        .unwrap_err();
        assert!(e.contains("maximum_attempts"), "{e}");
        let e = Workflow::parse(&GOOD.replace("\"1h\"", "\"soon\""), &kinds()).unwrap_err();
        assert!(e.contains("timeout"), "{e}");
        let e = Workflow::parse(&format!("{GOOD}\nsurprise = 1"), &kinds()).unwrap_err();
        assert!(e.contains("surprise"), "{e}");
    }

    #[test]
    fn tier_workflows_and_limits_are_checked() {
        let tier = |extra: &str| {
            format!("name = \"up\"\npurpose = \"tier\"\n{extra}\n[[steps]]\nname = \"a\"\n")
        };
        let w = Workflow::parse(
            &tier("from = [\"free\"]\nto = [\"pro\", \"free\"]"),
            &kinds(),
        )
        .unwrap();
        assert_eq!(w.changes, vec![(Tier::Free, Tier::Pro)]);
        let e = Workflow::parse(&tier(""), &kinds()).unwrap_err();
        assert!(e.contains("from = [...]"), "{e}");
        let e = Workflow::parse(&tier("from = [\"gold\"]\nto = [\"pro\"]"), &kinds()).unwrap_err();
        assert!(e.contains("from"), "{e}");
        let e = Workflow::parse(
            &GOOD.replace("[defaults.retry]", "from = [\"free\"]\n[defaults.retry]"),
            &kinds(),
        )
        .unwrap_err();
        assert!(e.contains("only a tier workflow"), "{e}");
        let limits = |l: &str| {
            GOOD.replace(
                "[defaults.retry]",
                &format!("[limits.free]\n{l}\n[defaults.retry]"),
            )
        };
        let w = Workflow::parse(&limits("rate_limit = 2.5\nburst_limit = 5"), &kinds()).unwrap();
        assert_eq!(w.limits[&Tier::Free].monthly_quota, None);
        let e =
            Workflow::parse(&limits("rate_limit = 0.0\nburst_limit = 5"), &kinds()).unwrap_err();
        assert!(e.contains("limits.free: rate_limit"), "{e}");
        let e = Workflow::parse(
            &limits("rate_limit = 1.0\nburst_limit = 5\nmonthly_quota = 0"),
            &kinds(),
        )
        .unwrap_err();
        assert!(e.contains("monthly_quota"), "{e}");
        let e = Workflow::parse(&limits("rate_limit = 1.0"), &kinds()).unwrap_err();
        assert!(e.contains("burst_limit"), "{e}");
    }

    #[test]
    fn every_tier_needs_exactly_one_workflow() {
        let w = Workflow::parse(GOOD, &kinds()).unwrap();
        assert!(Workflows::new(vec![w.clone()]).is_ok());
        let mut partial = w.clone();
        partial.tiers = vec![Tier::Free];
        let e = Workflows::new(vec![partial]).unwrap_err().to_string();
        assert!(e.contains("no workflow serves tier pro"), "{e}");
        let mut other = w.clone();
        other.name = "w2".into();
        let e = Workflows::new(vec![w, other]).unwrap_err().to_string();
        assert!(e.contains("claimed by both"), "{e}");
    }

    #[test]
    fn shipped_workflows_are_valid() {
        let kinds: BTreeSet<String> = crate::steps::SILO_KINDS
            .iter()
            .chain(crate::steps::OFFBOARD_KINDS.iter())
            .chain(crate::steps::ROLLOUT_KINDS.iter())
            .chain(crate::steps::POOL_KINDS.iter())
            .chain(crate::steps::TIER_KINDS.iter())
            .map(|s| s.to_string())
            .collect();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
        let ws = Workflows::load_dir(&dir, &kinds).unwrap();
        let silo = ws.for_tier(Tier::Enterprise);
        let names: Vec<&str> = silo.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "create_account",
                "await_account",
                "move_account",
                "bootstrap_baseline",
                "deploy_stack",
                "map_domain"
            ]
        );
        // Free and pro share the pool; every change between two tiers has a workflow.
        assert_eq!(ws.for_tier(Tier::Free).name, "pool");
        assert_eq!(ws.for_tier(Tier::Pro).name, "pool");
        for from in Tier::ALL {
            for to in Tier::ALL.into_iter().filter(|t| *t != from) {
                let w = ws.for_change(from, to).expect("a tier workflow");
                assert_eq!(w.purpose, Purpose::Tier);
                let kinds: Vec<&str> = w.steps.iter().map(|s| s.kind.as_str()).collect();
                assert!(kinds.contains(&"switch_tier"), "{}: {kinds:?}", w.name);
            }
        }
        let limits = ws.limits();
        assert_eq!(
            limits.keys().copied().collect::<Vec<_>>(),
            [Tier::Free, Tier::Pro]
        );
        assert!(limits[&Tier::Pro].rate_limit > limits[&Tier::Free].rate_limit);
        let offboard = ws.offboard().expect("an offboard workflow ships");
        assert_eq!(offboard.purpose, Purpose::Offboard);
        let kinds: Vec<&str> = offboard.steps.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, crate::steps::OFFBOARD_KINDS);
    }
}
