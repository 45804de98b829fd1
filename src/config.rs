//! Configuration from the environment. Anything missing or invalid stops the process at start with a
//! message that names the variable (and never echoes a secret's value).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::engine::dispatcher::{WebhookEndpoint, standard_retry_schedule};
use crate::standard_webhooks::Secret;

#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Reads variables; a seam so tests can configure without touching the process environment.
pub trait Env {
    fn get(&self, var: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok().filter(|v| !v.is_empty())
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn get(&self, var: &str) -> Option<String> {
        self.get(var).cloned().filter(|v| !v.is_empty())
    }
}

/// What an ops token may do. A route needs one scope: `metrics` for `/metrics`, `read` for every other
/// GET, `write` for every POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Metrics,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Metrics];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Metrics => "metrics",
        }
    }
}

/// One ops token: its name (recorded in history as the operator) and its scopes.
#[derive(Clone)]
pub struct OpsToken {
    pub name: String,
    digest: [u8; 32],
    pub scopes: std::collections::BTreeSet<Scope>,
}

impl OpsToken {
    pub fn new(name: &str, token: &str, scopes: &[Scope]) -> Self {
        use sha2::{Digest, Sha256};
        Self {
            name: name.to_owned(),
            digest: Sha256::digest(token.as_bytes()).into(),
            scopes: scopes.iter().copied().collect(),
        }
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// The SHA-256 digest of the token (what a console session remembers of it).
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }
}

/// Bearer tokens for the ops API (`VEND_OPS_TOKENS`, `VEND_OPS_TOKEN`). Only their SHA-256 digests are
/// kept, and `Debug` shows names only.
#[derive(Clone)]
pub struct OpsTokens(Vec<OpsToken>);

impl std::fmt::Debug for OpsTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpsTokens({} tokens)", self.0.len())
    }
}

impl OpsTokens {
    /// Unnamed tokens with every scope, named `ops` (what `VEND_OPS_TOKEN` gives).
    pub fn new(tokens: Vec<String>) -> Self {
        Self(
            tokens
                .iter()
                .map(|t| OpsToken::new("ops", t, &Scope::ALL))
                .collect(),
        )
    }

    pub fn from_tokens(tokens: Vec<OpsToken>) -> Self {
        Self(tokens)
    }

    /// The token `candidate` is, if any. Constant-time in the candidate's content: it is hashed first
    /// and compared with every token's digest, so neither its length nor a matching prefix shows in
    /// the timing, nor which token matched.
    pub fn authenticate(&self, candidate: &str) -> Option<&OpsToken> {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let c = Sha256::digest(candidate.as_bytes());
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.digest.ct_eq(c.as_slice())) {
                found = Some(t);
            }
        }
        found
    }

    pub fn accepts(&self, candidate: &str) -> bool {
        self.authenticate(candidate).is_some()
    }

    /// The configured token with this digest, if it is still configured.
    pub fn by_digest(&self, digest: &[u8]) -> Option<&OpsToken> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.digest.ct_eq(digest)) {
                found = Some(t);
            }
        }
        found
    }
}

/// Where the tenants' custom domains get their TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificates {
    /// One regional certificate (`*.<base domain>`) for every tenant, `VEND_CERTIFICATE_ARN`. API
    /// Gateway accepts a certificate only in the account that holds it, so on AWS this serves tenants
    /// only in that account; emulators do not check.
    Shared(String),
    /// One ACM certificate per tenant, requested in the tenant's account and validated by a DNS record
    /// in the central zone (`VEND_TENANT_CERTIFICATES=per-account`): what AWS requires for a custom
    /// domain in every tenant account.
    PerAccount,
}

/// Accounts vend may ask AWS for within a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreationBudget {
    pub accounts: i64,
    pub window: Duration,
}

impl Default for CreationBudget {
    /// 100 a day: more than a week's signups for most B2B products, far fewer than a runaway loop or a
    /// signup flood would ask for. Raise it for a planned migration.
    fn default() -> Self {
        Self {
            accounts: 100,
            window: Duration::from_secs(24 * 3600),
        }
    }
}

fn parse_creation_budget(v: &str) -> Option<CreationBudget> {
    let (n, w) = v.split_once('/')?;
    let accounts: i64 = n.trim().parse().ok().filter(|n| *n >= 1)?;
    let window = humantime::parse_duration(w.trim())
        .ok()
        .filter(|w| *w >= Duration::from_secs(60))?;
    Some(CreationBudget { accounts, window })
}

/// The AWS side of the silo workflow.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub base_domain: String,
    pub certificates: Certificates,
    /// Name of the OU under the root that holds tenant accounts and carries the SCPs.
    pub tenant_ou: String,
    pub scp_dir: PathBuf,
    pub templates_dir: PathBuf,
    /// Root e-mail of a tenant's account; `{slug}` and `{base_domain}` are replaced.
    pub account_email_template: String,
    /// Name of a tenant's account; `{slug}` is replaced.
    pub account_name_template: String,
    /// Extra tags on every tenant account (cost allocation), besides vend's own.
    pub account_tags: Vec<(String, String)>,
    /// The role vend assumes in tenant accounts.
    pub access_role: String,
    /// The central EventBridge bus progress events go to (created if missing).
    pub event_bus: String,
    /// Deploy an account CloudTrail with the baseline.
    pub baseline_cloudtrail: bool,
    /// How often one replica refreshes the index of the organization's accounts.
    pub account_sync_interval: Duration,
    /// How often the OU and SCPs are reconciled (drift is repaired).
    pub reconcile_interval: Duration,
    /// After an intent to call `CreateAccount` whose outcome is unknown, how long an unseen request is
    /// presumed still in flight: the longest an earlier call can take (the SDK's operation timeout),
    /// plus a margin. Only then is calling again safe.
    pub unknown_outcome_grace: Duration,
    /// CreateAccount requests in flight at once across every replica (AWS allows 5 per organization).
    pub create_account_concurrency: i64,
    /// At most this many CreateAccount requests (one per tenant) within the window, across every
    /// replica: a bound on what a flood of signups can cost (`VEND_ACCOUNT_CREATION_BUDGET`).
    pub creation_budget: CreationBudget,
    /// Rate budgets per AWS service or operation.
    pub budgets: std::collections::HashMap<String, crate::aws::limiter::Budget>,
    /// At most this many CloseAccount requests per `close_account_window` across every replica
    /// (`VEND_CLOSE_ACCOUNT_QUOTA`). Unset: AWS's own quota, 10 % of the organization's member
    /// accounts, at least 10 and at most 1,000.
    pub close_account_quota: Option<i64>,
    /// `VEND_CLOSE_ACCOUNT_WINDOW`: AWS's rolling window for that quota (30 days).
    pub close_account_window: Duration,
    /// Regions tenants may live in (`VEND_ALLOWED_REGIONS`), besides vend's own: the guardrails
    /// allow them.
    pub tenant_regions: Vec<String>,
    /// `VEND_DRIFT_INTERVAL`: every active tenant is checked for drift at least this often.
    pub drift_interval: Duration,
    /// `VEND_DRIFT_REPAIR=auto` repairs drift; `report` (the default) only records it.
    pub drift_repair: bool,
    /// `VEND_ALTERNATE_CONTACT_{BILLING,OPERATIONS,SECURITY}`: set on every tenant account by the
    /// baseline step.
    pub alternate_contacts: Vec<AlternateContact>,
    /// `VEND_IDENTITY_CENTER_*`: the ops group's access to every tenant account.
    pub identity_center: Option<IdentityCenter>,
    /// `VEND_DEFAULT_VPCS=remove` (the default): the baseline step removes the default VPC of every
    /// region enabled for a tenant account, unless something uses it; `keep` leaves them.
    pub remove_default_vpcs: bool,
    /// `VEND_SERVICE_QUOTAS`: quota values every tenant account asks for in its region.
    pub service_quotas: Vec<QuotaRequest>,
    /// `VEND_POOL_ACCOUNT_ID`: the shared pool's account, which vend uses as it is (never moves it).
    /// Unset: vend creates one the first time a pool tenant needs it, and records it.
    pub pool_account_id: Option<String>,
}

