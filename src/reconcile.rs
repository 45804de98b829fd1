//! The management-account reconciler: periodic, idempotent, and taking no input but the configuration.
//! At start (and every `VEND_RECONCILE_INTERVAL`, one replica at a time) it makes the management side
//! match what vend needs: the organization exists, SCPs are enabled, the tenant OU exists under the root,
//! every SCP in `scp-policies/` exists with the file's content and is attached to the OU, the central bus
//! exists and accepts events from the tenant accounts only, and the hosted zone of the base domain exists.
//! Separately, it refreshes the index of the organization's accounts.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::aws::AwsError;
use crate::aws::accounts::Accounts;
use crate::aws::eventbridge::EventBridge;
use crate::aws::organizations::Organizations;
use crate::aws::route53::Route53;
use crate::config::AwsSettings;
use crate::db;
use crate::steps::Management;

/// AWS's limit on an SCP document.
pub const SCP_MAX_CHARS: usize = 5120;
/// Managed SCPs are named with this prefix plus the file's stem.
pub const SCP_PREFIX: &str = "vend-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpDocument {
    pub file: String,
    pub name: String,
    /// Minified JSON, as sent to AWS.
    pub content: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("SCP file {file}: {message}")]
    InvalidScp { file: String, message: String },
    #[error("cannot read the SCP directory {dir}: {source}")]
    ScpDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "SCP {name} ({id}) exists but vend did not create it (it has no tag vend:managed-by=vend); \
         vend will not change it. Rename or delete it, or tag it vend:managed-by=vend to hand it to vend"
    )]
    ForeignScp { name: String, id: String },
    #[error("VEND_BASE_DOMAIN: no public hosted zone named {0} in Route53; create it first")]
    NoHostedZone(String),
    #[error("{0}")]
    Aws(#[from] AwsError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// What SCP files may refer to, filled in from configuration: the role vend reaches tenant accounts
/// through (so the guardrails exempt the role vend really uses and never lock vend out) and the
/// regions tenants live in.
#[derive(Debug, Clone)]
pub struct ScpVars {
    /// `${VEND_ACCOUNT_ROLE_NAME}`
    pub access_role: String,
    /// `${VEND_REGION}`: vend's own region.
    pub region: String,
    /// `${VEND_ALLOWED_REGIONS}`, written as a JSON array of strings: vend's own region and every
    /// region a tenant may live in (`VEND_ALLOWED_REGIONS`).
    pub tenant_regions: Vec<String>,
}

impl ScpVars {
    fn render(&self, text: &str) -> String {
        let mut all = vec![self.region.clone()];
        for r in &self.tenant_regions {
            if !all.contains(r) {
                all.push(r.clone());
            }
        }
        text.replace("${VEND_ACCOUNT_ROLE_NAME}", &self.access_role)
            .replace(
                "${VEND_ALLOWED_REGIONS}",
                &serde_json::to_string(&all).expect("strings serialize"),
            )
            .replace("${VEND_REGION}", &self.region)
    }
}

/// Reads and validates every `*.json` in `dir`: JSON, an IAM policy shape, at most 5,120 characters
/// once minified, with [`ScpVars`] filled in and no other `${...}` left. The first invalid file stops
/// everything, named.
pub fn load_scps(dir: &Path, vars: &ScpVars) -> Result<Vec<ScpDocument>, ReconcileError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ReconcileError::ScpDir {
        dir: dir.display().to_string(),
        source,
    })?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut docs = Vec::new();
    for path in paths {
        let file = path.display().to_string();
        let bad = |message: String| ReconcileError::InvalidScp {
            file: file.clone(),
            message,
        };
        let text = vars
            .render(&std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?);
        if let Some(i) = text.find("${") {
            let name: String = text[i..].chars().take_while(|c| *c != '}').collect();
            return Err(bad(format!(
                "unknown placeholder {name}}} (known: ${{VEND_ACCOUNT_ROLE_NAME}}, ${{VEND_REGION}}, \
                 ${{VEND_ALLOWED_REGIONS}})"
            )));
        }
        let v: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let statements = v
            .get("Statement")
            .ok_or_else(|| bad("has no \"Statement\"".into()))?;
        if v.get("Version").and_then(Value::as_str) != Some("2012-10-17") {
            return Err(bad("\"Version\" must be \"2012-10-17\"".into()));
        }
        let list = match statements {
            Value::Array(a) if !a.is_empty() => a.clone(),
            Value::Object(_) => vec![statements.clone()],
            _ => {
                return Err(bad(
                    "\"Statement\" must be a statement or a non-empty list of them".into(),
                ));
            }
        };
        for (i, st) in list.iter().enumerate() {
            match st.get("Effect").and_then(Value::as_str) {
                Some("Allow" | "Deny") => {}
                _ => {
                    return Err(bad(format!(
                        "statement {i} needs \"Effect\": \"Allow\" or \"Deny\""
                    )));
                }
            }
            if st.get("Action").is_none() && st.get("NotAction").is_none() {
                return Err(bad(format!(
                    "statement {i} needs \"Action\" or \"NotAction\""
                )));
            }
        }
        let content = serde_json::to_string(&v).expect("a parsed value serializes");
        let chars = content.chars().count();
        if chars > SCP_MAX_CHARS {
            return Err(bad(format!(
                "is {chars} characters minified; AWS allows at most {SCP_MAX_CHARS}"
            )));
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if stem.is_empty()
            || !stem
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                "the file name must be letters, digits, '-' and '_' (it names the policy)".into(),
            ));
        }
        docs.push(ScpDocument {
            file: path
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned(),
            name: format!("{SCP_PREFIX}{stem}"),
            content,
        });
    }
    if docs.is_empty() {
        return Err(ReconcileError::InvalidScp {
            file: dir.display().to_string(),
            message: "contains no *.json SCP documents; the tenant OU would have no guardrails"
                .into(),
        });
    }
    Ok(docs)
}

