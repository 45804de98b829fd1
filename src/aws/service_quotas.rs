//! Service Quotas inside a tenant account: the quota values a new account needs above AWS's defaults
//! (`VEND_SERVICE_QUOTAS`), asked for once. AWS decides a request in minutes or days; vend records the
//! request and does not wait for it.

use aws_sdk_servicequotas::Client;
use aws_sdk_servicequotas::types::RequestStatus;

use super::{Aws, AwsError};

pub struct ServiceQuotas {
    aws: Aws,
    client: Client,
}

/// A request for a quota's increase that AWS has not decided yet.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRequest {
    pub id: String,
    pub desired: f64,
}

impl ServiceQuotas {
    /// Service Quotas as `aws` sees it: the account it acts in, in its region.
    pub fn new(aws: &Aws) -> Self {
        Self {
            aws: aws.clone(),
            client: Client::new(&aws.sdk),
        }
    }

    /// The quota's value for the account: the applied value, else AWS's default (a new account has
    /// no applied value for most quotas). `None` if the service has no such quota.
    pub async fn value(&self, service: &str, quota: &str) -> Result<Option<f64>, AwsError> {
        let applied = self
            .aws
            .call(
                "service-quotas.GetServiceQuota",
                self.client
                    .get_service_quota()
                    .service_code(service)
                    .quota_code(quota)
                    .send(),
            )
            .await;
        match applied {
            Ok(out) => return Ok(out.quota().and_then(|q| q.value())),
            Err(e) if e.code != "NoSuchResourceException" => return Err(e),
            Err(_) => {}
        }
        match self
            .aws
            .call(
                "service-quotas.GetAWSDefaultServiceQuota",
                self.client
                    .get_aws_default_service_quota()
                    .service_code(service)
                    .quota_code(quota)
                    .send(),
            )
            .await
        {
            Ok(out) => Ok(out.quota().and_then(|q| q.value())),
            Err(e) if e.code == "NoSuchResourceException" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The account's undecided request for the quota, if any (an earlier attempt's whose answer was
    /// lost, or one made by hand): asking again would be refused.
    pub async fn open_request(
        &self,
        service: &str,
        quota: &str,
    ) -> Result<Option<OpenRequest>, AwsError> {
        let mut next: Option<String> = None;
        loop {
            let out = self
                .aws
                .call(
                    "service-quotas.ListRequestedServiceQuotaChangeHistoryByQuota",
                    self.client
                        .list_requested_service_quota_change_history_by_quota()
                        .service_code(service)
                        .quota_code(quota)
                        .set_next_token(next.take())
                        .send(),
                )
                .await?;
            let open = out.requested_quotas().iter().find(|r| {
                matches!(
                    r.status(),
                    Some(RequestStatus::Pending | RequestStatus::CaseOpened)
                )
            });
            if let Some(r) = open {
                return Ok(Some(OpenRequest {
                    id: r.id().unwrap_or_default().to_owned(),
                    desired: r.desired_value().unwrap_or_default(),
                }));
            }
            match out.next_token() {
                Some(t) => next = Some(t.to_owned()),
                None => return Ok(None),
            }
        }
    }

    /// Asks for the quota to be raised to `value`; the request's id.
    pub async fn request(
        &self,
        service: &str,
        quota: &str,
        value: f64,
    ) -> Result<String, AwsError> {
        let out = self
            .aws
            .call(
                "service-quotas.RequestServiceQuotaIncrease",
                self.client
                    .request_service_quota_increase()
                    .service_code(service)
                    .quota_code(quota)
                    .desired_value(value)
                    .send(),
            )
            .await?;
        Ok(out
            .requested_quota()
            .and_then(|r| r.id())
            .unwrap_or_default()
            .to_owned())
    }
}