/// A quota value tenant accounts need above AWS's default, e.g. Lambda's concurrent executions
/// (`{"service": "lambda", "quota": "L-B99A9384", "value": 1000}`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRequest {
    /// The Service Quotas service code (`lambda`, `apigateway`, ...).
    pub service: String,
    /// The quota's code (`L-` and eight hexadecimal digits).
    pub quota: String,
    pub value: f64,
}

/// `VEND_SERVICE_QUOTAS`: a JSON array of [`QuotaRequest`]s, each quota at most once.
fn parse_service_quotas(v: &str) -> Result<Vec<QuotaRequest>, String> {
    let quotas: Vec<QuotaRequest> = serde_json::from_str(v).map_err(|_| {
        "must be a JSON array of {\"service\", \"quota\", \"value\"} objects, e.g. \
         [{\"service\": \"lambda\", \"quota\": \"L-B99A9384\", \"value\": 1000}]"
            .to_owned()
    })?;
    let mut seen = std::collections::HashSet::new();
    for q in &quotas {
        let service_ok = !q.service.is_empty()
            && q.service.len() <= 63
            && q.service
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !service_ok {
            return Err(format!(
                "service {:?} is not a Service Quotas service code (lowercase letters, digits, -)",
                q.service
            ));
        }
        let quota_ok = q.quota.len() == 10
            && q.quota.starts_with("L-")
            && q.quota[2..].chars().all(|c| c.is_ascii_hexdigit());
        if !quota_ok {
            return Err(format!(
                "quota {:?} is not a quota code (L- and eight hexadecimal digits)",
                q.quota
            ));
        }
        if !(q.value.is_finite() && q.value > 0.0) {
            return Err(format!(
                "{}/{}: value must be a positive number",
                q.service, q.quota
            ));
        }
        if !seen.insert((q.service.as_str(), q.quota.as_str())) {
            return Err(format!("{}/{} is named twice", q.service, q.quota));
        }
    }
    Ok(quotas)
}

/// The ops group's access to tenant accounts through IAM Identity Center: this permission set,
/// assigned to this group on each tenant account by `bootstrap_baseline`, removed by `close_account`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityCenter {
    pub instance_arn: String,
    pub permission_set_arn: String,
    /// The group's id in the Identity Center's identity store.
    pub group_id: String,
    /// Identity Center's home region, when it is not vend's own.
    pub region: Option<String>,
}

impl IdentityCenter {
    /// What a tenant records of the assignment vend made, so that offboarding removes that one even
    /// if the configuration has changed since.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.instance_arn, self.permission_set_arn, self.group_id
        )
    }

    /// The assignment recorded as [`IdentityCenter::key`], called in `region`.
    pub fn from_key(key: &str, region: Option<String>) -> Option<Self> {
        let mut parts = key.splitn(3, '|');
        Some(Self {
            instance_arn: parts.next()?.to_owned(),
            permission_set_arn: parts.next()?.to_owned(),
            group_id: parts.next()?.to_owned(),
            region,
        })
    }
}

fn parse_identity_center(env: &dyn Env) -> Result<Option<IdentityCenter>, ConfigError> {
    const VARS: [&str; 3] = [
        "VEND_IDENTITY_CENTER_INSTANCE_ARN",
        "VEND_IDENTITY_CENTER_PERMISSION_SET_ARN",
        "VEND_IDENTITY_CENTER_GROUP_ID",
    ];
    let [instance, set, group] = VARS.map(|v| env.get(v).filter(|x| !x.trim().is_empty()));
    let region = env.get("VEND_IDENTITY_CENTER_REGION");
    if instance.is_none() && set.is_none() && group.is_none() {
        return match region {
            Some(_) => Err(err(
                "VEND_IDENTITY_CENTER_REGION",
                "is set without VEND_IDENTITY_CENTER_INSTANCE_ARN, _PERMISSION_SET_ARN and _GROUP_ID",
            )),
            None => Ok(None),
        };
    }
    let need = |v: Option<String>, var: &'static str| {
        v.ok_or_else(|| {
            err(
                var,
                "is required with the other VEND_IDENTITY_CENTER_* settings (instance ARN, \
                 permission set ARN and group id go together)",
            )
        })
    };
    let ic = IdentityCenter {
        instance_arn: need(instance, VARS[0])?,
        permission_set_arn: need(set, VARS[1])?,
        group_id: need(group, VARS[2])?,
        region,
    };
    if !(ic.instance_arn.starts_with("arn:") && ic.instance_arn.contains(":instance/")) {
        return Err(err(
            VARS[0],
            "must be an Identity Center instance ARN (arn:aws:sso:::instance/ssoins-...)",
        ));
    }
    if !(ic.permission_set_arn.starts_with("arn:")
        && ic.permission_set_arn.contains(":permissionSet/"))
    {
        return Err(err(
            VARS[1],
            "must be a permission set ARN (arn:aws:sso:::permissionSet/ssoins-.../ps-...)",
        ));
    }
    Ok(Some(ic))
}

/// Which of an account's alternate contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactKind {
    Billing,
    Operations,
    Security,
}

impl ContactKind {
    pub const ALL: [ContactKind; 3] = [
        ContactKind::Billing,
        ContactKind::Operations,
        ContactKind::Security,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContactKind::Billing => "billing",
            ContactKind::Operations => "operations",
            ContactKind::Security => "security",
        }
    }

    fn variable(self) -> &'static str {
        match self {
            ContactKind::Billing => "VEND_ALTERNATE_CONTACT_BILLING",
            ContactKind::Operations => "VEND_ALTERNATE_CONTACT_OPERATIONS",
            ContactKind::Security => "VEND_ALTERNATE_CONTACT_SECURITY",
        }
    }
}

/// An alternate contact of tenant accounts, as AWS's Account API takes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlternateContact {
    #[serde(skip_deserializing, default = "billing")]
    pub kind: ContactKind,
    pub name: String,
    pub title: String,
    pub email: String,
    pub phone: String,
}

