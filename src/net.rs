//! Which network addresses vend may send progress webhooks to: global ones only, so a webhook URL
//! (or a name that resolves oddly) cannot aim vend at its own network, the instance metadata service
//! (169.254.169.254) or anything else that is not on the internet. Loopback only when development
//! allows it (`VEND_ALLOW_HTTP_WEBHOOKS`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

fn v4_is_global(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        // Carrier-grade NAT, and the IETF protocol assignments block.
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking.
        || (a == 198 && (18..20).contains(&b)))
}

fn v6_is_global(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_is_global(v4);
    }
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, documentation 2001:db8::/32.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8))
}

/// Whether a webhook may be sent to `ip`.
pub fn allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    if allow_loopback && ip.is_loopback() {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => v4_is_global(v4),
        IpAddr::V6(v6) => v6_is_global(v6),
    }
}

/// Why a delivery was not even attempted.
pub const REFUSED: &str = "the endpoint's host resolves only to addresses vend does not send to \
                           (private, loopback, link-local or reserved)";

/// A resolver for the webhook client that hands out only allowed addresses, so the check holds for
/// the address actually connected to (a name cannot pass a check and then resolve elsewhere).
#[derive(Debug, Clone, Copy)]
pub struct AllowedOnly {
    pub allow_loopback: bool,
}

impl reqwest::dns::Resolve for AllowedOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let ok: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allowed(a.ip(), allow_loopback))
                .collect();
            if ok.is_empty() {
                return Err(REFUSED.into());
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `Retry-After` as delta-seconds or an HTTP date, capped at a day.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(v).ok()?;
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        }
    };
    Some(d.min(Duration::from_secs(86_400)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_addresses_are_allowed() {
        for bad in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.10",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "2001:db8::1",
        ] {
            assert!(!allowed(bad.parse().unwrap(), false), "{bad}");
        }
        for good in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(allowed(good.parse().unwrap(), false), "{good}");
        }
        assert!(allowed("127.0.0.1".parse().unwrap(), true));
        assert!(!allowed("169.254.169.254".parse().unwrap(), true));
    }
}
