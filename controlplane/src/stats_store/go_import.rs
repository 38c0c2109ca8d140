//! The Go version's saved stats, imported once into the cluster totals
//! (issue 21): at shutdown it wrote, with no key prefix,
//! - `stats:request_count`, `stats:error_count`: integers as strings;
//! - `stats:endpoints`: JSON `{"/prefix": {"count", "error_count",
//!   "last_request" (unix s)}}`;
//! - `stats:requests_timeline`: JSON `[{"timestamp" (unix s), "endpoint"}]`,
//!   oldest first.
//!
//! Shapes that differ are skipped with a warning, never an error. The
//! import runs only while our totals are empty and at most once: one Lua
//! script checks the marker key and the totals, writes, sets the marker
//! and adds an audit entry, atomically.

use std::collections::BTreeMap;

use apiproxy_shared::redis_keys::REQUEST_RUNS;
use apiproxy_shared::{validate_prefix, RedisKeys};
use serde_json::Value;

use super::field;
use super::writes::{request_run, run_op, Writes};

/// The Go version's key names.
pub(crate) const GO_KEYS: [&str; 4] = [
    "stats:request_count",
    "stats:error_count",
    "stats:endpoints",
    "stats:requests_timeline",
];

// The audit entry: op `import`, actor `go-stats-import`, the summary as
// `new_target`.
// KEYS[1]: marker; KEYS[2]: our totals; KEYS[3]: audit; then the keys the
// writes name. ARGV[1]: time (ms); ARGV[2]: summary (marker and audit);
// ARGV[3]: audit max length; ARGV[4]: the marker when skipped; then the
// writes, four arguments each.
pub(super) const IMPORT: &str = concat!(
    run_op!(),
    r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'done' end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], ARGV[4])
  return 'skipped'
end
for i = 5, #ARGV, 4 do
  local err = run(ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3])
  if err then return err end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'time', ARGV[1], 'op', 'import',
  'prefix', '', 'old_target', '', 'new_target', ARGV[2], 'actor', 'go-stats-import')
return 'imported'"
);

/// One endpoint as the Go version saved it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GoEndpoint {
    pub(crate) count: u64,
    pub(crate) error_count: u64,
    /// Unix seconds; 0: none.
    pub(crate) last_request: u64,
}

/// What could be read of the Go keys, and what was skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct GoStats {
    pub(crate) request_count: u64,
    pub(crate) error_count: u64,
    pub(crate) endpoints: BTreeMap<String, GoEndpoint>,
    /// `(unix s, prefix)`, oldest first.
    pub(crate) timeline: Vec<(u64, String)>,
    pub(crate) warnings: Vec<String>,
}

impl GoStats {
    pub(crate) fn is_empty(&self) -> bool {
        self.request_count == 0
            && self.error_count == 0
            && self.endpoints.is_empty()
            && self.timeline.is_empty()
    }