fn billing() -> ContactKind {
    ContactKind::Billing
}

/// `{"name", "title", "email", "phone"}`, each within the Account API's limits.
fn parse_contact(kind: ContactKind, v: &str) -> Result<AlternateContact, String> {
    let shape = "must be a JSON object {\"name\", \"title\", \"email\", \"phone\"} of strings";
    let mut c: AlternateContact = serde_json::from_str(v).map_err(|_| shape.to_owned())?;
    c.kind = kind;
    let within = |field: &str, value: &str, max: usize| {
        if value.trim().is_empty() || value.chars().count() > max {
            Err(format!("{field} must be 1 to {max} characters"))
        } else {
            Ok(())
        }
    };
    within("name", &c.name, 64)?;
    within("title", &c.title, 50)?;
    within("email", &c.email, 254)?;
    within("phone", &c.phone, 25)?;
    if crate::domain::OwnerEmail::parse(&c.email).is_err() {
        return Err(format!("email {:?} is not an e-mail address", c.email));
    }
    if !c
        .phone
        .chars()
        .all(|ch| ch.is_ascii_digit() || " ()+-".contains(ch))
    {
        return Err(format!(
            "phone {:?} may hold only digits, spaces and ( ) + -",
            c.phone
        ));
    }
    Ok(c)
}

impl AwsSettings {
    /// Settings with defaults, for a base domain and one shared certificate.
    pub fn new(base_domain: &str, certificate_arn: &str) -> Self {
        Self::with_certificates(
            base_domain,
            Certificates::Shared(certificate_arn.to_owned()),
        )
    }

    /// Settings with defaults, for a base domain and where its tenants' certificates come from.
    pub fn with_certificates(base_domain: &str, certificates: Certificates) -> Self {
        Self {
            base_domain: base_domain.to_owned(),
            certificates,
            tenant_ou: "tenants".into(),
            scp_dir: PathBuf::from("scp-policies"),
            templates_dir: PathBuf::from("templates"),
            account_email_template: "aws+{slug}@{base_domain}".into(),
            account_name_template: "tenant-{slug}".into(),
            account_tags: Vec::new(),
            access_role: "OrganizationAccountAccessRole".into(),
            event_bus: "vend".into(),
            baseline_cloudtrail: true,
            account_sync_interval: Duration::from_secs(3600),
            reconcile_interval: Duration::from_secs(600),
            unknown_outcome_grace: crate::aws::OPERATION_TIMEOUT + Duration::from_secs(20),
            create_account_concurrency: 5,
            creation_budget: CreationBudget::default(),
            budgets: crate::aws::limiter::default_budgets(),
            close_account_quota: None,
            close_account_window: Duration::from_secs(30 * 86_400),
            tenant_regions: Vec::new(),
            drift_interval: Duration::from_secs(3600),
            drift_repair: false,
            alternate_contacts: Vec::new(),
            identity_center: None,
            remove_default_vpcs: true,
            service_quotas: Vec::new(),
            pool_account_id: None,
        }
    }

    /// The templates a tenant's account e-mail and name are made from.
    pub fn naming(&self) -> crate::domain::AccountNamingTemplates {
        crate::domain::AccountNamingTemplates {
            email: self.account_email_template.clone(),
            name: self.account_name_template.clone(),
            base_domain: self.base_domain.clone(),
        }
    }

    pub fn account_email(&self, slug: &str) -> String {
        self.naming().email(slug)
    }

    pub fn account_name(&self, slug: &str) -> String {
        self.naming().name(slug)
    }

    pub fn tenant_domain(&self, slug: &str) -> String {
        format!("{slug}.{}", self.base_domain)
    }

    /// How many accounts may be closed per window, for an organization of `members` accounts.
    pub fn close_account_quota(&self, members: i64) -> i64 {
        self.close_account_quota
            .unwrap_or_else(|| (members / 10).clamp(10, 1000))
    }

    fn from_env(
        env: &dyn Env,
        base_domain: String,
        certificates: Certificates,
    ) -> Result<Self, ConfigError> {
        let mut s = Self::with_certificates(&base_domain, certificates);
        if let Some(v) = env.get("VEND_TENANT_OU") {
            s.tenant_ou = v;
        }
        if let Some(v) = env.get("VEND_SCP_DIR") {
            s.scp_dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("VEND_TEMPLATES_DIR") {
            s.templates_dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("VEND_ACCOUNT_EMAIL_TEMPLATE") {
            if !v.contains("{slug}") || !v.contains('@') {
                return Err(err(
                    "VEND_ACCOUNT_EMAIL_TEMPLATE",
                    "must be an e-mail address containing {slug}, e.g. aws+{slug}@example.com",
                ));
            }
            s.account_email_template = v;
        }
        if let Some(v) = env.get("VEND_ACCOUNT_NAME_TEMPLATE") {
            if !v.contains("{slug}") {
                return Err(err("VEND_ACCOUNT_NAME_TEMPLATE", "must contain {slug}"));
            }
            s.account_name_template = v;
        }
        if let Some(v) = env.get("VEND_ACCOUNT_TAGS") {
            let map: std::collections::BTreeMap<String, String> = serde_json::from_str(&v)
                .map_err(|_| err("VEND_ACCOUNT_TAGS", "must be a JSON object of string tag values, e.g. {\"cost-center\": \"saas\"}"))?;
            if map.keys().any(|k| k.starts_with("vend:")) {
                return Err(err("VEND_ACCOUNT_TAGS", "the vend: tag prefix is reserved"));
            }
            s.account_tags = map.into_iter().collect();
        }
        if let Some(v) = env.get("VEND_ACCOUNT_ROLE_NAME") {
            s.access_role = v;
        }
        if let Some(v) = env.get("VEND_EVENT_BUS") {
            s.event_bus = v;
        }
        s.baseline_cloudtrail = match env.get("VEND_BASELINE_CLOUDTRAIL") {
            None => true,
            Some(_) => flag(env, "VEND_BASELINE_CLOUDTRAIL")?,
        };
        s.account_sync_interval =
            duration(env, "VEND_ACCOUNT_SYNC_INTERVAL", s.account_sync_interval)?;
        s.reconcile_interval = duration(env, "VEND_RECONCILE_INTERVAL", s.reconcile_interval)?;
        s.create_account_concurrency =
            number(env, "VEND_CREATE_ACCOUNT_CONCURRENCY", 5, 1, 10)? as i64;
        if let Some(v) = env.get("VEND_AWS_RATE_LIMITS") {
            crate::aws::limiter::parse_overrides(&v, &mut s.budgets)
                .map_err(|m| err("VEND_AWS_RATE_LIMITS", m))?;
        }
        s.drift_interval = duration(env, "VEND_DRIFT_INTERVAL", s.drift_interval)?;
        if s.drift_interval.is_zero() {
            return Err(err("VEND_DRIFT_INTERVAL", "must be greater than zero"));
        }
        s.drift_repair = match env.get("VEND_DRIFT_REPAIR").as_deref() {
            None | Some("report") => false,
            Some("auto") => true,
            Some(_) => return Err(err("VEND_DRIFT_REPAIR", "must be report or auto")),
        };
        if env.get("VEND_CLOSE_ACCOUNT_QUOTA").is_some() {
            s.close_account_quota =
                Some(number(env, "VEND_CLOSE_ACCOUNT_QUOTA", 10, 1, 1000)? as i64);
        }
        s.close_account_window =
            duration(env, "VEND_CLOSE_ACCOUNT_WINDOW", s.close_account_window)?;
        if s.close_account_window.is_zero() {
            return Err(err(
                "VEND_CLOSE_ACCOUNT_WINDOW",
                "must be greater than zero",
            ));
        }
        for kind in ContactKind::ALL {
            if let Some(v) = env.get(kind.variable()) {
                s.alternate_contacts
                    .push(parse_contact(kind, &v).map_err(|m| err(kind.variable(), m))?);
            }
        }
        s.identity_center = parse_identity_center(env)?;
        s.remove_default_vpcs = match env.get("VEND_DEFAULT_VPCS").as_deref() {
            None | Some("remove") => true,
            Some("keep") => false,
            Some(_) => return Err(err("VEND_DEFAULT_VPCS", "must be remove or keep")),
        };
        if let Some(v) = env.get("VEND_POOL_ACCOUNT_ID") {
            if v.len() != 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(
                    "VEND_POOL_ACCOUNT_ID",
                    format!("{v:?} is not a 12-digit AWS account id"),
                ));
            }
            s.pool_account_id = Some(v);
        }
        if let Some(v) = env.get("VEND_SERVICE_QUOTAS") {
            s.service_quotas =
                parse_service_quotas(&v).map_err(|m| err("VEND_SERVICE_QUOTAS", m))?;
        }
        if let Some(v) = env.get("VEND_ACCOUNT_CREATION_BUDGET") {
            s.creation_budget = parse_creation_budget(&v).ok_or_else(|| {
                err(
                    "VEND_ACCOUNT_CREATION_BUDGET",
                    format!("{v:?} is not a budget such as 50/24h (accounts per window)"),
                )
            })?;
        }
        Ok(s)
    }
}

