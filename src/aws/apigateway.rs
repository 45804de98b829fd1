//! API Gateway (REST) in a tenant account: the regional custom domain and its base path mapping.
//! `CreateDomainName` allows 1 request per 30 s per account, which is why it runs in the tenant's account.

use aws_sdk_apigateway::Client;
use aws_sdk_apigateway::types::{
    ApiStage, EndpointConfiguration, EndpointType, Op, PatchOperation, QuotaPeriodType,
    QuotaSettings, ThrottleSettings,
};

use super::{Aws, AwsError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainTarget {
    /// e.g. `d-abc123.execute-api.us-east-1.amazonaws.com`
    pub regional_domain_name: String,
    pub regional_hosted_zone_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub base_path: String,
    pub rest_api_id: String,
    pub stage: String,
}

/// Sends the `*` of a wildcard domain name (`*.<base domain>`, the pool's) as itself in request
/// paths rather than as `%2A`. RFC 3986 allows `*` in a path unescaped, and API Gateway reads either
/// (the signature covers the canonical, escaped form in both cases); moto does not unescape the
/// domain name it takes from the path, so `%2A` reads there as another domain. Runs before signing.
#[derive(Debug)]
struct WildcardInPath;

impl aws_smithy_runtime_api::client::interceptors::Intercept for WildcardInPath {
    fn name(&self) -> &'static str {
        "WildcardInPath"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let request = context.request_mut();
        let uri = request.uri();
        if let Some(rest) = uri
            .split_once("/domainnames/%2A")
            .map(|(a, b)| format!("{a}/domainnames/*{b}"))
        {
            request.set_uri(rest)?;
        }
        Ok(())
    }
}

pub struct ApiGateway {
    aws: Aws,
    client: Client,
}

/// Whether a call found what it acted on: API Gateway answers NotFoundException for a
/// resource that is not there, which for a delete or an existence check is an answer, not a fault.
fn found<T>(result: Result<T, AwsError>) -> Result<bool, AwsError> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.code == "NotFoundException" => Ok(false),
        Err(e) => Err(e),
    }
}

fn target(name: Option<&str>, zone: Option<&str>) -> DomainTarget {
    DomainTarget {
        regional_domain_name: name.unwrap_or_default().to_owned(),
        regional_hosted_zone_id: zone.unwrap_or_default().to_owned(),
    }
}

impl ApiGateway {
    /// API Gateway as `aws` (scoped to a tenant account) sees it.
    pub fn new(aws: &Aws) -> Self {
        let conf = aws_sdk_apigateway::config::Builder::from(&aws.sdk)
            .interceptor(WildcardInPath)
            .build();
        Self {
            aws: aws.clone(),
            client: Client::from_conf(conf),
        }
    }