    /// Reads the four values (`None`: the key is absent). `endpoints` may
    /// also come as a hash of per-endpoint JSON objects.
    pub(crate) fn parse(
        request_count: Option<&str>,
        error_count: Option<&str>,
        endpoints: Option<Value>,
        timeline: Option<&str>,
    ) -> GoStats {
        let mut go = GoStats::default();
        for (key, text, into) in [
            (GO_KEYS[0], request_count, &mut go.request_count),
            (GO_KEYS[1], error_count, &mut go.error_count),
        ] {
            match text.map(|t| t.trim().parse::<u64>()) {
                None => {}
                Some(Ok(n)) => *into = n,
                Some(Err(_)) => go
                    .warnings
                    .push(format!("{key}: not a non-negative integer, skipped")),
            }
        }
        match endpoints {
            None => {}
            Some(Value::Object(map)) => {
                for (prefix, stats) in map {
                    match endpoint(&prefix, &stats) {
                        Ok(e) => {
                            go.endpoints.insert(prefix, e);
                        }
                        Err(why) => go
                            .warnings
                            .push(format!("{}: {prefix:?} {why}, skipped", GO_KEYS[2])),
                    }
                }
            }
            Some(_) => go
                .warnings
                .push(format!("{}: not a JSON object, skipped", GO_KEYS[2])),
        }
        if let Some(text) = timeline {
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Array(entries)) => {
                    let total = entries.len();
                    go.timeline = entries.iter().filter_map(timeline_entry).collect();
                    let bad = total - go.timeline.len();
                    if bad > 0 {
                        go.warnings.push(format!(
                            "{}: {bad} of {total} entries unreadable, skipped",
                            GO_KEYS[3]
                        ));
                    }
                }
                _ => go
                    .warnings
                    .push(format!("{}: not a JSON array, skipped", GO_KEYS[3])),
            }
        }
        go
    }

    /// The summary kept in the marker and the audit entry.
    pub(crate) fn summary(&self, now_ms: u64) -> String {
        serde_json::json!({
            "time": now_ms,
            "total": self.request_count,
            "errors": self.error_count,
            "endpoints": self.endpoints.len(),
            "requests": self.timeline.len(),
        })
        .to_string()
    }

    /// The writes that add these stats to ours; the script's ARGV starts
    /// with time, summary, audit max length and the skipped marker.
    pub(super) fn plan(&self, keys: &RedisKeys, now_ms: u64, audit_max_len: usize) -> Writes {
        let mut w = Writes {
            args: vec![
                now_ms.to_string(),
                self.summary(now_ms),
                audit_max_len.to_string(),
                serde_json::json!({"time": now_ms, "skipped": "our totals were not empty"})
                    .to_string(),
            ],
            ..Writes::default()
        };
        w.key(keys.stats_go_import.clone());
        let totals = w.key(keys.stats_totals.clone());
        w.key(keys.audit.clone());
        let endpoints = w.key(keys.stats_endpoints.clone());
        w.incr(totals, "total", self.request_count);
        w.incr(totals, "errors", self.error_count);
        for (prefix, e) in &self.endpoints {
            let hash = w.key(keys.stats_endpoint(prefix));
            w.add(endpoints, prefix);
            w.incr(hash, "count", e.count);
            w.incr(hash, "error_count", e.error_count);
            if e.last_request > 0 {
                w.set(
                    hash,
                    field::LAST_REQUEST,
                    e.last_request.saturating_mul(1000),
                );
            }
        }
        let runs = timeline_runs(&self.timeline);
        if !runs.is_empty() {
            let list = w.key(keys.stats_requests.clone());
            for run in &runs {
                w.push(list, run);
            }
            w.keep(list, REQUEST_RUNS);
        }
        w
    }
}

/// One endpoint's stats, or why they are skipped.
fn endpoint(prefix: &str, stats: &Value) -> Result<GoEndpoint, &'static str> {
    validate_prefix(prefix).map_err(|_| "is not a valid prefix")?;
    let Value::Object(fields) = stats else {
        return Err("is not a JSON object");
    };
    let number = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or("holds a field that is not a non-negative integer"),
    };
    Ok(GoEndpoint {
        count: number("count")?,
        error_count: number("error_count")?,
        last_request: number("last_request")?,
    })
}

fn timeline_entry(entry: &Value) -> Option<(u64, String)> {
    let t = entry.get("timestamp")?.as_u64()?;
    let prefix = entry.get("endpoint")?.as_str()?;
    validate_prefix(prefix).ok()?;
    Some((t, prefix.to_owned()))
}

