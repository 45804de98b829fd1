//! Tenants and the validated values a signup is made of. Each value has one `parse` constructor, so a
//! value that exists is valid.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a signup (or another input) was refused; `field` names the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A tenant's slug: it becomes a DNS label (`<slug>.<base domain>`) and part of the account name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Slug(String);

impl Slug {
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 40;

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let err = |m: &str| Err(ValidationError::new("slug", m));
        if s.len() < Self::MIN_LEN || s.len() > Self::MAX_LEN {
            return err("must be 3 to 40 characters long");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return err("may contain only lowercase letters, digits and '-'");
        }
        if !s.as_bytes()[0].is_ascii_lowercase() {
            return err("must start with a letter");
        }
        if s.ends_with('-') {
            return err("must not end with '-'");
        }
        // `xn--` and every other `??--` label are reserved for internationalized (punycode) names: a
        // slug of that shape could render as another tenant's or a brand's name in a browser.
        if s.get(2..4) == Some("--") {
            return err(
                "must not have '--' at positions 3-4 (reserved for punycode names such as xn--)",
            );
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Slugs no signup may take, whatever `VEND_RESERVED_SLUGS` adds: the names a SaaS serves itself under
/// its base domain, and the names of the accounts a landing zone already has.
pub const BUILTIN_RESERVED_SLUGS: &[&str] = &[
    "www",
    "api",
    "app",
    "admin",
    "mail",
    "status",
    "docs",
    "auth",
    "login",
    "pool",
    "vend",
    "console",
    "dashboard",
    "portal",
    "support",
    "help",
    "billing",
    "blog",
    "cdn",
    "static",
    "assets",
    "smtp",
    "imap",
    "pop3",
    "ftp",
    "ns1",
    "ns2",
    "dns",
    "webmail",
    "autodiscover",
    "sso",
    "root",
    "security",
    "audit",
    "log-archive",
    "management",
    "master",
    "internal",
];

/// How a tenant's account is named from its slug (`VEND_ACCOUNT_EMAIL_TEMPLATE`,
/// `VEND_ACCOUNT_NAME_TEMPLATE`): `{slug}` and `{base_domain}` are replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountNamingTemplates {
    pub email: String,
    pub name: String,
    pub base_domain: String,
}

impl AccountNamingTemplates {
    pub fn email(&self, slug: &str) -> String {
        self.email
            .replace("{slug}", slug)
            .replace("{base_domain}", &self.base_domain)
    }

    pub fn name(&self, slug: &str) -> String {
        self.name.replace("{slug}", slug)
    }