pub struct Reconciler {
    pub orgs: Arc<dyn Organizations>,
    pub accounts: Arc<Accounts>,
    pub route53: Arc<Route53>,
    pub bus: Arc<EventBridge>,
    pub settings: AwsSettings,
    pub scps: Vec<ScpDocument>,
    pub pool: PgPool,
}

impl Reconciler {
    /// Brings the management side to what vend needs and reports where things are.
    pub async fn reconcile(&self) -> Result<Management, ReconcileError> {
        let organization_id = self.orgs.organization_id().await?;
        let management_account_id = self.accounts.caller_account().await?;
        let (root_id, scps_enabled) = self.orgs.root().await?;
        if !scps_enabled {
            info!("enabling service control policies on the organization root");
            self.orgs.enable_scps(&root_id).await?;
        }
        let ou = &self.settings.tenant_ou;
        let tenant_ou_id = match self.orgs.find_ou(&root_id, ou).await? {
            Some(id) => id,
            None => {
                info!(ou = %ou, "creating the tenant OU");
                self.orgs.create_ou(&root_id, ou).await?
            }
        };
        self.reconcile_scps(&tenant_ou_id).await?;
        let hosted_zone_id = self
            .route53
            .find_public_zone(&self.settings.base_domain)
            .await?
            .ok_or_else(|| ReconcileError::NoHostedZone(self.settings.base_domain.clone()))?;
        let event_bus_arn = self.bus.ensure_bus().await?;
        if let Err(e) = self
            .bus
            .allow_tenant_accounts(&event_bus_arn, &organization_id, &root_id, &tenant_ou_id)
            .await
        {
            // Progress events still reach the bus from vend; only the baselines' forwarding needs this.
            warn!(error = %e, "could not let the tenant accounts put events on the central bus");
        }
        Ok(Management {
            organization_id,
            management_account_id,
            root_id,
            tenant_ou_id,
            hosted_zone_id,
            event_bus_arn,
        })
    }

