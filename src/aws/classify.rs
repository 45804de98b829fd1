//! Error classification for every AWS call: throttled (slow down, keep the attempt budget), transient
//! (retry with backoff), permanent (fail the step; ops fix and retry). The codes come from AWS's API
//! references and from what existing vending tools learned the hard way (AWS-FACTS.md).

use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::domain::ErrorClass;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {code}: {message}")]
pub struct AwsError {
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
    pub retry_after: Option<Duration>,
    pub operation: &'static str,
    /// AWS's id for the request, from the error or the answer's headers.
    pub request_id: Option<String>,
}

impl AwsError {
    pub fn new(class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            operation: "",
            request_id: None,
        }
    }

    pub fn during(mut self, operation: &'static str) -> Self {
        if self.operation.is_empty() {
            self.operation = operation;
            if self.code == "LimitExceededException" && is_quota_service(operation) {
                // A count quota (certificates, stacks, roles, rules), not a rate: waiting does not
                // free it, ops must raise it or clean up, so the step fails with AWS's message.
                self.class = ErrorClass::Permanent;
            }
            if !self.message.starts_with(operation) {
                self.message = format!("{operation}: {}", self.message);
            }
        }
        self
    }
}

/// Codes AWS uses for "slow down". `PriorRequestNotComplete` (Route53: the zone's previous change is
/// not in sync yet) behaves the same way: wait and send again.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "PriorRequestNotComplete",
    "LimitExceededException",
    "BandwidthLimitExceeded",
    "EC2ThrottledException",
];

/// Services whose `LimitExceededException` is a quota on how many of something exist. API Gateway's
/// (HTTP 429) is its request rate, and stays throttling.
fn is_quota_service(operation: &str) -> bool {
    matches!(
        operation.split('.').next(),
        Some("acm" | "cloudformation" | "iam" | "eventbridge" | "organizations")
    )
}

/// Codes that are worth retrying as they are. `ConcurrentModificationException` must never fail a
/// tenant: one public operator that did so created accounts in a loop.
const TRANSIENT: &[&str] = &[
    "ConcurrentModificationException",
    "ResourceInUseException",
    "ConflictException",
    "FinalizingOrganizationException",
    "ServiceException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "InternalServiceError",
    "InternalServerErrorException",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestExpired",
    "IDPCommunicationError",
    "OperationAborted",
];

/// Classifies a service's error code and HTTP status.
pub fn class_of(code: &str, status: Option<u16>) -> ErrorClass {
    if THROTTLING.contains(&code) || status == Some(429) {
        ErrorClass::Throttled
    } else if TRANSIENT.contains(&code) || status.is_some_and(|s| s >= 500) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

fn retry_after(resp: &HttpResponse) -> Option<Duration> {
    resp.headers()
        .get("retry-after")
        .and_then(crate::net::parse_retry_after)
}

impl<E> From<SdkError<E, HttpResponse>> for AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn from(err: SdkError<E, HttpResponse>) -> Self {
        match &err {
            SdkError::ServiceError(s) => {
                let status = s.raw().status().as_u16();
                let code = s.err().code().unwrap_or("").to_owned();
                let code = if code.is_empty() {
                    format!("Http{status}")
                } else {
                    code
                };
                let message = s
                    .err()
                    .message()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP {status}"));
                AwsError {
                    class: class_of(&code, Some(status)),
                    code,
                    message,
                    retry_after: retry_after(s.raw()),
                    operation: "",
                    request_id: s
                        .err()
                        .meta()
                        .extra("aws_request_id")
                        .map(str::to_owned)
                        .or_else(|| request_id(s.raw())),
                }
            }
            // No answer, or an answer that could not be read: the outcome is unknown, try again.
            SdkError::TimeoutError(_) => AwsError::new(
                ErrorClass::Transient,
                "Timeout",
                "AWS did not answer in time",
            ),
            SdkError::DispatchFailure(d) => {
                let what = if d.is_timeout() {
                    "timed out connecting to AWS"
                } else if d.is_io() {
                    "could not reach AWS (connection error)"
                } else {
                    "could not send the request to AWS"
                };
                AwsError::new(ErrorClass::Transient, "ConnectionError", what)
            }
            SdkError::ResponseError(r) => {
                let status = r.raw().status().as_u16();
                AwsError {
                    class: class_of("", Some(status)).max_transient(),
                    code: "ResponseError".into(),
                    message: format!("unreadable answer from AWS (HTTP {status})"),
                    retry_after: retry_after(r.raw()),
                    operation: "",
                    request_id: request_id(r.raw()),
                }
            }
            SdkError::ConstructionFailure(_) => AwsError::new(
                ErrorClass::Permanent,
                "InvalidRequest",
                "the request could not be built",
            ),
            _ => AwsError::new(ErrorClass::Transient, "Unknown", err.to_string()),
        }
    }
}

