//! Why talking to the upstream failed: the `kind` label of the error
//! metrics and the stats, decided where the failure is met.

/// Why talking to the upstream failed (`kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Refused, unreachable or DNS failure.
    Connect,
    Tls,
    /// Refused by `API_PROXY_TARGET_POLICY`.
    Policy,
    /// Connect, response-header or idle timeout.
    Timeout,
    /// Connection reset or closed early.
    Reset,
    /// Malformed response.
    Protocol,
}

impl UpstreamErrorKind {
    pub(crate) const ALL: [UpstreamErrorKind; 6] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Policy,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Protocol,
    ];

    /// The error `type` (SPEC §3) a failure of this kind is answered or
    /// logged with.
    pub(crate) fn error_type(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect | UpstreamErrorKind::Tls | UpstreamErrorKind::Policy => {
                "upstream_connect"
            }
            UpstreamErrorKind::Timeout => "upstream_timeout",
            UpstreamErrorKind::Reset | UpstreamErrorKind::Protocol => "upstream_error",
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Policy => "policy",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}