    /// Every SCP from the files exists with the file's content and is attached to the OU.
    pub async fn reconcile_scps(&self, ou_id: &str) -> Result<(), ReconcileError> {
        let existing = self.orgs.list_scps().await?;
        let attached = self.orgs.scps_attached_to(ou_id).await?;
        for doc in &self.scps {
            let id = match existing.iter().find(|p| p.name == doc.name) {
                Some(p) => {
                    // The name alone proves nothing: only a policy vend tagged is vend's to change.
                    if !self.is_managed(&p.id).await? {
                        return Err(ReconcileError::ForeignScp {
                            name: p.name.clone(),
                            id: p.id.clone(),
                        });
                    }
                    let current = self.orgs.scp_content(&p.id).await?;
                    let same = serde_json::from_str::<Value>(&current).ok()
                        == serde_json::from_str::<Value>(&doc.content).ok();
                    if !same {
                        info!(policy = %doc.name, file = %doc.file, "updating SCP from its file");
                        self.orgs.update_scp(&p.id, &doc.content).await?;
                    }
                    p.id.clone()
                }
                None => {
                    info!(policy = %doc.name, file = %doc.file, "creating SCP");
                    let description = format!("Managed by vend from scp-policies/{}", doc.file);
                    self.orgs
                        .create_scp(&doc.name, &description, &doc.content)
                        .await?
                }
            };
            if !attached.contains(&id) {
                info!(policy = %doc.name, "attaching SCP to the tenant OU");
                self.orgs.attach_scp(&id, ou_id).await?;
            }
        }
        for p in existing.iter().filter(|p| p.name.starts_with(SCP_PREFIX)) {
            if !self.scps.iter().any(|d| d.name == p.name)
                && attached.contains(&p.id)
                && self.is_managed(&p.id).await?
            {
                warn!(policy = %p.name, "an SCP vend manages has no file any more; it stays attached until ops detach it");
            }
        }
        Ok(())
    }

    async fn is_managed(&self, policy_id: &str) -> Result<bool, AwsError> {
        crate::aws::organizations::managed_by_vend(self.orgs.as_ref(), policy_id).await
    }

