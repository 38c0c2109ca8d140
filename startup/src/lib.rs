//! What both binaries do around their work, in one place: read the
//! configuration (a `.env` file, then flags with environment fallbacks;
//! a configuration error exits 64), set up logging, and wait for the
//! signal to stop. The wire types both sides share are in `apiproxy-shared`.

pub mod cli;
mod secret_files;

use std::collections::HashMap;
use std::env::ArgsOs;
use std::fmt::Display;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

pub use cli::{ConfigError, LogFormat, EXIT_CONFIG};
pub use secret_files::{read_secret_files, SECRET_VARS};

/// The configuration `parse` makes of the command line and the
/// environment, a `.env` file filling in what the real environment does not
/// set, and each secret's `NAME_FILE` read into `NAME` ([`SECRET_VARS`]).
/// `--help` and `--version` go to stdout and exit 0; an error is one line
/// on stderr, `{program}: {error}`, and exits [`EXIT_CONFIG`].
pub fn configure<C>(
    program: &str,
    parse: impl FnOnce(ArgsOs, &HashMap<String, String>) -> Result<C, ConfigError>,
) -> Result<C, ExitCode> {
    let _ = dotenvy::dotenv();
    let mut env = std::env::vars().collect();
    let parsed = read_secret_files(&mut env).and_then(|()| {
        // The flags' environment fallbacks are read by clap from the
        // process environment, not from `env`: a secret read from a file
        // goes there too. Still one thread: nothing reads it meanwhile.
        for name in SECRET_VARS {
            if let Some(value) = env.get(name) {
                std::env::set_var(name, value);
            }
        }
        parse(std::env::args_os(), &env)
    });
    parsed.map_err(|e| {
        let code = e.exit_code();
        if code == 0 {
            print!("{e}");
        } else {
            eprintln!("{program}: {e}");
        }
        exit(code)
    })
}

/// A configuration error found after parsing (a value that parses but
/// cannot be used): `{program}: {error}` on stderr, exit [`EXIT_CONFIG`].
pub fn config_failed(program: &str, error: impl Display) -> ExitCode {
    eprintln!("{program}: {error}");
    exit(EXIT_CONFIG)
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Logging: `RUST_LOG` filter (default `info`), text or JSON lines on
/// stderr, colours only on a terminal.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// SIGTERM and SIGINT, which both mean "drain and stop", caught from the
/// moment this is made. Made before the process listens: a stop signal
/// that comes early (an orchestrator stopping a pod as it starts) is then
/// a graceful stop, never the default action that kills the process, as
/// it was when the handlers were installed by a task not yet run.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; within the Tokio runtime.
    pub fn install() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        StopSignals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    /// Waits for either and names the one that came. The binary logs it,
    /// under its own name.
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
