//! `X-Request-Id`: the client's own when it is sane, else one made here.
//! The id goes upstream, comes back on the response, and names the
//! request in the access log, the recent failures and the log lines about
//! it.
//!
//! A made id is this boot's random tag, the worker thread's index (the two
//! written once a thread) and the thread's own count: unique per node and boot (and, by the random tag,
//! across a fleet), with no syscall and no shared counter on the request
//! path.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

use apiproxy_shared::stats::MAX_REQUEST_ID_LEN;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Where our id comes back when the upstream answered with an
/// `X-Request-Id` of its own.
pub(crate) static X_APIPROXY_REQUEST_ID: HeaderName =
    HeaderName::from_static("x-apiproxy-request-id");

/// 64 random bits, from the standard library's per-process random keys
/// (no extra dependency for a tag that only has to differ between boots).
pub(crate) fn random_u64() -> u64 {
    RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
}

/// This boot's tag: 12 hex digits.
fn boot_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| format!("{:012x}", random_u64() & 0xffff_ffff_ffff))
}

/// An id's bytes in one allocation that its `HeaderValue` shares: the
/// request's record, the upstream request and the response each hold the
/// id by a reference count (a `Bytes` made from a `String` or a copied
/// slice would allocate again on its first clone).
/// `N`: its room, 128 bytes for a client's, 48 for one made here (a
/// smaller one to clear and to move into its allocation).
#[derive(Clone)]
struct Id<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

/// Room for a made id: the 12-digit tag, two dashes and two counters of
/// at most 16 hex digits each.
const MADE_ID_ROOM: usize = 48;

impl<const N: usize> AsRef<[u8]> for Id<N> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl<const N: usize> Id<N> {
    fn new() -> Id<N> {
        Id {
            len: 0,
            bytes: [0; N],
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let start = usize::from(self.len);
        self.bytes[start..start + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len() as u8;
    }

    /// `n` in lower-case hex, without leading zeros.
    fn push_hex(&mut self, n: u64) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = HEX[(n & 15) as usize];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn into_value(self) -> HeaderValue {
        HeaderValue::from_maybe_shared(Bytes::from_owner(self))
            .expect("checked or made of printable ASCII")
    }
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

/// A thread's maker of ids: its `<boot tag>-<thread>-` written once, and
/// how many ids it has made.
struct Maker {
    prefix: Id<MADE_ID_ROOM>,
    made: u64,
}

impl Maker {
    fn new() -> Maker {
        let mut prefix = Id::new();
        prefix.push(boot_tag().as_bytes());
        prefix.push(b"-");
        prefix.push_hex(NEXT_THREAD.fetch_add(1, Relaxed) as u64);
        prefix.push(b"-");
        Maker { prefix, made: 0 }
    }
}

thread_local! {
    static MAKER: RefCell<Maker> = RefCell::new(Maker::new());
}

/// The id of a request with these headers: the client's `X-Request-Id`,
/// copied (never a slice of the connection's read buffer, which a long
/// stream would then keep alive), when it is 1 to 128 printable ASCII
/// bytes; otherwise a new one.
pub(crate) fn of_request(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(id) if is_sane(id.as_bytes()) => {
            let mut copy = Id::<MAX_REQUEST_ID_LEN>::new();
            copy.push(id.as_bytes());
            copy.into_value()
        }
        _ => make(),
    }
}

/// An id another party made (the upstream's), kept for the log: at most
/// 128 bytes of it, shared when it is no longer.
pub(crate) fn bounded(id: &HeaderValue) -> HeaderValue {
    match id.as_bytes().get(..MAX_REQUEST_ID_LEN) {
        Some(head) if head.len() < id.len() => {
            HeaderValue::from_bytes(head).expect("a prefix of a valid value")
        }
        _ => id.clone(),
    }
}

fn is_sane(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(u8::is_ascii_graphic)
}

/// A new id, e.g. `3f9c2d1e4b5f-0-1a`.
pub(crate) fn make() -> HeaderValue {
    MAKER.with_borrow_mut(|maker| {
        let mut id = maker.prefix.clone();
        id.push_hex(maker.made);
        maker.made += 1;
        id.into_value()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_bytes(value).unwrap());
        headers
    }

    #[test]
    fn a_sane_client_id_is_kept() {
        assert_eq!(of_request(&with_id(b"abc-123_X:y")), "abc-123_X:y");
        let longest = "a".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(of_request(&with_id(longest.as_bytes())), longest.as_str());
    }

    #[test]
    fn an_insane_or_missing_id_is_replaced() {
        let made = |headers: &HeaderMap| {
            let id = of_request(headers);
            assert!(id.to_str().unwrap().starts_with(boot_tag()), "{id:?}");
            id
        };
        made(&HeaderMap::new());
        made(&with_id(b"has space"));
        made(&with_id(b""));
        made(&with_id("a".repeat(MAX_REQUEST_ID_LEN + 1).as_bytes()));
        made(&with_id(b"tab\there"));
        made(&with_id(&[b'a', 0xff]));
    }

    #[test]
    fn an_upstream_id_is_kept_to_128_bytes() {
        let long = HeaderValue::from_str(&"u".repeat(300)).unwrap();
        assert_eq!(bounded(&long).len(), MAX_REQUEST_ID_LEN);
        let short = HeaderValue::from_static("req_1");
        assert_eq!(bounded(&short), "req_1");
    }

    #[test]
    fn made_ids_read_tag_thread_count() {
        let id = make();
        let id = id.to_str().unwrap();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], boot_tag());
        assert!(
            parts[1..]
                .iter()
                .all(|p| u64::from_str_radix(p, 16).is_ok()),
            "{id}"
        );
        let next = make();
        let next: Vec<&str> = next.to_str().unwrap().split('-').collect();
        assert_eq!(
            u64::from_str_radix(next[2], 16).unwrap(),
            u64::from_str_radix(parts[2], 16).unwrap() + 1
        );
    }

    #[test]
    fn made_ids_differ_within_and_across_threads() {
        let mut seen: std::collections::HashSet<_> = (0..1000).map(|_| make()).collect();
        assert_eq!(seen.len(), 1000);
        let other: Vec<_> = std::thread::spawn(|| (0..1000).map(|_| make()).collect())
            .join()
            .unwrap();
        seen.extend(other);
        assert_eq!(seen.len(), 2000);
        for id in &seen {
            assert!(is_sane(id.as_bytes()), "{id:?}");
        }
    }
}
