//! Each AWS service's wire protocol, as far as the proxy needs it: which service and operation a
//! request is, who calls, and how that service spells an error.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Json,
    Query,
    RestXml,
    RestJson,
    /// EC2's query protocol, whose errors have a shape of their own.
    Ec2,
}

pub(crate) fn protocol(service: &str) -> Option<Protocol> {
    match service {
        "organizations" | "events" | "acm" | "servicequotas" | "sso" => Some(Protocol::Json),
        "sts" | "iam" | "cloudformation" => Some(Protocol::Query),
        "ec2" => Some(Protocol::Ec2),
        "route53" => Some(Protocol::RestXml),
        "apigateway" | "account" => Some(Protocol::RestJson),
        _ => None,
    }
}

/// The SigV4 credential scope names the service; the access key stands for the calling account.
pub(crate) fn caller(headers: &HeaderMap) -> (String, String) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let cred = auth
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split(',').next())
        .unwrap_or("");
    let parts: Vec<&str> = cred.split('/').collect();
    let key = parts.first().copied().unwrap_or("").to_owned();
    let service = parts.get(3).copied().unwrap_or("").to_owned();
    (service, key)
}

pub(crate) fn rest_operation(service: &str, method: &Method, path: &str) -> String {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let m = method.as_str();
    let name = match (service, m, segs.as_slice()) {
        ("route53", "GET", [_, "hostedzonesbyname"]) => "ListHostedZonesByName",
        ("route53", "POST", [_, "hostedzone"]) => "CreateHostedZone",
        ("route53", "POST", [_, "hostedzone", _, "rrset"]) => "ChangeResourceRecordSets",
        ("route53", "GET", [_, "hostedzone", _, "rrset"]) => "ListResourceRecordSets",
        ("route53", "GET", [_, "change", _]) => "GetChange",
        ("apigateway", "POST", ["domainnames"]) => "CreateDomainName",
        ("apigateway", "GET", ["domainnames"]) => "GetDomainNames",
        ("apigateway", "GET", ["domainnames", _]) => "GetDomainName",
        ("apigateway", "POST", ["domainnames", _, "basepathmappings"]) => "CreateBasePathMapping",
        ("apigateway", "GET", ["domainnames", _, "basepathmappings"]) => "GetBasePathMappings",
        ("apigateway", "GET", ["domainnames", _, "basepathmappings", _]) => "GetBasePathMapping",
        ("apigateway", "PATCH", ["domainnames", _, "basepathmappings", _]) => {
            "UpdateBasePathMapping"
        }
        ("apigateway", _, ["restapis", ..]) => return format!("{m}RestApis"),
        _ => {
            return format!(
                "{m}{}",
                segs.first().map(|s| format!("/{s}")).unwrap_or_default()
            );
        }
    };
    name.to_owned()
}

pub(crate) fn operation(
    service: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> String {
    if let Some(t) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return t.rsplit('.').next().unwrap_or(t).to_owned();
    }
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if form {
        for (k, v) in url::form_urlencoded::parse(body) {
            if k == "Action" {
                return v.into_owned();
            }
        }
    }
    rest_operation(service, method, uri.path())
}

/// An error in the service's own wire protocol.
pub(crate) fn aws_error(
    proto: Protocol,
    service: &str,
    status: u16,
    code: &str,
    message: &str,
    retry_after: Option<u64>,
) -> Response {
    let status = StatusCode::from_u16(status).expect("valid status");
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = match proto {
        Protocol::Json => (
            status,
            [("content-type", "application/x-amz-json-1.1")],
            json!({"__type": code, "Message": message}).to_string(),
        )
            .into_response(),
        Protocol::Query | Protocol::RestXml => {
            let ns = match service {
                "route53" => "https://route53.amazonaws.com/doc/2013-04-01/",
                "sts" => "https://sts.amazonaws.com/doc/2011-06-15/",
                "iam" => "https://iam.amazonaws.com/doc/2010-05-08/",
                _ => "http://cloudformation.amazonaws.com/doc/2010-05-15/",
            };
            let kind = if status.is_server_error() {
                "Receiver"
            } else {
                "Sender"
            };
            let body = format!(
                "<ErrorResponse xmlns=\"{ns}\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            );
            (status, [("content-type", "text/xml")], body).into_response()
        }
        Protocol::RestJson => (
            status,
            [("content-type", "application/json")],
            json!({"message": message}).to_string(),
        )
            .into_response(),
        Protocol::Ec2 => (
            status,
            [("content-type", "text/xml")],
            format!(
                "<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
            ),
        )
            .into_response(),
    };
    let h = resp.headers_mut();
    h.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&request_id).expect("uuid header"),
    );
    if proto == Protocol::RestJson {
        h.insert(
            "x-amzn-errortype",
            HeaderValue::from_str(code).expect("code header"),
        );
    }
    if let Some(s) = retry_after {
        h.insert("retry-after", HeaderValue::from(s));
    }
    resp
}

