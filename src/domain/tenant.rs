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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

/// A validated signup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signup {
    pub slug: Slug,
    pub name: TenantName,
    pub owner_email: OwnerEmail,
    pub tier: Tier,
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
        })
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
