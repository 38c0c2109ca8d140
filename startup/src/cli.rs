//! What both binaries' command lines share: the configuration error type,
//! its exit codes, the log-format switch, and clap's errors turned into one
//! line that names the flag (SPEC §2).

/// Exit code for every configuration error (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// A configuration error: one line that names the variable or flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help` or `--version`: print it and exit 0.
    #[error("{0}")]
    Info(String),
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Info(_) => 0,
            ConfigError::Invalid(_) => EXIT_CONFIG,
        }
    }
}

/// `API_PROXY_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Durations accept `500ms`, `10s`, `5m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 10s, 5m)"))
}

/// Parses `args` (program name first) with clap, environment fallbacks
/// included. clap's messages run over several lines (usage, a hint); the
/// first one names the flag and the problem, which is what an operator
/// needs.
pub fn parse_args<P, I, T>(args: I) -> Result<P, ConfigError>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    parse_args_and_matches(args).map(|(parsed, _)| parsed)
}

/// [`parse_args`], with clap's matches beside: they tell where each value
/// came from (a flag, its variable, or the default), e.g. to let an older
/// variable name stand in only for a default.
pub fn parse_args_and_matches<P, I, T>(args: I) -> Result<(P, clap::ArgMatches), ConfigError>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let one_line = |e: clap::Error| match e.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
            ConfigError::Info(e.to_string())
        }
        _ => {
            let text = e.to_string();
            ConfigError::Invalid(text.lines().next().unwrap_or_default().trim().to_owned())
        }
    };
    let matches = P::command().try_get_matches_from(args).map_err(one_line)?;
    let parsed = P::from_arg_matches(&matches).map_err(one_line)?;
    Ok((parsed, matches))
}