/// The request id AWS puts in its answer's headers (the name differs between protocols).
fn request_id(raw: &HttpResponse) -> Option<String> {
    ["x-amzn-requestid", "x-amz-request-id", "x-amzn-request-id"]
        .iter()
        .find_map(|h| raw.headers().get(*h))
        .map(str::to_owned)
}

trait MaxTransient {
    fn max_transient(self) -> Self;
}

impl MaxTransient for ErrorClass {
    /// An unreadable answer is never a reason to give up.
    fn max_transient(self) -> Self {
        match self {
            ErrorClass::Permanent => ErrorClass::Transient,
            c => c,
        }
    }
}

/// Whether an error means the outcome of a call is unknown (AWS may or may not have acted on it).
pub fn outcome_unknown(e: &AwsError) -> bool {
    matches!(
        e.code.as_str(),
        "Timeout" | "ConnectionError" | "ResponseError" | "Unknown"
    ) || e.code.starts_with("Http5")
        || matches!(
            e.code.as_str(),
            "InternalFailure" | "ServiceException" | "InternalError"
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StepError;

    #[test]
    fn limit_exceeded_is_a_quota_or_a_rate_depending_on_the_service() {
        let e = |op| {
            AwsError::new(
                class_of("LimitExceededException", Some(400)),
                "LimitExceededException",
                "x",
            )
            .during(op)
        };
        assert_eq!(e("acm.RequestCertificate").class, ErrorClass::Permanent);
        assert_eq!(e("cloudformation.CreateStack").class, ErrorClass::Permanent);
        assert_eq!(
            e("apigateway.CreateDomainName").class,
            ErrorClass::Throttled
        );
    }

    #[test]
    fn throttling_codes_and_429_are_throttled() {
        for c in [
            "Throttling",
            "TooManyRequestsException",
            "PriorRequestNotComplete",
            "ThrottlingException",
        ] {
            assert_eq!(class_of(c, Some(400)), ErrorClass::Throttled, "{c}");
        }
        assert_eq!(class_of("Anything", Some(429)), ErrorClass::Throttled);
    }

    #[test]
    fn concurrency_conflicts_and_server_errors_are_transient() {
        for c in [
            "ConcurrentModificationException",
            "ResourceInUseException",
            "ServiceException",
            "ConflictException",
        ] {
            assert_eq!(class_of(c, Some(400)), ErrorClass::Transient, "{c}");
        }
        assert_eq!(class_of("Whatever", Some(503)), ErrorClass::Transient);
    }

    #[test]
    fn other_client_errors_are_permanent() {
        for c in [
            "ValidationError",
            "AccessDeniedException",
            "InvalidInputException",
        ] {
            assert_eq!(class_of(c, Some(400)), ErrorClass::Permanent, "{c}");
        }
    }

    #[test]
    fn a_service_error_keeps_awss_request_id_from_the_error_or_the_headers() {
        use aws_sdk_organizations::operation::create_account::CreateAccountError;
        use aws_smithy_types::error::ErrorMetadata;
        let answer = |header: Option<&str>| {
            let mut r = HttpResponse::new(
                aws_smithy_runtime_api::http::StatusCode::try_from(400).unwrap(),
                aws_smithy_types::body::SdkBody::empty(),
            );
            if let Some(id) = header {
                r.headers_mut().insert("x-amzn-RequestId", id.to_owned());
            }
            r
        };
        let err = |extra: Option<&str>| {
            let mut m = ErrorMetadata::builder()
                .code("ConstraintViolationException")
                .message("no");
            if let Some(id) = extra {
                m = m.custom("aws_request_id", id);
            }
            CreateAccountError::generic(m.build())
        };
        let from_headers: AwsError = SdkError::service_error(err(None), answer(Some("h-1"))).into();
        assert_eq!(from_headers.request_id.as_deref(), Some("h-1"));
        let from_body: AwsError =
            SdkError::service_error(err(Some("b-2")), answer(Some("h-1"))).into();
        assert_eq!(from_body.request_id.as_deref(), Some("b-2"));
        let none: AwsError = SdkError::service_error(err(None), answer(None)).into();
        assert_eq!(none.request_id, None);
        assert_eq!(
            StepError::from(from_headers).request_id.as_deref(),
            Some("h-1"),
            "kept into the step's error"
        );
    }

    #[test]
    fn the_operation_is_named_once() {
        let e =
            AwsError::new(ErrorClass::Transient, "X", "boom").during("organizations.CreateAccount");
        assert_eq!(e.message, "organizations.CreateAccount: boom");
        let e = e.during("other");
        assert_eq!(e.operation, "organizations.CreateAccount");
    }
}
