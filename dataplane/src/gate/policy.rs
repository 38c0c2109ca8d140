//! A mapping's policy as the request path uses it: who may pass, and the
//! upstream credential, opened once when the policy is applied and kept
//! ready to put in a request; and [`Pass`], what a let-through request
//! changes on its way (its proxy key out, the credential in).

use std::borrow::Cow;

use apiproxy_shared::access::{Access, SecretsKey, StoredPolicy};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tracing::error;

use super::client_key;
use super::Admitted;

/// An upstream credential, opened and ready to put in a request.
#[derive(Clone)]
pub(super) enum Credential {
    Header(HeaderName, HeaderValue),
    /// The parameter's name and the whole `name=value` pair, encoded.
    Query(Box<str>, Box<str>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Header(name, _) => write!(f, "Credential::Header({name}, …)"),
            Credential::Query(name, _) => write!(f, "Credential::Query({name}, …)"),
        }
    }
}

/// A mapping's policy, ready for the request path.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(super) access: Access,
    /// `Err`: the policy names a credential this node cannot open; its
    /// requests get 503 (fail closed), never a pass without it.
    pub(super) credential: Option<Result<Credential, ()>>,
}

/// Characters a query credential's value is sent with encoded: all but
/// RFC 3986's unreserved.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl Policy {
    /// Makes the policy of `prefix` from its stored form. A credential that
    /// cannot be opened is said once here, when the policy is applied, not
    /// on every request.
    pub(super) fn new(prefix: &str, stored: StoredPolicy, secrets: Option<&SecretsKey>) -> Policy {
        let credential = stored.upstream_credential.map(|c| {
            let refused = |why: &dyn std::fmt::Display| {
                error!(prefix, %why, "this mapping's requests get 503 not_ready");
            };
            let Some(secrets) = secrets else {
                refused(&"its upstream credential needs API_PROXY_SECRETS_KEY, which this node does not have");
                return Err(());
            };
            let secret = secrets.open(prefix, &c.sealed).map_err(|e| refused(&e))?;
            let place = c.place.normalised().map_err(|e| refused(&e))?;
            match (place.header, place.query) {
                (Some(name), _) => {
                    let name = HeaderName::try_from(name).map_err(|e| refused(&e))?;
                    let value = place.template.map_or(secret.clone(), |t| {
                        t.replacen(apiproxy_shared::access::SECRET_PLACEHOLDER, &secret, 1)
                    });
                    let mut value = HeaderValue::try_from(value)
                        .map_err(|_| refused(&"the credential is not a valid header value"))?;
                    // Kept out of HTTP/2 header compression tables and
                    // out of any debug output.
                    value.set_sensitive(true);
                    Ok(Credential::Header(name, value))
                }
                (None, Some(name)) => {
                    let pair = format!("{name}={}", utf8_percent_encode(&secret, QUERY_VALUE));
                    Ok(Credential::Query(name.into(), pair.into()))
                }
                (None, None) => Err(()),
            }
        });
        Policy {
            access: stored.access,
            credential,
        }
    }

    /// A policy that cannot be read: it must not leave its mapping open,
    /// so it refuses every request, as one whose credential cannot be
    /// opened.
    pub(super) fn unreadable() -> Policy {
        Policy {
            access: Access::Key,
            credential: Some(Err(())),
        }
    }
}

/// What the gate lets through, and what it changes on the way.
#[derive(Debug)]
pub struct Pass {
    /// The proxy key, when the mapping needs one.
    pub(crate) key: Option<Admitted>,
    /// The mapping needs a proxy key: every one the request holds is
    /// taken out, in the query and in these key headers (see
    /// [`client_key::find`]).
    pub(super) keyed: bool,
    pub(super) key_headers: u8,
    pub(super) credential: Option<Credential>,
}

impl Pass {
    /// The upstream request's query: the client's without proxy keys and
    /// without the credential's own parameter, with ours added. Borrowed
    /// when nothing changes.
    pub(crate) fn query<'q>(&self, query: Option<&'q str>) -> Option<Cow<'q, str>> {
        let (remove, append) = match &self.credential {
            Some(Credential::Query(name, pair)) => (Some(&**name), Some(&**pair)),
            _ => (None, None),
        };
        // Only a query that may hold `key` (in any case, or encoded as
        // `%6Bey` and the like) is rewritten.
        let may_hold_key = |q: &str| {
            q.contains('%')
                || q.as_bytes()
                    .windows(3)
                    .any(|w| w.eq_ignore_ascii_case(b"key"))
        };
        if remove.is_none() && !(self.keyed && query.is_some_and(may_hold_key)) {
            return query.map(Cow::Borrowed);
        }
        client_key::rewrite_query(query, remove, self.keyed, append).map(Cow::Owned)
    }

    /// Takes the proxy keys out of the headers and puts the credential's in.
    pub(crate) fn rewrite_headers(&self, headers: &mut HeaderMap) {
        match &self.credential {
            Some(Credential::Header(name, value)) => {
                // The credential's header is replaced whole: no need to
                // take a key out of it first.
                let replaced = client_key::bit_of(name);
                client_key::strip_headers(headers, self.key_headers & !replaced);
                headers.insert(name.clone(), value.clone());
            }
            _ => client_key::strip_headers(headers, self.key_headers),
        }
    }
}