    /// Refreshes the local index of the organization's accounts.
    pub async fn sync_accounts(&self) -> Result<usize, ReconcileError> {
        let all = self.orgs.list_accounts().await?;
        let rows: Vec<db::org::OrgAccount> = all
            .into_iter()
            .map(|a| db::org::OrgAccount {
                account_id: a.id,
                email: a.email,
                name: a.name,
                status: a.status,
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        db::org::replace_accounts(&mut tx, &rows).await?;
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Repeats the reconcile and the account sync on their intervals, each run by one replica only,
    /// on the spare AWS budget (the tenants being vended come first).
    pub async fn run(self: Arc<Self>, ou_id: String, shutdown: CancellationToken) {
        crate::aws::limiter::in_background(self.sweep(ou_id, shutdown)).await
    }

    async fn sweep(&self, ou_id: String, shutdown: CancellationToken) {
        let tick = std::cmp::min(
            self.settings.reconcile_interval,
            self.settings.account_sync_interval,
        )
        .min(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = shutdown.cancelled() => return,
            }
            match db::org::claim_periodic(
                &self.pool,
                "reconcile-scps",
                self.settings.reconcile_interval,
            )
            .await
            {
                Ok(true) => {
                    if let Err(e) = self.reconcile_scps(&ou_id).await {
                        warn!(error = %e, "SCP reconcile failed; will try again");
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot schedule the SCP reconcile"),
            }
            match db::org::claim_periodic(
                &self.pool,
                "sync-accounts",
                self.settings.account_sync_interval,
            )
            .await
            {
                Ok(true) => match self.sync_accounts().await {
                    Ok(n) => info!(accounts = n, "organization account index refreshed"),
                    Err(e) => warn!(error = %e, "account index refresh failed; will try again"),
                },
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot schedule the account sync"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(role: &str) -> ScpVars {
        ScpVars {
            access_role: role.into(),
            region: "eu-central-1".into(),
            tenant_regions: vec!["eu-central-1".into(), "eu-west-3".into()],
        }
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, body) in files {
            std::fs::write(d.path().join(name), body).unwrap();
        }
        d
    }

    const OK: &str = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "ec2:RunInstances", "Resource": "*"}]}"#;

    #[test]
    fn shipped_policies_are_valid() {
        let docs = load_scps(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("scp-policies"),
            &vars("OrganizationAccountAccessRole"),
        )
        .unwrap();
        assert!(docs.len() >= 3);
        assert!(docs.iter().all(|d| d.name.starts_with(SCP_PREFIX)));
    }

    #[test]
    fn the_guardrails_exempt_the_configured_access_role() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scp-policies");
        let docs = load_scps(&dir, &vars("VendAccess")).unwrap();
        let protect = docs
            .iter()
            .find(|d| d.name == "vend-protect-baseline")
            .unwrap();
        assert!(
            protect.content.contains("role/VendAccess"),
            "{}",
            protect.content
        );
        assert!(!protect.content.contains("OrganizationAccountAccessRole"));
        assert!(docs.iter().all(|d| !d.content.contains("${")));
        let regions = docs
            .iter()
            .find(|d| d.name == "vend-deny-other-regions")
            .unwrap();
        assert!(
            regions.content.contains(r#"["eu-central-1","eu-west-3"]"#),
            "{}",
            regions.content
        );
        // Outside the allowed regions, only the access role may sweep default VPCs.
        let policy: serde_json::Value = serde_json::from_str(&regions.content).unwrap();
        let listed = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect()
        };
        let everyone = listed(&policy["Statement"][0]["NotAction"]);
        let sweep = &policy["Statement"][1];
        for action in crate::aws::ec2::DEFAULT_VPC_ACTIONS {
            assert!(everyone.contains(&action.to_owned()), "{action}");
        }
        assert_eq!(
            listed(&sweep["Action"]),
            crate::aws::ec2::DEFAULT_VPC_ACTIONS.map(str::to_owned)
        );
        assert_eq!(
            sweep["Condition"]["ArnNotLike"]["aws:PrincipalArn"],
            "arn:aws:iam::*:role/VendAccess"
        );
        let d = dir_with(&[("x.json", &OK.replace("ec2:RunInstances", "${OTHER}"))]);
        let e = load_scps(d.path(), &vars("R")).unwrap_err().to_string();
        assert!(e.contains("${OTHER}"), "{e}");
    }

    #[test]
    fn a_valid_file_is_minified_and_named_after_itself() {
        let d = dir_with(&[("deny-ec2.json", OK)]);
        let docs = load_scps(d.path(), &vars("R")).unwrap();
        assert_eq!(docs[0].name, "vend-deny-ec2");
        assert!(!docs[0].content.contains(' '));
    }

    #[test]
    fn invalid_files_are_named() {
        let long = format!(
            r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Deny", "Action": "ec2:RunInstances", "Resource": "*", "Sid": "{}"}}]}}"#,
            "x".repeat(5200)
        );
        for (name, body, needle) in [
            ("broken.json", "{not json", "not valid JSON"),
            (
                "noversion.json",
                r#"{"Statement": [{"Effect": "Deny", "Action": "*"}]}"#,
                "Version",
            ),
            (
                "noeffect.json",
                r#"{"Version": "2012-10-17", "Statement": [{"Action": "*"}]}"#,
                "Effect",
            ),
            ("long.json", long.as_str(), "5120"),
        ] {
            let d = dir_with(&[("good.json", OK), (name, body)]);
            let e = load_scps(d.path(), &vars("R")).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(needle), "{e}");
        }
    }
}
