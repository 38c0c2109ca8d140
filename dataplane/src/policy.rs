//! `API_PROXY_TARGET_POLICY`: which resolved upstream addresses may be
//! dialled. Checked on the address actually about to be connected (after
//! DNS), so a name that resolves somewhere forbidden is refused however the
//! mapping spells it.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tower_service::Service;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TargetPolicy {
    /// Any address.
    Any,
    /// Refuse link-local addresses and the cloud metadata endpoints.
    NoLinkLocal,
    /// Also refuse loopback, private, CGNAT and unique-local addresses.
    PublicOnly,
}

impl TargetPolicy {
    /// Whether this policy lets the proxy dial `ip`.
    pub(crate) fn allows(self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match self {
            TargetPolicy::Any => true,
            TargetPolicy::NoLinkLocal => !is_link_local_or_metadata(ip),
            TargetPolicy::PublicOnly => !is_link_local_or_metadata(ip) && !is_non_public(ip),
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:169.254.169.254`) are judged as the
/// IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// AWS's IPv6 metadata endpoint; its IPv4 one (169.254.169.254) is
/// link-local already.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// Alibaba Cloud's metadata endpoint, outside the link-local range.
const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);

fn is_link_local_or_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4 == ALIBABA_METADATA,
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == AWS_METADATA_V6,
    }
}

fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
                || a == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // ULA fc00::/7
        }
    }
}

/// The policy refused every address a host resolved to.
#[derive(Debug, thiserror::Error)]
#[error("target policy refuses {addr} for {host}")]
pub(crate) struct PolicyDenied {
    pub(crate) host: String,
    pub(crate) addr: IpAddr,
}

/// A DNS resolver that drops the addresses the policy refuses, and fails
/// with [`PolicyDenied`] when none is left.
#[derive(Clone)]
pub(crate) struct PolicyResolver {
    inner: GaiResolver,
    policy: TargetPolicy,
}

impl PolicyResolver {
    pub(crate) fn new(policy: TargetPolicy) -> Self {
        PolicyResolver {
            inner: GaiResolver::new(),
            policy,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        let lookup = self.inner.call(name);
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = lookup.await?.collect();
            filter(policy, &host, resolved).map(Vec::into_iter)
        })
    }
}

/// Keeps the allowed addresses; none allowed is an error naming the first.
pub(crate) fn filter(
    policy: TargetPolicy,
    host: &str,
    addrs: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, BoxError> {
    let first = addrs.first().map(SocketAddr::ip);
    let allowed: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| policy.allows(a.ip()))
        .collect();
    match (allowed.is_empty(), first) {
        (true, Some(addr)) => Err(Box::new(PolicyDenied {
            host: host.to_owned(),
            addr,
        })),
        _ => Ok(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_link_local_refuses_metadata_endpoints() {
        let p = TargetPolicy::NoLinkLocal;
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
        ] {
            assert!(!p.allows(ip(bad)), "{bad}");
        }
        for good in ["127.0.0.1", "10.0.0.1", "8.8.8.8", "::1", "2606:4700::1111"] {
            assert!(p.allows(ip(good)), "{good}");
        }
    }

    #[test]
    fn public_only_also_refuses_private_ranges() {
        let p = TargetPolicy::PublicOnly;
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fd12::1",
            "::ffff:10.0.0.1",
            "169.254.169.254",
        ] {
            assert!(!p.allows(ip(bad)), "{bad}");
        }
        for good in ["8.8.8.8", "100.128.0.1", "2606:4700::1111"] {
            assert!(p.allows(ip(good)), "{good}");
        }
    }

    #[test]
    fn any_allows_everything() {
        assert!(TargetPolicy::Any.allows(ip("169.254.169.254")));
    }

    #[test]
    fn filter_keeps_allowed_and_fails_when_none_left() {
        let addrs = vec![
            "169.254.169.254:80".parse().unwrap(),
            "8.8.8.8:80".parse().unwrap(),
        ];
        let kept = filter(TargetPolicy::NoLinkLocal, "h", addrs).unwrap();
        assert_eq!(kept, vec!["8.8.8.8:80".parse().unwrap()]);
        let err = filter(
            TargetPolicy::PublicOnly,
            "h",
            vec!["127.0.0.1:80".parse().unwrap()],
        )
        .unwrap_err();
        assert!(err.is::<PolicyDenied>());
    }
}