/// Connection-level bounds of the HTTP server (`VEND_HTTP_*`); the defaults here are the only ones.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Open connections at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A client must send a request's headers within this time.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted.
    pub max_header_bytes: usize,
    /// A connection lives at most this long (then it closes gracefully: requests in progress finish),
    /// so idle HTTP/2 and keep-alive connections cannot hold their places forever.
    pub max_connection_age: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connection_age: Duration::from_secs(300),
        }
    }
}

/// Per-request bounds (connection-level ones are in [`HttpLimits`]); the defaults here are the only ones.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Requests handled at once; more are refused with 503 at once instead of queueing.
    pub max_in_flight: usize,
    /// A request (body included) must be answered within this time, else 408.
    pub timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub listen: SocketAddr,
    pub signup_secret: Secret,
    pub ops_tokens: OpsTokens,
    /// `VEND_RESERVED_SLUGS`, besides the built-in list.
    pub reserved_slugs: Vec<String>,
    /// `VEND_ALLOWED_REGIONS` (default: vend's own region, `AWS_REGION`): where tenants may live.
    pub regions: crate::domain::Regions,
    /// `VEND_EVENTS_INCLUDE_OWNER_EMAIL`: progress events carry the owner's e-mail (default no).
    pub events_include_owner_email: bool,
    /// `VEND_RETENTION`: how long stored signup answers and finished events are kept (default 30d).
    pub retention: Duration,
    /// `VEND_OFFBOARD_GRACE`: how long an offboarding tenant stays restorable, its endpoint dark,
    /// before anything of it is deleted (default 7d; 0s tears down at once).
    pub offboard_grace: Duration,
    pub workflows_dir: PathBuf,
    pub worker_concurrency: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub db_max_connections: u32,
    pub progress_webhooks: Vec<WebhookEndpoint>,
    /// `VEND_ALLOW_HTTP_WEBHOOKS`: development receivers on loopback are allowed.
    pub allow_http_webhooks: bool,
    pub webhook_retry_schedule: Vec<Duration>,
    pub webhook_timeout: Duration,
    pub worker_id: Option<String>,
    pub aws: Option<AwsSettings>,
    pub http_limits: HttpLimits,
    pub request_limits: RequestLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpsTokenSpec {
    name: String,
    token: String,
    scopes: Vec<Scope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSpec {
    url: String,
    secret: String,
    name: Option<String>,
}

impl Config {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let database_url = env.get("DATABASE_URL").ok_or_else(|| {
            err(
                "DATABASE_URL",
                "is required (a postgres:// connection string)",
            )
        })?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(err(
                "DATABASE_URL",
                "must be a postgres:// connection string",
            ));
        }
        let listen = match env.get("VEND_LISTEN") {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(v) => v.parse().map_err(|_| {
                err(
                    "VEND_LISTEN",
                    format!("{v:?} is not an address like 127.0.0.1:8080"),
                )
            })?,
        };
        let signup_secret = Secret::parse(&env.get("VEND_SIGNUP_SECRET").ok_or_else(|| {
            err(
                "VEND_SIGNUP_SECRET",
                "is required (whsec_ followed by base64)",
            )
        })?)
        .map_err(|m| err("VEND_SIGNUP_SECRET", m))?;
        let ops_tokens = ops_tokens(env)?;
        let allow_http = flag(env, "VEND_ALLOW_HTTP_WEBHOOKS")?;
        let progress_webhooks = match env.get("VEND_PROGRESS_WEBHOOKS") {
            None => Vec::new(),
            Some(v) => parse_webhooks(&v, allow_http)?,
        };
        let webhook_retry_schedule = match env.get("VEND_WEBHOOK_RETRY_SCHEDULE") {
            None => standard_retry_schedule(),
            Some(v) => v
                .split(',')
                .map(|s| parse_duration_str("VEND_WEBHOOK_RETRY_SCHEDULE", s.trim()))
                .collect::<Result<_, _>>()?,
        };
        let aws = match env.get("VEND_BASE_DOMAIN") {
            Some(base_domain) => {
                let base_domain = base_domain.trim_end_matches('.').to_ascii_lowercase();
                if !base_domain.contains('.') || base_domain.split('.').any(|l| l.is_empty()) {
                    return Err(err(
                        "VEND_BASE_DOMAIN",
                        "must be a domain name such as tenants.example.com",
                    ));
                }
                let certificates = certificates(env)?;
                Some(AwsSettings::from_env(env, base_domain, certificates)?)
            }
            None => {
                for var in ["VEND_CERTIFICATE_ARN", "VEND_TENANT_CERTIFICATES"] {
                    if env.get(var).is_some() {
                        return Err(err(
                            "VEND_BASE_DOMAIN",
                            format!("is required when {var} is set"),
                        ));
                    }
                }
                None
            }
        };
        let (http, request) = (HttpLimits::default(), RequestLimits::default());
        let engine = crate::engine::EngineConfig::default();
        Ok(Self {
            database_url,
            listen,
            signup_secret,
            ops_tokens,
            events_include_owner_email: flag(env, "VEND_EVENTS_INCLUDE_OWNER_EMAIL")?,
            offboard_grace: duration(env, "VEND_OFFBOARD_GRACE", Duration::from_secs(7 * 86_400))?,
            retention: match duration(env, "VEND_RETENTION", Duration::from_secs(30 * 86_400))? {
                d if d >= Duration::from_secs(86_400) => d,
                _ => {
                    return Err(err(
                        "VEND_RETENTION",
                        "must be at least 1d (signup senders retry a webhook-id for about a day)",
                    ));
                }
            },
            regions: regions(env)?,
            reserved_slugs: env
                .get("VEND_RESERVED_SLUGS")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            workflows_dir: env
                .get("VEND_WORKFLOWS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("workflows")),
            // The engine's own defaults are the only ones.
            worker_concurrency: number(
                env,
                "VEND_WORKER_CONCURRENCY",
                engine.concurrency,
                1,
                10_000,
            )?,
            lease: duration(env, "VEND_LEASE", engine.lease)?,
            poll_interval: duration(env, "VEND_POLL_INTERVAL", engine.poll_interval)?,
            db_max_connections: number(env, "VEND_DB_MAX_CONNECTIONS", 20, 2, 1000)? as u32,
            progress_webhooks,
            allow_http_webhooks: allow_http,
            webhook_retry_schedule,
            webhook_timeout: duration(env, "VEND_WEBHOOK_TIMEOUT", Duration::from_secs(15))?,
            worker_id: env.get("VEND_WORKER_ID"),
            aws,
            http_limits: HttpLimits {
                max_connections: number(
                    env,
                    "VEND_HTTP_MAX_CONNECTIONS",
                    http.max_connections,
                    1,
                    1_000_000,
                )?,
                header_read_timeout: duration(
                    env,
                    "VEND_HTTP_HEADER_TIMEOUT",
                    http.header_read_timeout,
                )?,
                max_header_bytes: http.max_header_bytes,
                max_connection_age: duration(
                    env,
                    "VEND_HTTP_MAX_CONNECTION_AGE",
                    http.max_connection_age,
                )?,
            },
            request_limits: RequestLimits {
                max_in_flight: number(
                    env,
                    "VEND_HTTP_MAX_IN_FLIGHT",
                    request.max_in_flight,
                    1,
                    100_000,
                )?,
                timeout: duration(env, "VEND_HTTP_REQUEST_TIMEOUT", request.timeout)?,
            },
        })
    }
}

