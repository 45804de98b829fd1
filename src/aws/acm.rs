//! ACM in a tenant account: the certificate of the tenant's custom domain. API Gateway takes a regional
//! certificate only from its own account and region, and ACM certificates cannot be shared across
//! accounts, so on AWS every tenant account needs its own, validated by a DNS record in the central zone.

use aws_sdk_acm::Client;
use aws_sdk_acm::types::{CertificateStatus, KeyAlgorithm, Tag, ValidationMethod};

use crate::domain::ErrorClass;

use super::{Aws, AwsError};

/// What a certificate is waiting for, or that it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertState {
    Issued,
    /// Waiting for DNS validation; the CNAME ACM wants to see (name, value), once ACM has said which.
    PendingValidation(Option<(String, String)>),
    /// Will never be issued (`FAILED`, `VALIDATION_TIMED_OUT`, `REVOKED`, `EXPIRED`, `INACTIVE`), with
    /// ACM's reason when it gave one.
    Unusable(String),
}

pub struct Acm {
    aws: Aws,
    client: Client,
}

impl Acm {
    /// ACM as `aws` (scoped to a tenant account) sees it.
    pub fn new(aws: &Aws) -> Self {
        Self {
            aws: aws.clone(),
            client: Client::new(&aws.sdk),
        }
    }

    /// A certificate for exactly `domain` that is issued or still being validated, if the account has
    /// one: what an earlier attempt requested before it could record the ARN.
    pub async fn find(&self, domain: &str) -> Result<Option<String>, AwsError> {
        let mut next: Option<String> = None;
        loop {
            let out = self
                .aws
                .call(
                    "acm.ListCertificates",
                    self.client
                        .list_certificates()
                        .certificate_statuses(CertificateStatus::Issued)
                        .certificate_statuses(CertificateStatus::PendingValidation)
                        .set_next_token(next.take())
                        .send(),
                )
                .await?;
            let found = out.certificate_summary_list().iter().find_map(|c| {
                c.domain_name()
                    .is_some_and(|d| d.eq_ignore_ascii_case(domain))
                    .then(|| c.certificate_arn().map(str::to_owned))
                    .flatten()
            });
            if found.is_some() {
                return Ok(found);
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => return Ok(None),
            }
        }
    }

    /// Requests a DNS-validated certificate for `domain`. ACM answers a repeat with the same
    /// `idempotency_token` within an hour with the same certificate, which covers the window in which
    /// a new certificate may not be listed yet.
    pub async fn request(&self, domain: &str, idempotency_token: &str) -> Result<String, AwsError> {
        let tag = Tag::builder()
            .key("vend:managed-by")
            .value("vend")
            .build()
            .map_err(|e| AwsError::new(ErrorClass::Permanent, "InvalidRequest", e.to_string()))?;
        let out = self
            .aws
            .call(
                "acm.RequestCertificate",
                self.client
                    .request_certificate()
                    .domain_name(domain)
                    .validation_method(ValidationMethod::Dns)
                    .key_algorithm(KeyAlgorithm::Rsa2048)
                    .idempotency_token(idempotency_token)
                    .tags(tag)
                    .send(),
            )
            .await
            .map_err(|e| match e.code.as_str() {
                // ACM's quota of certificates per account (and per year) is reached: waiting does not
                // help, a person must raise the quota or delete certificates.
                "LimitExceededException" => {
                    let mut p = AwsError::new(ErrorClass::Permanent, e.code.clone(), e.message);
                    p.operation = e.operation;
                    p
                }
                _ => e,
            })?;
        out.certificate_arn().map(str::to_owned).ok_or_else(|| {
            AwsError::new(
                ErrorClass::Transient,
                "EmptyResponse",
                "RequestCertificate returned no certificate ARN",
            )
        })
    }

    /// The certificate's state; `None` if the account has no such certificate (deleted by a person).
    pub async fn state(&self, arn: &str) -> Result<Option<CertState>, AwsError> {
        let out = match self
            .aws
            .call(
                "acm.DescribeCertificate",
                self.client
                    .describe_certificate()
                    .certificate_arn(arn)
                    .send(),
            )
            .await
        {
            Ok(out) => out,
            Err(e) if e.code == "ResourceNotFoundException" => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(cert) = out.certificate() else {
            return Ok(None);
        };
        let state = match cert.status() {
            Some(CertificateStatus::Issued) => CertState::Issued,
            Some(CertificateStatus::PendingValidation) => {
                // ACM fills in the record a few seconds after the request.
                let record = cert
                    .domain_validation_options()
                    .iter()
                    .find_map(|o| o.resource_record())
                    .map(|r| (r.name().to_owned(), r.value().to_owned()));
                CertState::PendingValidation(record)
            }
            other => CertState::Unusable(format!(
                "{}{}",
                other.map_or("UNKNOWN", |s| s.as_str()),
                cert.failure_reason()
                    .map(|r| format!(" ({})", r.as_str()))
                    .unwrap_or_default()
            )),
        };
        Ok(Some(state))
    }
}
