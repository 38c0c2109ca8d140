//! The pieces an access-log line is written with, straight into a
//! worker's buffer: integers, milliseconds, addresses and timestamps
//! without `core::fmt` (its machinery was a third of a line's cost in a
//! profile), strings escaped only when a byte needs it.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What formatting keeps from one line to the next of a buffer: the
/// second's date and time, and the last client and upstream IPs as text
/// (a node's clients mostly come through a few load balancers and its
/// upstreams are few: the same IPs come again line after line).
#[derive(Debug, Default)]
pub(crate) struct Memo {
    pub(crate) times: Timestamps,
    pub(crate) client_ip: IpText,
    pub(crate) upstream_ip: IpText,
}

/// RFC 3339 UTC timestamps to the millisecond; the date and the time of
/// day are formatted once a second.
#[derive(Debug, Default)]
pub(crate) struct Timestamps {
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    text: Vec<u8>,
}

impl Timestamps {
    pub(crate) fn push(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if second != self.second || self.text.is_empty() {
            let whole = UNIX_EPOCH + Duration::from_secs(second);
            self.second = second;
            self.text = humantime::format_rfc3339_seconds(whole)
                .to_string()
                .trim_end_matches('Z')
                .into();
        }
        out.extend_from_slice(&self.text);
        out.push(b'.');
        push_padded3(out, since.subsec_millis());
        out.push(b'Z');
    }
}

pub(crate) fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An address's octet: a few branches, where a general integer writer
/// was most of a line's address cost.
fn push_u8(out: &mut Vec<u8>, n: u8) {
    if n >= 100 {
        out.extend_from_slice(&[b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10]);
    } else if n >= 10 {
        out.extend_from_slice(&[b'0' + n / 10, b'0' + n % 10]);
    } else {
        out.push(b'0' + n);
    }
}

/// `n` (below 1000) as three digits.
fn push_padded3(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// A duration in milliseconds with three decimals (to the microsecond).
pub(crate) fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(out, us / 1000);
    out.push(b'.');
    push_padded3(out, (us % 1000) as u32);
}

/// An IP address as text, formatted again only when the address changes
/// (an address was about a sixth of a line's cost).
#[derive(Debug, Default)]
pub(crate) struct IpText {
    ip: Option<IpAddr>,
    text: Vec<u8>,
}

impl IpText {
    pub(crate) fn push(&mut self, out: &mut Vec<u8>, ip: IpAddr) {
        if self.ip != Some(ip) {
            self.text.clear();
            push_ip(&mut self.text, ip);
            self.ip = Some(ip);
        }
        out.extend_from_slice(&self.text);
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            push_u8(out, a);
            out.push(b'.');
            push_u8(out, b);
            out.push(b'.');
            push_u8(out, c);
            out.push(b'.');
            push_u8(out, d);
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// `ip:port` (`[ip]:port` for IPv6), the IP from `ip`'s memo.
pub(crate) fn push_addr(out: &mut Vec<u8>, addr: SocketAddr, ip: &mut IpText) {
    match addr {
        SocketAddr::V4(v4) => ip.push(out, IpAddr::V4(*v4.ip())),
        SocketAddr::V6(v6) => {
            out.push(b'[');
            ip.push(out, IpAddr::V6(*v6.ip()));
            out.push(b']');
        }
    }
    out.push(b':');
    push_u64(out, u64::from(addr.port()));
}

/// `,"name":"value"` (or `null`), the value escaped when it has to be.
/// Inlined so that each call's name is a constant the compiler copies
/// without a call to `memcpy`.
#[inline(always)]
pub(crate) fn json_field(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    match value {
        None => out.extend_from_slice(b"null"),
        Some(v) => push_json_str(out, v),
    }
}

/// `,"name":"value"` for a value known to need no escaping (a method, a
/// protocol, an error type, a URI's authority: none can hold a quote, a
/// backslash or a control character).
#[inline(always)]
pub(crate) fn json_plain_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// `"s"`, escaped as JSON when a byte needs it.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if json_plain(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to memory cannot fail");
    }
}

/// Whether `s` goes into a JSON string as it is. Every byte is looked at,
/// with no early exit, so that the check runs on whole vectors.
fn json_plain(s: &[u8]) -> bool {
    s.iter().fold(true, |plain, &b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    })
}

/// `s` with `"`, `\`, spaces and control characters as `\xHH`, as nginx
/// escapes its log variables, so that a field never breaks a text line
/// apart (`space`: escape spaces too, for `name=value` fields).
pub(crate) fn push_escaped(out: &mut Vec<u8>, s: &str, space: bool) {
    let plain = |c: char| c != '"' && c != '\\' && !c.is_control() && !(space && c == ' ');
    if s.chars().all(plain) {
        return out.extend_from_slice(s.as_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for c in s.chars() {
        let mut buf = [0; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        if plain(c) {
            out.extend_from_slice(bytes);
        } else {
            for b in bytes {
                out.extend_from_slice(&[
                    b'\\',
                    b'x',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_and_durations() {
        for n in [0, 7, 10, 999, 1_000_001, u64::MAX] {
            assert_eq!(written(|o| push_u64(o, n)), n.to_string());
        }
        assert_eq!(
            written(|o| push_millis(o, Duration::from_micros(12_345))),
            "12.345"
        );
        assert_eq!(
            written(|o| push_millis(o, Duration::from_micros(7))),
            "0.007"
        );
        assert_eq!(
            written(|o| push_millis(o, Duration::from_secs(3600))),
            "3600000.000"
        );
    }

    #[test]
    fn addresses_as_std_writes_them() {
        let mut memo = IpText::default();
        // Each address twice: formatted, then from the memo.
        for addr in [
            "10.0.0.1:5000",
            "192.168.10.99:8080",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:80",
            "[2001:db8::7]:443",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            for _ in 0..2 {
                assert_eq!(written(|o| push_addr(o, addr, &mut memo)), addr.to_string());
            }
        }
    }

    #[test]
    fn timestamps_match_humantime_across_seconds() {
        let mut ts = Timestamps::default();
        for ms in [
            1_700_000_000_123u64,
            1_700_000_000_999,
            1_700_000_001_000,
            1_700_000_001_005,
            0,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            let expected = humantime::format_rfc3339_millis(t).to_string();
            assert_eq!(written(|o| ts.push(o, t)), expected);
        }
    }

    #[test]
    fn text_escapes() {
        assert_eq!(
            written(|o| push_escaped(o, "plain/path", false)),
            "plain/path"
        );
        assert_eq!(
            written(|o| push_escaped(o, "a b\"\\\t\u{e9}", false)),
            "a b\\x22\\x5C\\x09\u{e9}"
        );
        assert_eq!(written(|o| push_escaped(o, "a b", true)), "a\\x20b");
    }
}