    pub async fn get_domain(&self, domain: &str) -> Result<Option<DomainTarget>, AwsError> {
        match self
            .aws
            .call(
                "apigateway.GetDomainName",
                self.client.get_domain_name().domain_name(domain).send(),
            )
            .await
        {
            Ok(d) => Ok(Some(target(
                d.regional_domain_name(),
                d.regional_hosted_zone_id(),
            ))),
            Err(e) if e.code == "NotFoundException" => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create_domain(
        &self,
        domain: &str,
        certificate_arn: &str,
    ) -> Result<DomainTarget, AwsError> {
        let d = self
            .aws
            .call(
                "apigateway.CreateDomainName",
                self.client
                    .create_domain_name()
                    .domain_name(domain)
                    .regional_certificate_arn(certificate_arn)
                    .endpoint_configuration(
                        EndpointConfiguration::builder()
                            .types(EndpointType::Regional)
                            .build(),
                    )
                    .security_policy(aws_sdk_apigateway::types::SecurityPolicy::Tls12)
                    .tags("vend:managed-by", "vend")
                    .send(),
            )
            .await?;
        Ok(target(
            d.regional_domain_name(),
            d.regional_hosted_zone_id(),
        ))
    }

    /// How many base path mappings the domain has.
    pub async fn mapping_count(&self, domain: &str) -> Result<usize, AwsError> {
        match self
            .aws
            .call(
                "apigateway.GetBasePathMappings",
                self.client
                    .get_base_path_mappings()
                    .domain_name(domain)
                    .send(),
            )
            .await
        {
            Ok(m) => Ok(m.items().len()),
            Err(e) if e.code == "NotFoundException" => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Deletes the domain's root mapping; `Ok(false)` if there was none.
    pub async fn delete_root_mapping(&self, domain: &str) -> Result<bool, AwsError> {
        found(
            self.aws
                .call(
                    "apigateway.DeleteBasePathMapping",
                    self.client
                        .delete_base_path_mapping()
                        .domain_name(domain)
                        .base_path("(none)")
                        .send(),
                )
                .await,
        )
    }

    /// Deletes the custom domain; `Ok(false)` if there was none.
    pub async fn delete_domain(&self, domain: &str) -> Result<bool, AwsError> {
        found(
            self.aws
                .call(
                    "apigateway.DeleteDomainName",
                    self.client.delete_domain_name().domain_name(domain).send(),
                )
                .await,
        )
    }

    /// The mapping of the domain's root (`(none)` base path), if any.
    pub async fn root_mapping(&self, domain: &str) -> Result<Option<Mapping>, AwsError> {
        match self
            .aws
            .call(
                "apigateway.GetBasePathMapping",
                self.client
                    .get_base_path_mapping()
                    .domain_name(domain)
                    .base_path("(none)")
                    .send(),
            )
            .await
        {
            Ok(m) => Ok(Some(Mapping {
                base_path: m.base_path().unwrap_or("(none)").to_owned(),
                rest_api_id: m.rest_api_id().unwrap_or_default().to_owned(),
                stage: m.stage().unwrap_or_default().to_owned(),
            })),
            Err(e) if e.code == "NotFoundException" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes the domain's root map to `rest_api_id`/`stage`. Reads first (some emulators accept a
    /// duplicate mapping); when absent, creates it, and on `ConflictException` (a mapping made meanwhile)
    /// compares again. If the read itself fails server-side (moto cannot read an unmapped domain), the
    /// create's conflict check keeps this safe.
    pub async fn ensure_root_mapping(
        &self,
        domain: &str,
        rest_api_id: &str,
        stage: &str,
    ) -> Result<(), AwsError> {
        let same = |m: &Mapping| m.rest_api_id == rest_api_id && m.stage == stage;
        match self.root_mapping(domain).await {
            Ok(Some(m)) if same(&m) => return Ok(()),
            Ok(Some(_)) => return self.repoint_root_mapping(domain, rest_api_id, stage).await,
            Ok(None) => {}
            Err(e) if e.code.starts_with("Http5") || e.code == "InternalServerError" => {}
            Err(e) => return Err(e),
        }
        match self.create_root_mapping(domain, rest_api_id, stage).await {
            Ok(()) => Ok(()),
            Err(e) if e.code == "ConflictException" => match self.root_mapping(domain).await? {
                Some(m) if same(&m) => Ok(()),
                _ => self.repoint_root_mapping(domain, rest_api_id, stage).await,
            },
            Err(e) => Err(e),
        }
    }

    /// Maps the domain's root to `rest_api_id`/`stage`.
    async fn create_root_mapping(
        &self,
        domain: &str,
        rest_api_id: &str,
        stage: &str,
    ) -> Result<(), AwsError> {
        self.aws
            .call(
                "apigateway.CreateBasePathMapping",
                self.client
                    .create_base_path_mapping()
                    .domain_name(domain)
                    .rest_api_id(rest_api_id)
                    .stage(stage)
                    .send(),
            )
            .await
            .map(|_| ())
    }

    /// Points an existing root mapping at another API or stage.
    async fn repoint_root_mapping(
        &self,
        domain: &str,
        rest_api_id: &str,
        stage: &str,
    ) -> Result<(), AwsError> {
        let op = |path: &str, value: &str| {
            PatchOperation::builder()
                .op(Op::Replace)
                .path(path)
                .value(value)
                .build()
        };
        self.aws
            .call(
                "apigateway.UpdateBasePathMapping",
                self.client
                    .update_base_path_mapping()
                    .domain_name(domain)
                    .base_path("(none)")
                    .patch_operations(op("/restapiId", rest_api_id))
                    .patch_operations(op("/stage", stage))
                    .send(),
            )
            .await
            .map(|_| ())
    }

    /// Usage plans called `name` (vend names its own; the tags tell whose they are).
    pub async fn usage_plans_named(&self, name: &str) -> Result<Vec<UsagePlan>, AwsError> {
        self.usage_plans(None)
            .await
            .map(|all| all.into_iter().filter(|p| p.name == name).collect())
    }

    /// The usage plans an API key is on.
    pub async fn plans_of_key(&self, key_id: &str) -> Result<Vec<UsagePlan>, AwsError> {
        match self.usage_plans(Some(key_id)).await {
            Err(e) if e.code == "NotFoundException" => Ok(Vec::new()),
            r => r,
        }
    }

    async fn usage_plans(&self, key_id: Option<&str>) -> Result<Vec<UsagePlan>, AwsError> {
        let mut out = Vec::new();
        let mut position: Option<String> = None;
        loop {
            let page = self
                .aws
                .call(
                    "apigateway.GetUsagePlans",
                    self.client
                        .get_usage_plans()
                        .set_key_id(key_id.map(str::to_owned))
                        .set_position(position.clone())
                        .limit(500)
                        .send(),
                )
                .await?;
            out.extend(page.items().iter().map(|p| {
                UsagePlan {
                    id: p.id().unwrap_or_default().to_owned(),
                    name: p.name().unwrap_or_default().to_owned(),
                    tags: p
                        .tags()
                        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                    limits: PlanLimits {
                        rate_limit: p.throttle().map(|t| t.rate_limit()).unwrap_or_default(),
                        burst_limit: p.throttle().map(|t| t.burst_limit()).unwrap_or_default(),
                        monthly_quota: p.quota().map(|q| q.limit()),
                    },
                }
            }));
            position = page.position().map(str::to_owned);
            if position.is_none() || page.items().is_empty() {
                return Ok(out);
            }
        }
    }

    /// A usage plan for the stage `api_id`/`stage` with these limits.
    pub async fn create_usage_plan(
        &self,
        name: &str,
        api_id: &str,
        stage: &str,
        limits: &PlanLimits,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let mut req = self
            .client
            .create_usage_plan()
            .name(name)
            .api_stages(ApiStage::builder().api_id(api_id).stage(stage).build())
            .throttle(
                ThrottleSettings::builder()
                    .rate_limit(limits.rate_limit)
                    .burst_limit(limits.burst_limit)
                    .build(),
            )
            .set_tags(Some(tags.iter().cloned().collect()));
        if let Some(q) = limits.monthly_quota {
            req = req.quota(
                QuotaSettings::builder()
                    .limit(q)
                    .period(QuotaPeriodType::Month)
                    .build(),
            );
        }
        let plan = self
            .aws
            .call("apigateway.CreateUsagePlan", req.send())
            .await?;
        Ok(plan.id().unwrap_or_default().to_owned())
    }

    /// Sets a usage plan's throttle and quota from `current` to `limits`, patching only what
    /// differs (moto stores a patched quota limit as a string its own answers then cannot carry).
    pub async fn set_plan_limits(
        &self,
        plan_id: &str,
        current: &PlanLimits,
        limits: &PlanLimits,
    ) -> Result<(), AwsError> {
        let op = |op: Op, path: &str, value: Option<String>| {
            PatchOperation::builder()
                .op(op)
                .path(path)
                .set_value(value)
                .build()
        };
        let mut ops = Vec::new();
        if current.rate_limit != limits.rate_limit {
            ops.push(op(
                Op::Replace,
                "/throttle/rateLimit",
                Some(limits.rate_limit.to_string()),
            ));
        }
        if current.burst_limit != limits.burst_limit {
            ops.push(op(
                Op::Replace,
                "/throttle/burstLimit",
                Some(limits.burst_limit.to_string()),
            ));
        }
        match (current.monthly_quota, limits.monthly_quota) {
            (c, Some(q)) if c != Some(q) => {
                ops.push(op(Op::Replace, "/quota/limit", Some(q.to_string())));
                ops.push(op(Op::Replace, "/quota/period", Some("MONTH".into())));
            }
            (Some(_), None) => ops.push(op(Op::Remove, "/quota", None)),
            _ => {}
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.aws
            .call(
                "apigateway.UpdateUsagePlan",
                self.client
                    .update_usage_plan()
                    .usage_plan_id(plan_id)
                    .set_patch_operations(Some(ops))
                    .send(),
            )
            .await
            .map(|_| ())
    }

    /// API keys called exactly `name`, with their tags.
    pub async fn api_keys_named(&self, name: &str) -> Result<Vec<ApiKeyInfo>, AwsError> {
        let mut out = Vec::new();
        let mut position: Option<String> = None;
        loop {
            let page = self
                .aws
                .call(
                    "apigateway.GetApiKeys",
                    self.client
                        .get_api_keys()
                        .name_query(name)
                        .set_position(position.clone())
                        .limit(500)
                        .send(),
                )
                .await?;
            out.extend(
                page.items()
                    .iter()
                    .filter(|k| k.name() == Some(name))
                    .map(|k| ApiKeyInfo {
                        id: k.id().unwrap_or_default().to_owned(),
                        tags: k
                            .tags()
                            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                            .unwrap_or_default(),
                    }),
            );
            position = page.position().map(str::to_owned);
            if position.is_none() || page.items().is_empty() {
                return Ok(out);
            }
        }
    }

    /// Whether the API key `key_id` exists.
    pub async fn api_key_exists(&self, key_id: &str) -> Result<bool, AwsError> {
        found(
            self.aws
                .call(
                    "apigateway.GetApiKey",
                    self.client.get_api_key().api_key(key_id).send(),
                )
                .await,
        )
    }

    /// An enabled API key with a generated value, tagged.
    pub async fn create_api_key(
        &self,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let key = self
            .aws
            .call(
                "apigateway.CreateApiKey",
                self.client
                    .create_api_key()
                    .name(name)
                    .enabled(true)
                    .set_tags(Some(tags.iter().cloned().collect()))
                    .send(),
            )
            .await?;
        Ok(key.id().unwrap_or_default().to_owned())
    }

    /// Deletes an API key; `false` if it was gone already.
    pub async fn delete_api_key(&self, key_id: &str) -> Result<bool, AwsError> {
        found(
            self.aws
                .call(
                    "apigateway.DeleteApiKey",
                    self.client.delete_api_key().api_key(key_id).send(),
                )
                .await,
        )
    }

    /// Puts the key on the plan (already there counts as done).
    pub async fn add_key_to_plan(&self, plan_id: &str, key_id: &str) -> Result<(), AwsError> {
        match self
            .aws
            .call(
                "apigateway.CreateUsagePlanKey",
                self.client
                    .create_usage_plan_key()
                    .usage_plan_id(plan_id)
                    .key_id(key_id)
                    .key_type("API_KEY")
                    .send(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == "ConflictException" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes the key off the plan (not on it counts as done).
    pub async fn remove_key_from_plan(&self, plan_id: &str, key_id: &str) -> Result<(), AwsError> {
        found(
            self.aws
                .call(
                    "apigateway.DeleteUsagePlanKey",
                    self.client
                        .delete_usage_plan_key()
                        .usage_plan_id(plan_id)
                        .key_id(key_id)
                        .send(),
                )
                .await,
        )
        .map(drop)
    }
}

/// A usage plan's throttle and monthly quota.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanLimits {
    pub rate_limit: f64,
    pub burst_limit: i32,
    pub monthly_quota: Option<i32>,
}

#[derive(Debug, Clone)]
pub struct UsagePlan {
    pub id: String,
    pub name: String,
    pub tags: Vec<(String, String)>,
    pub limits: PlanLimits,
}

#[derive(Debug, Clone)]
pub struct ApiKeyInfo {
    pub id: String,
    pub tags: Vec<(String, String)>,
}
