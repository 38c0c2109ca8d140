//! The Prometheus text exposition format (0.0.4) for series rendered by
//! hand. The per-prefix request series come from counters the prometheus
//! crate does not hold (the data plane's lock-free shards, the control
//! plane's Redis hashes), and both sides must print histograms over
//! [`LATENCY_BOUNDS`] the same way. Formatting only: no I/O.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::stats::LATENCY_BOUNDS;

/// A label value in the text format: backslash, quote and newline escaped.
pub fn escape(value: &str) -> Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

/// The `# HELP` and `# TYPE` lines that open a family.
pub fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample; `labels` is the rendered label list (`prefix="/a"`) or empty.
pub fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// The `_bucket`, `_sum` and `_count` samples of one histogram series.
/// `buckets` are per-bucket counts (not cumulative) over [`LATENCY_BOUNDS`]
/// and +Inf; `labels` as in [`sample`] (`le` is added last).
pub fn histogram(out: &mut String, name: &str, labels: &str, buckets: &[u64], sum_seconds: f64) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        cumulative = cumulative.saturating_add(*n);
        let le = LATENCY_BOUNDS
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), f64::to_string);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    sample(out, &format!("{name}_sum"), labels, sum_seconds);
    sample(out, &format!("{name}_count"), labels, cumulative);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::BUCKETS;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("/a"), "/a");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histograms_are_cumulative_and_end_at_inf() {
        let mut buckets = [0u64; BUCKETS];
        buckets[0] = 2;
        buckets[5] = 1;
        buckets[BUCKETS - 1] = 1;
        let mut out = String::new();
        head(&mut out, "h_seconds", "histogram", "A histogram.");
        histogram(&mut out, "h_seconds", "prefix=\"/a\"", &buckets, 1.5);
        for line in [
            "# TYPE h_seconds histogram",
            "h_seconds_bucket{prefix=\"/a\",le=\"0.005\"} 2",
            "h_seconds_bucket{prefix=\"/a\",le=\"0.1\"} 2",
            "h_seconds_bucket{prefix=\"/a\",le=\"0.25\"} 3",
            "h_seconds_bucket{prefix=\"/a\",le=\"3600\"} 3",
            "h_seconds_bucket{prefix=\"/a\",le=\"+Inf\"} 4",
            "h_seconds_sum{prefix=\"/a\"} 1.5",
            "h_seconds_count{prefix=\"/a\"} 4",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}");
        }
        let mut bare = String::new();
        histogram(&mut bare, "h", "", &buckets, 0.0);
        assert!(bare.contains("h_bucket{le=\"+Inf\"} 4\nh_sum 0\nh_count 4\n"));
    }
}