/// Consecutive equal entries as one run each, the newest
/// [`REQUEST_RUNS`] kept.
fn timeline_runs(timeline: &[(u64, String)]) -> Vec<String> {
    let mut runs: Vec<(u64, u64, &str)> = Vec::new();
    for (t, prefix) in timeline {
        match runs.last_mut() {
            Some((last_t, n, last_p)) if last_t == t && last_p == prefix => *n += 1,
            _ => runs.push((*t, 1, prefix)),
        }
    }
    let skip = runs.len().saturating_sub(REQUEST_RUNS);
    runs[skip..]
        .iter()
        .map(|(t, n, p)| request_run(*t, *n, p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINTS: &str = r#"{"/openai":{"count":120,"error_count":3,"last_request":1700000000},
        "/claude":{"count":5,"error_count":0,"last_request":1700000100},
        "no-slash":{"count":1},"/bad":{"count":-1},"/odd":"x"}"#;

    #[test]
    fn the_go_shapes_are_read_and_odd_ones_skipped() {
        let go = GoStats::parse(
            Some("125"),
            Some(" 3 "),
            serde_json::from_str(ENDPOINTS).ok(),
            Some(
                r#"[{"timestamp":10,"endpoint":"/openai"},{"timestamp":"x"},{"timestamp":11,"endpoint":"/claude"}]"#,
            ),
        );
        assert_eq!((go.request_count, go.error_count), (125, 3));
        assert_eq!(
            go.endpoints.keys().collect::<Vec<_>>(),
            ["/claude", "/openai"]
        );
        assert_eq!(
            go.endpoints["/openai"],
            GoEndpoint {
                count: 120,
                error_count: 3,
                last_request: 1_700_000_000
            }
        );
        assert_eq!(
            go.timeline,
            [(10, "/openai".into()), (11, "/claude".into())]
        );
        assert_eq!(go.warnings.len(), 4, "{:?}", go.warnings);
        assert!(go.warnings.iter().any(|w| w.contains("\"no-slash\"")));
        assert!(go.warnings.iter().any(|w| w.contains("1 of 3 entries")));
    }

    #[test]
    fn unreadable_keys_are_warnings_and_absent_keys_nothing() {
        let go = GoStats::parse(Some("-4"), Some("many"), Some(Value::from(7)), Some("{"));
        assert!(go.is_empty());
        assert_eq!(go.warnings.len(), 4, "{:?}", go.warnings);
        let none = GoStats::parse(None, None, None, None);
        assert!(none.is_empty());
        assert!(none.warnings.is_empty());
    }

    #[test]
    fn equal_neighbours_make_one_run_and_the_newest_runs_are_kept() {
        let t = |s: u64, p: &str| (s, p.to_owned());
        let runs = timeline_runs(&[t(1, "/a"), t(1, "/a"), t(1, "/b"), t(2, "/a"), t(2, "/a")]);
        assert_eq!(runs, ["1 2 /a", "1 1 /b", "2 2 /a"]);
        let many: Vec<_> = (0..REQUEST_RUNS as u64 + 5).map(|s| t(s, "/a")).collect();
        let runs = timeline_runs(&many);
        assert_eq!(runs.len(), REQUEST_RUNS);
        assert_eq!(runs[0], "5 1 /a");
    }

    #[test]
    fn the_plan_adds_totals_endpoints_and_runs() {
        let go = GoStats::parse(
            Some("125"),
            Some("3"),
            serde_json::from_str(ENDPOINTS).ok(),
            Some(r#"[{"timestamp":10,"endpoint":"/openai"}]"#),
        );
        let w = go.plan(&RedisKeys::new("p"), 5_000, 100);
        assert_eq!(
            w.keys[..4],
            [
                "p:stats:go_import",
                "p:stats:totals",
                "p:audit",
                "p:stats:endpoints"
            ]
        );
        assert_eq!(w.args[0], "5000");
        assert!(w.args[1].contains("\"total\":125"));
        assert_eq!(w.args[2], "100");
        let ops: Vec<(String, String, String)> = w.args[4..]
            .chunks(4)
            .map(|c| {
                let key = w.keys[c[1].parse::<usize>().unwrap() - 1].clone();
                (c[0].clone(), key, c[2].clone())
            })
            .collect();
        for (op, key, field) in [
            ("incr", "p:stats:totals", "total"),
            ("incr", "p:stats:totals", "errors"),
            ("add", "p:stats:endpoints", "/openai"),
            ("incr", "p:stats:endpoint:/openai", "count"),
            ("set", "p:stats:endpoint:/openai", "last_request"),
            ("push", "p:stats:requests", "10 1 /openai"),
            ("keep", "p:stats:requests", "10000"),
        ] {
            assert!(
                ops.contains(&(op.into(), key.into(), field.into())),
                "{op} {key} {field}"
            );
        }
        let openai = w.keys.iter().position(|k| k == "p:stats:endpoint:/openai");
        let last = w.args[4..]
            .chunks(4)
            .find(|c| c[0] == "set" && c[1].parse::<usize>().ok() == openai.map(|i| i + 1))
            .map(|c| c[3].clone());
        assert_eq!(last.as_deref(), Some("1700000000000"), "seconds become ms");
    }
}