pub(crate) fn throttle(proto: Protocol, service: &str, operation: &str) -> Response {
    match (proto, service) {
        (Protocol::Json, "events") => aws_error(
            proto,
            service,
            400,
            "ThrottlingException",
            "Rate exceeded",
            None,
        ),
        (Protocol::Json, _) => aws_error(
            proto,
            service,
            400,
            "TooManyRequestsException",
            "AWS Organizations can't complete your request because another request is already in progress or the rate is exceeded.",
            None,
        ),
        (Protocol::RestXml, _) if operation == "ChangeResourceRecordSets" => aws_error(
            proto,
            service,
            400,
            "PriorRequestNotComplete",
            "The request was rejected because Route 53 was still processing a prior request.",
            None,
        ),
        (Protocol::Query | Protocol::RestXml, _) => {
            aws_error(proto, service, 400, "Throttling", "Rate exceeded", None)
        }
        (Protocol::RestJson, _) => aws_error(
            proto,
            service,
            429,
            "TooManyRequestsException",
            "Too Many Requests",
            Some(1),
        ),
        (Protocol::Ec2, _) => aws_error(
            proto,
            service,
            503,
            "RequestLimitExceeded",
            "Request limit exceeded.",
            None,
        ),
    }
}

pub(crate) fn server_error(proto: Protocol, service: &str) -> Response {
    match proto {
        Protocol::Json if service == "organizations" => aws_error(
            proto,
            service,
            500,
            "ServiceException",
            "AWS Organizations can't complete your request because of an internal service error.",
            None,
        ),
        Protocol::Json => aws_error(
            proto,
            service,
            500,
            "InternalException",
            "Internal error",
            None,
        ),
        Protocol::Query => aws_error(
            proto,
            service,
            500,
            "InternalFailure",
            "Internal failure",
            None,
        ),
        Protocol::RestXml => aws_error(
            proto,
            service,
            503,
            "ServiceUnavailable",
            "Service unavailable",
            None,
        ),
        Protocol::RestJson => aws_error(
            proto,
            service,
            503,
            "ServiceUnavailableException",
            "Service Unavailable",
            None,
        ),
        Protocol::Ec2 => aws_error(
            proto,
            service,
            500,
            "InternalError",
            "An internal error has occurred",
            None,
        ),
    }
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        v.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ec2_errors_come_in_ec2s_own_shape() {
        assert_eq!(protocol("ec2"), Some(Protocol::Ec2));
        let r = throttle(Protocol::Ec2, "ec2", "DescribeVpcs");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.starts_with("<Response><Errors><Error><Code>RequestLimitExceeded</Code>"),
            "{body}"
        );
        assert!(body.contains("<RequestID>"), "{body}");
    }

    #[test]
    fn operations_are_named_per_protocol() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-target",
            "AWSOrganizationsV20161128.CreateAccount".parse().unwrap(),
        );
        assert_eq!(
            operation(
                "organizations",
                &Method::POST,
                &"/".parse().unwrap(),
                &h,
                b""
            ),
            "CreateAccount"
        );
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            operation(
                "sts",
                &Method::POST,
                &"/".parse().unwrap(),
                &h,
                b"Action=AssumeRole&Version=2011-06-15"
            ),
            "AssumeRole"
        );
        let h = HeaderMap::new();
        assert_eq!(
            operation(
                "route53",
                &Method::POST,
                &"/2013-04-01/hostedzone/Z1/rrset/".parse().unwrap(),
                &h,
                b""
            ),
            "ChangeResourceRecordSets"
        );
        assert_eq!(
            operation(
                "apigateway",
                &Method::GET,
                &"/domainnames/a.example/basepathmappings/%28none%29"
                    .parse()
                    .unwrap(),
                &h,
                b""
            ),
            "GetBasePathMapping"
        );
    }

    #[test]
    fn the_caller_comes_from_the_credential_scope() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261123/us-east-1/route53/aws4_request, SignedHeaders=host, Signature=x"
                .parse()
                .unwrap(),
        );
        assert_eq!(caller(&h), ("route53".into(), "AKIDEXAMPLE".into()));
    }
}