/// `VEND_OPS_TOKENS` (named, scoped) and `VEND_OPS_TOKEN` (one or more comma-separated tokens with
/// every scope, named `ops`); at least one of them.
fn ops_tokens(env: &dyn Env) -> Result<OpsTokens, ConfigError> {
    const MIN: usize = 16;
    let mut out = Vec::new();
    if let Some(v) = env.get("VEND_OPS_TOKEN") {
        let tokens: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if tokens.is_empty() {
            return Err(err("VEND_OPS_TOKEN", "is empty"));
        }
        if tokens.iter().any(|t| t.len() < MIN) {
            return Err(err(
                "VEND_OPS_TOKEN",
                "each token must be at least 16 characters",
            ));
        }
        out.extend(tokens.iter().map(|t| OpsToken::new("ops", t, &Scope::ALL)));
    }
    if let Some(v) = env.get("VEND_OPS_TOKENS") {
        const VAR: &str = "VEND_OPS_TOKENS";
        let specs: Vec<OpsTokenSpec> = serde_json::from_str(&v).map_err(|_| {
            err(
                VAR,
                "must be a JSON array of {\"name\": \"...\", \"token\": \"...\", \"scopes\": [\"read\", \"write\", \"metrics\"]}",
            )
        })?;
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in specs.iter().enumerate() {
            let name_ok = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
            if !name_ok {
                return Err(err(
                    VAR,
                    format!("entry {i}: name must be 1-64 letters, digits or -_.@"),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(err(
                    VAR,
                    format!("entry {i}: the name {:?} is used twice", s.name),
                ));
            }
            if s.token.len() < MIN {
                return Err(err(
                    VAR,
                    format!("entry {i}: the token must be at least 16 characters"),
                ));
            }
            if s.scopes.is_empty() {
                return Err(err(
                    VAR,
                    format!("entry {i}: scopes must name at least one of read, write, metrics"),
                ));
            }
            out.push(OpsToken::new(&s.name, &s.token, &s.scopes));
        }
    }
    if out.is_empty() {
        return Err(err(
            "VEND_OPS_TOKEN",
            "is required (one token, or several separated by commas), or VEND_OPS_TOKENS with named, scoped tokens",
        ));
    }
    Ok(OpsTokens(out))
}

/// `VEND_CERTIFICATE_ARN` set: one shared certificate (`VEND_TENANT_CERTIFICATES` may say `shared`).
/// Unset: one certificate per tenant account, what AWS needs (API Gateway takes a certificate only from
/// the domain's own account); `VEND_TENANT_CERTIFICATES=per-account` says so explicitly and refuses an
/// ARN that would be ignored.
fn certificates(env: &dyn Env) -> Result<Certificates, ConfigError> {
    let arn = env.get("VEND_CERTIFICATE_ARN");
    match (env.get("VEND_TENANT_CERTIFICATES").as_deref(), arn) {
        (None | Some("shared"), Some(arn)) if arn.starts_with("arn:") => {
            Ok(Certificates::Shared(arn))
        }
        (None | Some("shared"), Some(_)) => Err(err(
            "VEND_CERTIFICATE_ARN",
            "must be an ACM certificate ARN",
        )),
        (Some("shared"), None) => Err(err(
            "VEND_CERTIFICATE_ARN",
            "is required with VEND_TENANT_CERTIFICATES=shared",
        )),
        (None | Some("per-account"), None) => Ok(Certificates::PerAccount),
        (Some("per-account"), Some(_)) => Err(err(
            "VEND_CERTIFICATE_ARN",
            "is not used with VEND_TENANT_CERTIFICATES=per-account (each tenant account gets its own); unset one of them",
        )),
        (Some(_), _) => Err(err(
            "VEND_TENANT_CERTIFICATES",
            "must be shared or per-account",
        )),
    }
}

fn flag(env: &dyn Env, var: &'static str) -> Result<bool, ConfigError> {
    match env.get(var).as_deref() {
        None | Some("0" | "false" | "no") => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some(_) => Err(err(var, "must be true or false")),
    }
}

fn number(
    env: &dyn Env,
    var: &'static str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match env.get(var) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(err(
                var,
                format!("must be a whole number from {min} to {max}"),
            )),
        },
    }
}