    /// Whether AWS's `CreateAccount` would take the e-mail and name this slug makes: the e-mail 6-64
    /// characters with a local part of at most 64, the name 1-50 printable ASCII characters.
    pub fn check(&self, slug: &str) -> Result<(), ValidationError> {
        let email = self.email(slug);
        let local = email.rsplit_once('@').map_or("", |(l, _)| l);
        if email.len() < 6 || email.len() > 64 || local.is_empty() || local.len() > 64 {
            return Err(ValidationError::new(
                "slug",
                format!(
                    "is too long for this deployment: the account e-mail it makes would be {} characters, AWS allows 64",
                    email.len()
                ),
            ));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValidationError::new(
                "slug",
                "makes an account e-mail AWS does not accept",
            ));
        }
        let name = self.name(slug);
        if name.is_empty() || name.len() > 50 || !name.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(ValidationError::new(
                "slug",
                format!(
                    "is too long for this deployment: the account name it makes would be {} characters, AWS allows 50",
                    name.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Why a well-formed slug is still refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlugRefusal {
    /// Built in or in `VEND_RESERVED_SLUGS`.
    Reserved,
    /// The account it derives would break AWS's limits.
    Invalid(ValidationError),
}

/// What a deployment refuses beyond a slug's shape.
#[derive(Debug, Clone, Default)]
pub struct SlugRules {
    reserved: std::collections::BTreeSet<String>,
    naming: Option<AccountNamingTemplates>,
}

impl SlugRules {
    /// The built-in reserved slugs plus `extra`; `naming` when this process knows the base domain.
    pub fn new(extra: &[String], naming: Option<AccountNamingTemplates>) -> Self {
        let reserved = BUILTIN_RESERVED_SLUGS
            .iter()
            .map(|s| s.to_string())
            .chain(extra.iter().map(|s| s.trim().to_ascii_lowercase()))
            .filter(|s| !s.is_empty())
            .collect();
        Self { reserved, naming }
    }

    pub fn check(&self, slug: &Slug) -> Result<(), SlugRefusal> {
        if self.reserved.contains(slug.as_str()) {
            return Err(SlugRefusal::Reserved);
        }
        if let Some(n) = &self.naming {
            n.check(slug.as_str()).map_err(SlugRefusal::Invalid)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TenantName(String);

impl TenantName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let chars = s.chars().count();
        if chars == 0 || s.trim().is_empty() {
            return Err(ValidationError::new("name", "must not be empty"));
        }
        if chars > Self::MAX_CHARS {
            return Err(ValidationError::new(
                "name",
                "must be at most 200 characters",
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "name",
                "must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plausible e-mail address: what the frontend already verified, checked only for shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct OwnerEmail(String);

impl OwnerEmail {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let err = || {
            Err(ValidationError::new(
                "owner_email",
                "must be an e-mail address such as ops@example.com",
            ))
        };
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err();
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return err();
        };
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return err();
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return err();
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Pro,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Free, Tier::Pro, Tier::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ValidationError::new("tier", "must be one of free, pro, enterprise"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    Pending,
    Provisioning,
    Active,
    Failed,
    Offboarding,
    Closed,
}

impl TenantState {
    pub const ALL: [TenantState; 6] = [
        TenantState::Pending,
        TenantState::Provisioning,
        TenantState::Active,
        TenantState::Failed,
        TenantState::Offboarding,
        TenantState::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Pending => "pending",
            TenantState::Provisioning => "provisioning",
            TenantState::Active => "active",
            TenantState::Failed => "failed",
            TenantState::Offboarding => "offboarding",
            TenantState::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        TenantState::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The body of the signup webhook as it arrives; only [`Signup::parse`] turns it into something usable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupBody {
    slug: String,
    name: String,
    owner_email: String,
    tier: String,
    #[serde(default)]
    region: Option<String>,
}

/// A validated signup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signup {
    pub slug: Slug,
    pub name: TenantName,
    pub owner_email: OwnerEmail,
    pub tier: Tier,
    /// The AWS region asked for (checked against the allowed ones by [`Regions::pick`]).
    pub region: Option<String>,
}

impl Signup {
    /// Parses and validates the raw JSON body; the first problem found is reported.
    pub fn parse(body: &[u8]) -> Result<Self, ValidationError> {
        let raw: SignupBody = serde_json::from_slice(body)
            .map_err(|e| ValidationError::new("body", json_error_message(&e)))?;
        Ok(Self {
            slug: Slug::parse(&raw.slug)?,
            name: TenantName::parse(&raw.name)?,
            owner_email: OwnerEmail::parse(&raw.owner_email)?,
            tier: Tier::parse(&raw.tier)?,
            region: raw.region,
        })
    }
}

/// Where tenants may live (`VEND_ALLOWED_REGIONS`) and where they live when a signup does not say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Regions {
    pub allowed: Vec<String>,
    pub default: Option<String>,
}

impl Regions {
    /// The tenant's region: the one asked for if allowed, else the default; an error names the
    /// allowed ones.
    pub fn pick(&self, asked: Option<&str>) -> Result<Option<String>, ValidationError> {
        match asked {
            None => Ok(self.default.clone()),
            Some(r) if self.allowed.iter().any(|a| a == r) => Ok(Some(r.to_owned())),
            Some(r) => Err(ValidationError::new(
                "region",
                if self.allowed.is_empty() {
                    format!(
                        "{r:?} is not allowed: no tenant regions are configured (VEND_ALLOWED_REGIONS)"
                    )
                } else {
                    format!("{r:?} is not allowed; allowed: {}", self.allowed.join(", "))
                },
            )),
        }
    }

    /// Whether `s` looks like an AWS region name (`us-east-1`, `ap-southeast-2`, `us-gov-west-1`).
    pub fn is_region_name(s: &str) -> bool {
        let parts: Vec<&str> = s.split('-').collect();
        parts.len() >= 3
            && parts.iter().all(|p| !p.is_empty())
            && parts[..parts.len() - 1]
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_lowercase()))
            && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
    }
}

/// serde's message without the position suffix, which means nothing to a webhook sender.
fn json_error_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_with_a_message(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Err(e) = Signup::parse(&body) {
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn whatever_is_accepted_is_valid(
            slug in "[a-zA-Z0-9_. -]{0,45}",
            name in "\\PC{0,210}",
            email in "[a-z0-9@.+ -]{0,40}",
            tier in "free|pro|enterprise|gold|",
        ) {
            let body = serde_json::json!({"slug": slug, "name": name, "owner_email": email, "tier": tier});
            match Signup::parse(body.to_string().as_bytes()) {
                Ok(s) => {
                    prop_assert!(s.slug.as_str().len() >= 3 && s.slug.as_str().len() <= 40);
                    prop_assert!(s.slug.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                    prop_assert!(s.slug.as_str().as_bytes()[0].is_ascii_lowercase() && !s.slug.as_str().ends_with('-'));
                    prop_assert!(!name.trim().is_empty() && name.chars().count() <= 200);
                    prop_assert!(s.owner_email.as_str().contains('@'));
                }
                Err(e) => prop_assert!(["slug", "name", "owner_email", "tier"].contains(&e.field), "{}", e),
            }
        }

        #[test]
        fn every_well_formed_slug_is_accepted(slug in "[a-z][a-z0-9-]{1,38}[a-z0-9]") {
            prop_assume!(slug.get(2..4) != Some("--"));
            prop_assert!(Slug::parse(&slug).is_ok());
        }
    }

    #[test]
    fn slug_accepts_dns_labels() {
        for ok in ["acme", "a-b-c", "abc123", "ab1", &"a".repeat(40)] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn slug_rejects_bad_shapes() {
        for bad in [
            "ab",
            &"a".repeat(41),
            "1abc",
            "-abc",
            "abc-",
            "Abc",
            "ab_c",
            "ab.c",
            "ab c",
            "abé",
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn a_region_must_be_allowed_and_the_default_fills_in() {
        let r = Regions {
            allowed: vec!["eu-central-1".into(), "us-east-1".into()],
            default: Some("us-east-1".into()),
        };
        assert_eq!(r.pick(None).unwrap().as_deref(), Some("us-east-1"));
        assert_eq!(
            r.pick(Some("eu-central-1")).unwrap().as_deref(),
            Some("eu-central-1")
        );
        let e = r.pick(Some("ap-south-1")).unwrap_err();
        assert_eq!(e.field, "region");
        assert!(e.message.contains("eu-central-1, us-east-1"), "{e}");
        assert!(Regions::default().pick(Some("us-east-1")).is_err());
        for ok in ["us-east-1", "ap-southeast-2", "us-gov-west-1"] {
            assert!(Regions::is_region_name(ok), "{ok}");
        }
        for bad in [
            "",
            "us",
            "us-east",
            "US-EAST-1",
            "us-east-x",
            "us--1",
            "us-east-1 ",
        ] {
            assert!(!Regions::is_region_name(bad), "{bad}");
        }
    }

    #[test]
    fn punycode_shaped_slugs_are_refused() {
        for bad in ["xn--abc", "ab--c", "zz--top"] {
            assert!(Slug::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(Slug::parse("a-b--c").is_ok());
        assert!(Slug::parse("abc--d").is_ok());
    }

    fn naming(base: &str) -> AccountNamingTemplates {
        AccountNamingTemplates {
            email: "aws+{slug}@{base_domain}".into(),
            name: "tenant-{slug}".into(),
            base_domain: base.into(),
        }
    }

    #[test]
    fn reserved_slugs_are_built_in_and_configurable() {
        let rules = SlugRules::new(&["Globex ".into()], None);
        for r in [
            "www", "api", "app", "admin", "mail", "status", "docs", "auth", "login", "pool",
            "globex",
        ] {
            assert_eq!(
                rules.check(&Slug::parse(r).unwrap()),
                Err(SlugRefusal::Reserved),
                "{r}"
            );
        }
        assert_eq!(rules.check(&Slug::parse("acme").unwrap()), Ok(()));
    }

    #[test]
    fn slugs_whose_account_breaks_aws_limits_are_refused() {
        let rules = SlugRules::new(&[], Some(naming("tenants.example.com")));
        assert!(rules.check(&Slug::parse("acme").unwrap()).is_ok());
        // aws+ (4) + 40 + @ (1) + 19 = 64: just fits.
        assert!(rules.check(&Slug::parse(&"a".repeat(40)).unwrap()).is_ok());
        let long = SlugRules::new(&[], Some(naming("tenants.a-long-saas-domain.example.com")));
        match long.check(&Slug::parse(&"a".repeat(30)).unwrap()) {
            Err(SlugRefusal::Invalid(e)) => assert!(e.message.contains("e-mail"), "{e}"),
            other => panic!("{other:?}"),
        }
        let mut n = naming("t.example.com");
        n.name = "customer-tenant-account-{slug}".into();
        match SlugRules::new(&[], Some(n)).check(&Slug::parse(&"b".repeat(30)).unwrap()) {
            Err(SlugRefusal::Invalid(e)) => assert!(e.message.contains("name"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn name_length_is_counted_in_characters() {
        assert!(TenantName::parse(&"é".repeat(200)).is_ok());
        assert!(TenantName::parse(&"é".repeat(201)).is_err());
        assert!(TenantName::parse("").is_err());
        assert!(TenantName::parse("   ").is_err());
        assert!(TenantName::parse("a\nb").is_err());
    }

    #[test]
    fn email_must_be_plausible() {
        for ok in ["ops@acme.example", "a.b+c@x.co", "x@sub.domain.example"] {
            assert!(OwnerEmail::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ops",
            "@acme.example",
            "ops@",
            "ops@localhost",
            "ops@acme..example",
            "o ps@acme.example",
            "ops@-acme.example",
            "a@b@c.example",
        ] {
            assert!(OwnerEmail::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn signup_parses_a_valid_body() {
        let s = Signup::parse(
            br#"{"slug":"acme","name":"Acme Corp","owner_email":"ops@acme.example","tier":"enterprise"}"#,
        )
        .unwrap();
        assert_eq!(s.slug.as_str(), "acme");
        assert_eq!(s.tier, Tier::Enterprise);
    }

    #[test]
    fn signup_rejects_unknown_and_missing_fields() {
        let e = Signup::parse(
            br#"{"slug":"acme","name":"A","owner_email":"a@b.example","tier":"pro","x":1}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "body");
        assert!(e.message.contains("unknown field `x`"), "{}", e.message);

        let e = Signup::parse(br#"{"slug":"acme"}"#).unwrap_err();
        assert!(e.message.contains("missing field"), "{}", e.message);

        let e = Signup::parse(
            br#"{"slug":"acme","name":"A","owner_email":"a@b.example","tier":"gold"}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "tier");
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in TenantState::ALL {
            assert_eq!(TenantState::parse(s.as_str()), Some(s));
        }
        for t in Tier::ALL {
            assert_eq!(Tier::parse(t.as_str()), Ok(t));
        }
    }
}
