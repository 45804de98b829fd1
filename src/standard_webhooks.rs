//! Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
//! `{id}.{timestamp}.{body}` keyed with the base64 part of a `whsec_` secret, sent as `v1,<base64>`.
//! Used to verify inbound signups and to sign outbound progress webhooks.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Inbound timestamps further than this from now are rejected (replay protection).
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// A signing key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 5 minutes from now")]
    StaleTimestamp,
    #[error("no valid signature in webhook-signature")]
    NoValidSignature,
}

impl Secret {
    /// Parses `whsec_<base64>`; the message never includes the secret itself.
    pub fn parse(s: &str) -> Result<Self, String> {
        let b64 = s
            .strip_prefix("whsec_")
            .ok_or_else(|| "must start with \"whsec_\"".to_string())?;
        let key = B64
            .decode(b64)
            .map_err(|_| "the part after \"whsec_\" must be base64".to_string())?;
        if key.len() < 16 {
            return Err("the key must be at least 16 bytes".into());
        }
        Ok(Self(key))
    }

    pub fn from_bytes(key: Vec<u8>) -> Self {
        Self(key)
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", B64.encode(tag))
    }

    /// Verifies the three Standard Webhooks headers against `body` at time `now` (unix seconds).
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let id = id
            .filter(|s| !s.is_empty())
            .ok_or(SignatureError::MissingHeader("webhook-id"))?;
        let ts = timestamp
            .filter(|s| !s.is_empty())
            .ok_or(SignatureError::MissingHeader("webhook-timestamp"))?;
        let sigs = signatures
            .filter(|s| !s.is_empty())
            .ok_or(SignatureError::MissingHeader("webhook-signature"))?;
        let ts: i64 = ts
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        if (now - ts).abs() > TOLERANCE_SECS {
            return Err(SignatureError::StaleTimestamp);
        }
        let mac = self.mac(id, ts, body);
        for sig in sigs.split(' ') {
            let Some(b64) = sig.strip_prefix("v1,") else {
                continue;
            };
            let Ok(tag) = B64.decode(b64) else { continue };
            // An empty or truncated tag must never pass: verify_slice checks the full length, in
            // constant time.
            if !tag.is_empty() && mac.clone().verify_slice(&tag).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::NoValidSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret() -> Secret {
        Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
    }

    #[test]
    fn matches_the_specification_test_vector() {
        // The example from the Standard Webhooks reference libraries.
        let s = secret();
        let body = br#"{"test": 2432232314}"#;
        let sig = s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(
            s.verify(
                Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
                Some("1614265330"),
                Some(&sig),
                body,
                1614265330 + 10
            )
            .is_ok()
        );
    }

    #[test]
    fn one_valid_signature_among_several_is_enough() {
        let s = secret();
        let good = s.sign("id", 100, b"x");
        let header = format!("v1,AAAA v2,zzz {good}");
        assert!(
            s.verify(Some("id"), Some("100"), Some(&header), b"x", 100)
                .is_ok()
        );
    }

    #[test]
    fn rejects_empty_truncated_and_foreign_signatures() {
        let s = secret();
        let good = s.sign("id", 100, b"x");
        for bad in ["v1,", "v1", "v1, ", &good[..good.len() - 8], "v2,abc"] {
            assert_eq!(
                s.verify(Some("id"), Some("100"), Some(bad), b"x", 100),
                Err(SignatureError::NoValidSignature),
                "{bad:?}"
            );
        }
        let other = Secret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert!(
            other
                .verify(Some("id"), Some("100"), Some(&good), b"x", 100)
                .is_err()
        );
        assert!(
            s.verify(Some("id"), Some("100"), Some(&good), b"y", 100)
                .is_err()
        );
        assert!(
            s.verify(Some("id2"), Some("100"), Some(&good), b"x", 100)
                .is_err()
        );
    }

    #[test]
    fn rejects_stale_and_future_timestamps() {
        let s = secret();
        let sig = s.sign("id", 1000, b"x");
        assert_eq!(
            s.verify(Some("id"), Some("1000"), Some(&sig), b"x", 1000 + 301),
            Err(SignatureError::StaleTimestamp)
        );
        assert_eq!(
            s.verify(Some("id"), Some("1000"), Some(&sig), b"x", 1000 - 301),
            Err(SignatureError::StaleTimestamp)
        );
        assert!(
            s.verify(Some("id"), Some("1000"), Some(&sig), b"x", 1300)
                .is_ok()
        );
        assert_eq!(
            s.verify(Some("id"), Some("soon"), Some(&sig), b"x", 1000),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            s.verify(None, Some("1000"), Some(&sig), b"x", 1000),
            Err(SignatureError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn secret_parsing_explains_without_echoing() {
        let e = Secret::parse("abc").unwrap_err();
        assert!(e.contains("whsec_") && !e.contains("abc"));
        assert!(Secret::parse("whsec_!!!").is_err());
        assert_eq!(format!("{:?}", secret()), "Secret(..)");
    }

    proptest! {
        #[test]
        fn verify_never_panics_and_accepts_only_real_signatures(
            id in ".{0,40}", ts in ".{0,12}", sig in ".{0,120}", body in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            let s = secret();
            let r = s.verify(Some(&id), Some(&ts), Some(&sig), &body, 1_000);
            if r.is_ok() {
                let t: i64 = ts.trim().parse().unwrap();
                prop_assert!(sig.split(' ').any(|x| x == s.sign(&id, t, &body)));
            }
        }

        #[test]
        fn sign_then_verify_round_trips(id in "[a-z0-9_]{1,40}", body in proptest::collection::vec(any::<u8>(), 0..512), ts in 0i64..2_000_000_000) {
            let s = secret();
            let sig = s.sign(&id, ts, &body);
            prop_assert!(s.verify(Some(&id), Some(&ts.to_string()), Some(&sig), &body, ts).is_ok());
        }
    }
}