/// `VEND_ALLOWED_REGIONS`, and the region a tenant gets when its signup names none: vend's own
/// (`AWS_REGION`, else `AWS_DEFAULT_REGION`) when it is allowed, else the first allowed one.
fn regions(env: &dyn Env) -> Result<crate::domain::Regions, ConfigError> {
    let own = env
        .get("AWS_REGION")
        .or_else(|| env.get("AWS_DEFAULT_REGION"))
        .map(|r| r.trim().to_owned());
    let allowed: Vec<String> = match env.get("VEND_ALLOWED_REGIONS") {
        Some(v) => {
            let list: Vec<String> = v
                .split(',')
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect();
            if let Some(bad) = list
                .iter()
                .find(|r| !crate::domain::Regions::is_region_name(r))
            {
                return Err(err(
                    "VEND_ALLOWED_REGIONS",
                    format!("{bad:?} is not an AWS region name such as eu-central-1"),
                ));
            }
            if list.is_empty() {
                return Err(err("VEND_ALLOWED_REGIONS", "must name at least one region"));
            }
            list
        }
        None => own.iter().cloned().collect(),
    };
    let default = match &own {
        Some(o) if allowed.contains(o) => Some(o.clone()),
        _ => allowed.first().cloned(),
    };
    Ok(crate::domain::Regions { allowed, default })
}

fn duration(env: &dyn Env, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    match env.get(var) {
        None => Ok(default),
        Some(v) => parse_duration_str(var, &v),
    }
}

fn parse_duration_str(var: &'static str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v).map_err(|_| {
        err(
            var,
            format!("{v:?} is not a duration such as 500ms, 5s or 2m"),
        )
    })
}

/// `VEND_PROGRESS_WEBHOOKS`: a JSON array of `{"url": "...", "secret": "whsec_..."}`.
fn parse_webhooks(v: &str, allow_http: bool) -> Result<Vec<WebhookEndpoint>, ConfigError> {
    const VAR: &str = "VEND_PROGRESS_WEBHOOKS";
    let specs: Vec<WebhookSpec> = serde_json::from_str(v).map_err(|_| {
        err(
            VAR,
            "must be a JSON array of {\"url\": \"https://...\", \"secret\": \"whsec_...\"}",
        )
    })?;
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in specs.iter().enumerate() {
        if let Some(n) = &s.name
            && !names.insert(n.clone())
        {
            return Err(err(VAR, format!("entry {i}: the name {n:?} is used twice")));
        }
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            check_webhook_url(&s.url, allow_http)
                .map_err(|m| err(VAR, format!("entry {i}: {m}")))?;
            let secret =
                Secret::parse(&s.secret).map_err(|m| err(VAR, format!("entry {i}: secret {m}")))?;
            if let Some(n) = &s.name
                && (n.is_empty()
                    || n.len() > 64
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
            {
                return Err(err(
                    VAR,
                    format!("entry {i}: name must be 1-64 letters, digits or -_."),
                ));
            }
            Ok(WebhookEndpoint {
                url: s.url,
                secret,
                name: s.name,
            })
        })
        .collect()
}

