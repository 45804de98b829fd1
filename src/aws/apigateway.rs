//! API Gateway (REST) in a tenant account: the regional custom domain and its base path mapping.
//! `CreateDomainName` allows 1 request per 30 s per account, which is why it runs in the tenant's account.

use aws_sdk_apigateway::Client;
use aws_sdk_apigateway::types::{EndpointConfiguration, EndpointType, Op, PatchOperation};

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

pub struct ApiGateway {
    aws: Aws,
    client: Client,
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
        Self {
            aws: aws.clone(),
            client: Client::new(&aws.sdk),
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
        match self
            .aws
            .call(
                "apigateway.DeleteBasePathMapping",
                self.client
                    .delete_base_path_mapping()
                    .domain_name(domain)
                    .base_path("(none)")
                    .send(),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code == "NotFoundException" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the custom domain; `Ok(false)` if there was none.
    pub async fn delete_domain(&self, domain: &str) -> Result<bool, AwsError> {
        match self
            .aws
            .call(
                "apigateway.DeleteDomainName",
                self.client.delete_domain_name().domain_name(domain).send(),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code == "NotFoundException" => Ok(false),
            Err(e) => Err(e),
        }
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
}