/// Outbound webhooks go to https only, so the dispatcher cannot be aimed at plain-text internal
/// services; `VEND_ALLOW_HTTP_WEBHOOKS` (development only) allows http to loopback addresses.
pub fn check_webhook_url(url: &str, allow_http: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "url is not a valid URL".to_string())?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url must not carry credentials".into());
    }
    let literal = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(ip) = literal
        && !crate::net::allowed(ip, allow_http)
    {
        return Err(
            "url must not point at a private, loopback, link-local or reserved address".into(),
        );
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_http => {
            let loopback = match parsed.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err("http:// is allowed only for loopback addresses, even with VEND_ALLOW_HTTP_WEBHOOKS".into())
            }
        }
        "http" => Err("url must be https:// (set VEND_ALLOW_HTTP_WEBHOOKS=true in development for http://127.0.0.1)".into()),
        _ => Err("url must be https://".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<String, String> {
        [
            ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
            (
                "VEND_SIGNUP_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            ("VEND_OPS_TOKEN", "0123456789abcdef0123"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn minimal_configuration_has_sane_defaults() {
        let c = Config::from_env(&base()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.worker_concurrency, 64);
        assert_eq!(c.webhook_retry_schedule.len(), 7);
        assert!(c.aws.is_none());
    }

    #[test]
    fn tenant_regions_default_to_vends_own_and_are_checked() {
        let mut env = base();
        env.insert("AWS_REGION".into(), "eu-central-1".into());
        let c = Config::from_env(&env).unwrap();
        assert_eq!(c.regions.allowed, vec!["eu-central-1"]);
        assert_eq!(c.regions.default.as_deref(), Some("eu-central-1"));
        assert_eq!(c.offboard_grace, Duration::from_secs(7 * 86_400));

        env.insert(
            "VEND_ALLOWED_REGIONS".into(),
            " eu-west-3 , eu-central-1".into(),
        );
        let c = Config::from_env(&env).unwrap();
        assert_eq!(c.regions.allowed, vec!["eu-west-3", "eu-central-1"]);
        assert_eq!(c.regions.default.as_deref(), Some("eu-central-1"));

        // vend's own region not among them: the first allowed one is the default.
        env.insert("VEND_ALLOWED_REGIONS".into(), "ap-southeast-2".into());
        let c = Config::from_env(&env).unwrap();
        assert_eq!(c.regions.default.as_deref(), Some("ap-southeast-2"));

        for bad in ["europe", "eu-west-3,,EU-1", ","] {
            env.insert("VEND_ALLOWED_REGIONS".into(), bad.into());
            let e = Config::from_env(&env).unwrap_err().to_string();
            assert!(e.contains("VEND_ALLOWED_REGIONS"), "{bad}: {e}");
        }
    }

    #[test]
    fn offboarding_settings_are_read_and_checked() {
        let mut env = base();
        env.insert("VEND_OFFBOARD_GRACE".into(), "0s".into());
        assert_eq!(
            Config::from_env(&env).unwrap().offboard_grace,
            Duration::ZERO
        );
        env.insert("VEND_OFFBOARD_GRACE".into(), "a while".into());
        let e = Config::from_env(&env).unwrap_err().to_string();
        assert!(e.contains("VEND_OFFBOARD_GRACE"), "{e}");

        let mut s = AwsSettings::new("t.example", "arn:x");
        assert_eq!(s.close_account_quota(40), 10, "at least 10");
        assert_eq!(s.close_account_quota(2_500), 250, "10 %");
        assert_eq!(s.close_account_quota(50_000), 1000, "at most 1,000");
        s.close_account_quota = Some(3);
        assert_eq!(s.close_account_quota(2_500), 3, "configured");
    }

    #[test]
    fn errors_name_the_variable_and_hide_secrets() {
        for (var, value) in [
            ("DATABASE_URL", ""),
            ("DATABASE_URL", "mysql://x"),
            ("VEND_SIGNUP_SECRET", "s3cr3t-value"),
            ("VEND_OPS_TOKEN", "short"),
            ("VEND_LISTEN", "nowhere"),
            ("VEND_WORKER_CONCURRENCY", "0"),
            ("VEND_LEASE", "forever"),
            (
                "VEND_PROGRESS_WEBHOOKS",
                "[{\"url\":\"http://10.0.0.1/x\",\"secret\":\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"}]",
            ),
            ("VEND_BASE_DOMAIN", "tenants..example.com"),
        ] {
            let mut env = base();
            env.insert(var.into(), value.into());
            let e = Config::from_env(&env).unwrap_err().to_string();
            assert!(e.contains(var), "{var}: {e}");
            if var == "VEND_SIGNUP_SECRET" || var == "VEND_OPS_TOKEN" {
                assert!(!e.contains(value), "{e} leaks the value");
            }
        }
    }

    /// The configuration of `base()` with AWS on (a base domain) and `pairs` set.
    fn with_aws(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut env = base();
        env.insert("VEND_BASE_DOMAIN".into(), "tenants.example.com".into());
        for (k, v) in pairs {
            env.insert((*k).into(), (*v).into());
        }
        Config::from_env(&env)
    }

    #[test]
    fn default_vpcs_go_unless_kept_and_quotas_are_checked() {
        let aws = with_aws(&[]).unwrap().aws.unwrap();
        assert!(aws.remove_default_vpcs);
        assert_eq!(aws.service_quotas, vec![]);
        assert_eq!(aws.pool_account_id, None);
        let pool = with_aws(&[("VEND_POOL_ACCOUNT_ID", "210987654321")]);
        assert_eq!(
            pool.unwrap().aws.unwrap().pool_account_id.as_deref(),
            Some("210987654321")
        );
        let e = with_aws(&[("VEND_POOL_ACCOUNT_ID", "pool")]).unwrap_err();
        assert!(e.to_string().contains("VEND_POOL_ACCOUNT_ID"), "{e}");
        let kept = with_aws(&[("VEND_DEFAULT_VPCS", "keep")]);
        assert!(!kept.unwrap().aws.unwrap().remove_default_vpcs);
        let e = with_aws(&[("VEND_DEFAULT_VPCS", "delete")]).unwrap_err();
        assert!(e.to_string().contains("VEND_DEFAULT_VPCS"), "{e}");

        let quotas = with_aws(&[(
            "VEND_SERVICE_QUOTAS",
            r#"[{"service": "lambda", "quota": "L-B99A9384", "value": 1000}]"#,
        )])
        .unwrap()
        .aws
        .unwrap()
        .service_quotas;
        assert_eq!(
            quotas,
            vec![QuotaRequest {
                service: "lambda".into(),
                quota: "L-B99A9384".into(),
                value: 1000.0
            }]
        );
        for (bad, says) in [
            ("{}", "JSON array"),
            (
                r#"[{"service": "lambda", "quota": "L-B99A9384"}]"#,
                "JSON array",
            ),
            (
                r#"[{"service": "lambda", "quota": "L-B99A9384", "value": 1, "region": "x"}]"#,
                "JSON array",
            ),
            (
                r#"[{"service": "Lambda", "quota": "L-B99A9384", "value": 1}]"#,
                "service",
            ),
            (
                r#"[{"service": "lambda", "quota": "B99A9384", "value": 1}]"#,
                "quota code",
            ),
            (
                r#"[{"service": "lambda", "quota": "L-B99A938Z", "value": 1}]"#,
                "quota code",
            ),
            (
                r#"[{"service": "lambda", "quota": "L-B99A9384", "value": 0}]"#,
                "positive",
            ),
            (
                r#"[{"service": "lambda", "quota": "L-B99A9384", "value": 5},
                   {"service": "lambda", "quota": "L-B99A9384", "value": 9}]"#,
                "twice",
            ),
        ] {
            let e = with_aws(&[("VEND_SERVICE_QUOTAS", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("VEND_SERVICE_QUOTAS") && e.contains(says),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn identity_center_is_all_three_settings_or_none() {
        let instance = (
            "VEND_IDENTITY_CENTER_INSTANCE_ARN",
            "arn:aws:sso:::instance/ssoins-1",
        );
        let set = (
            "VEND_IDENTITY_CENTER_PERMISSION_SET_ARN",
            "arn:aws:sso:::permissionSet/ssoins-1/ps-2",
        );
        let group = ("VEND_IDENTITY_CENTER_GROUP_ID", "g-ops");
        assert_eq!(with_aws(&[]).unwrap().aws.unwrap().identity_center, None);
        let ic = with_aws(&[instance, set, group])
            .unwrap()
            .aws
            .unwrap()
            .identity_center
            .unwrap();
        assert_eq!((ic.group_id.as_str(), ic.region), ("g-ops", None));
        for (pairs, var) in [
            (vec![instance, set], "VEND_IDENTITY_CENTER_GROUP_ID"),
            (vec![set, group], "VEND_IDENTITY_CENTER_INSTANCE_ARN"),
            (
                vec![("VEND_IDENTITY_CENTER_REGION", "eu-west-1")],
                "VEND_IDENTITY_CENTER_REGION",
            ),
            (
                vec![
                    ("VEND_IDENTITY_CENTER_INSTANCE_ARN", "ssoins-1"),
                    set,
                    group,
                ],
                "VEND_IDENTITY_CENTER_INSTANCE_ARN",
            ),
            (
                vec![
                    instance,
                    ("VEND_IDENTITY_CENTER_PERMISSION_SET_ARN", "ps-2"),
                    group,
                ],
                "VEND_IDENTITY_CENTER_PERMISSION_SET_ARN",
            ),
        ] {
            assert_eq!(with_aws(&pairs).unwrap_err().var, var, "{pairs:?}");
        }
    }

    #[test]
    fn alternate_contacts_are_read_per_kind_and_checked() {
        let with = with_aws;
        assert_eq!(with(&[]).unwrap().aws.unwrap().alternate_contacts, vec![]);
        let ok = r#"{"name": "Sec Ops", "title": "CISO", "email": "sec@saas.example", "phone": "+1 (555) 010-0100"}"#;
        let c = with(&[("VEND_ALTERNATE_CONTACT_SECURITY", ok)])
            .unwrap()
            .aws
            .unwrap()
            .alternate_contacts;
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].kind, c[0].name.as_str(), c[0].email.as_str()),
            (ContactKind::Security, "Sec Ops", "sec@saas.example")
        );
        for (bad, says) in [
            ("sec@saas.example", "JSON object"),
            (
                r#"{"name": "A", "title": "B", "email": "sec@saas.example"}"#,
                "JSON object",
            ),
            (
                r#"{"name": "A", "title": "B", "email": "x@y.example", "phone": "1", "fax": "2"}"#,
                "JSON object",
            ),
            (
                r#"{"name": " ", "title": "B", "email": "x@y.example", "phone": "1"}"#,
                "name",
            ),
            (
                r#"{"name": "A", "title": "B", "email": "nobody", "phone": "1"}"#,
                "e-mail",
            ),
            (
                r#"{"name": "A", "title": "B", "email": "x@y.example", "phone": "call me"}"#,
                "phone",
            ),
        ] {
            let e = with(&[("VEND_ALTERNATE_CONTACT_BILLING", bad)]).unwrap_err();
            assert_eq!(e.var, "VEND_ALTERNATE_CONTACT_BILLING", "{bad}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn certificates_are_one_shared_arn_or_one_per_tenant_account() {
        let with = with_aws;
        let arn = "arn:aws:acm:us-east-1:111111111111:certificate/x";
        let shared = with(&[("VEND_CERTIFICATE_ARN", arn)]).unwrap();
        assert_eq!(
            shared.aws.unwrap().certificates,
            Certificates::Shared(arn.into())
        );
        let per = with(&[("VEND_TENANT_CERTIFICATES", "per-account")]).unwrap();
        assert_eq!(per.aws.unwrap().certificates, Certificates::PerAccount);
        // What AWS needs is the default.
        assert_eq!(
            with(&[]).unwrap().aws.unwrap().certificates,
            Certificates::PerAccount
        );
        for (pairs, var) in [
            (
                vec![("VEND_TENANT_CERTIFICATES", "shared")],
                "VEND_CERTIFICATE_ARN",
            ),
            (
                vec![("VEND_CERTIFICATE_ARN", "not-an-arn")],
                "VEND_CERTIFICATE_ARN",
            ),
            (
                vec![
                    ("VEND_TENANT_CERTIFICATES", "per-account"),
                    ("VEND_CERTIFICATE_ARN", arn),
                ],
                "VEND_CERTIFICATE_ARN",
            ),
            (
                vec![("VEND_TENANT_CERTIFICATES", "wildcard")],
                "VEND_TENANT_CERTIFICATES",
            ),
        ] {
            let e = with(&pairs).unwrap_err();
            assert_eq!(e.var, var, "{pairs:?}: {e}");
        }
        let mut env = base();
        env.insert("VEND_TENANT_CERTIFICATES".into(), "per-account".into());
        assert_eq!(Config::from_env(&env).unwrap_err().var, "VEND_BASE_DOMAIN");
    }

    #[test]
    fn webhook_urls_must_be_https_unless_loopback_in_dev() {
        assert!(check_webhook_url("https://hooks.example.com/x", false).is_ok());
        assert!(check_webhook_url("http://127.0.0.1:9/x", false).is_err());
        assert!(check_webhook_url("http://127.0.0.1:9/x", true).is_ok());
        assert!(check_webhook_url("http://169.254.169.254/latest", true).is_err());
        assert!(check_webhook_url("https://user:pw@example.com/", false).is_err());
        assert!(check_webhook_url("file:///etc/passwd", true).is_err());
        assert!(check_webhook_url("https://10.0.0.8/hook", false).is_err());
        assert!(check_webhook_url("https://169.254.169.254/latest", true).is_err());
        assert!(check_webhook_url("https://[fd00::1]/hook", false).is_err());
        assert!(check_webhook_url("https://93.184.216.34/hook", false).is_ok());
    }

    #[test]
    fn aws_limits_come_from_the_environment() {
        let mut env = base();
        env.insert("VEND_BASE_DOMAIN".into(), "tenants.example.com".into());
        let d = Config::from_env(&env).unwrap().aws.unwrap();
        assert_eq!(d.creation_budget, CreationBudget::default());
        assert_eq!(d.create_account_concurrency, 5);
        env.insert("VEND_ACCOUNT_CREATION_BUDGET".into(), "50/24h".into());
        env.insert("VEND_CREATE_ACCOUNT_CONCURRENCY".into(), "3".into());
        env.insert("VEND_AWS_RATE_LIMITS".into(), r#"{"route53": 2}"#.into());
        let a = Config::from_env(&env).unwrap().aws.unwrap();
        assert_eq!(
            a.creation_budget,
            CreationBudget {
                accounts: 50,
                window: Duration::from_secs(86_400)
            }
        );
        assert_eq!(a.create_account_concurrency, 3);
        assert_eq!(a.budgets["route53"].per_second, 2.0);
        for (var, bad) in [
            ("VEND_ACCOUNT_CREATION_BUDGET", "50"),
            ("VEND_ACCOUNT_CREATION_BUDGET", "0/1h"),
            ("VEND_ACCOUNT_CREATION_BUDGET", "5/1s"),
            ("VEND_CREATE_ACCOUNT_CONCURRENCY", "6000"),
            ("VEND_AWS_RATE_LIMITS", "[]"),
        ] {
            let mut e = env.clone();
            e.insert(var.into(), bad.into());
            assert_eq!(Config::from_env(&e).unwrap_err().var, var, "{bad}");
        }
    }

    #[test]
    fn named_tokens_carry_their_scopes() {
        let mut env = base();
        env.remove("VEND_OPS_TOKEN");
        env.insert(
            "VEND_OPS_TOKENS".into(),
            r#"[{"name":"alice","token":"aaaaaaaaaaaaaaaa1","scopes":["read"]},
               {"name":"prom","token":"pppppppppppppppp1","scopes":["metrics"]}]"#
                .into(),
        );
        let c = Config::from_env(&env).unwrap();
        let alice = c.ops_tokens.authenticate("aaaaaaaaaaaaaaaa1").unwrap();
        assert_eq!(alice.name, "alice");
        assert!(alice.allows(Scope::Read) && !alice.allows(Scope::Write));
        assert!(
            c.ops_tokens
                .authenticate("pppppppppppppppp1")
                .unwrap()
                .allows(Scope::Metrics)
        );
        assert!(c.ops_tokens.authenticate("0123456789abcdef0123").is_none());
        for bad in [
            r#"[{"name":"a","token":"short","scopes":["read"]}]"#,
            r#"[{"name":"a","token":"aaaaaaaaaaaaaaaa1","scopes":[]}]"#,
            r#"[{"name":"a","token":"aaaaaaaaaaaaaaaa1","scopes":["admin"]}]"#,
            r#"[{"name":"a","token":"aaaaaaaaaaaaaaaa1","scopes":["read"]},{"name":"a","token":"bbbbbbbbbbbbbbbb1","scopes":["read"]}]"#,
            "nonsense",
        ] {
            env.insert("VEND_OPS_TOKENS".into(), bad.into());
            let e = Config::from_env(&env).unwrap_err();
            assert_eq!(e.var, "VEND_OPS_TOKENS", "{bad}");
            assert!(
                !e.to_string().contains("aaaaaaaaaaaaaaaa1"),
                "{e} leaks a token"
            );
        }
        env.remove("VEND_OPS_TOKENS");
        assert_eq!(Config::from_env(&env).unwrap_err().var, "VEND_OPS_TOKEN");
    }

    #[test]
    fn ops_tokens_accept_only_exact_matches() {
        let t = OpsTokens::new(vec!["aaaaaaaaaaaaaaaa".into(), "bbbbbbbbbbbbbbbb".into()]);
        assert!(t.accepts("aaaaaaaaaaaaaaaa"));
        assert!(t.accepts("bbbbbbbbbbbbbbbb"));
        assert!(!t.accepts("aaaaaaaaaaaaaaa"));
        assert!(!t.accepts(""));
        assert_eq!(format!("{t:?}"), "OpsTokens(2 tokens)");
    }
}
