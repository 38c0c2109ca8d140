//! `apiproxy-healthcheck`: the container image's health check.
//!
//! The image is distroless (no shell, no curl), so its `HEALTHCHECK` runs
//! this small std-only program, built in the Dockerfile's builder stage with
//! `rustc` alone. It sends one `GET` over HTTP/1.1 to 127.0.0.1 and exits 0
//! on a 200, 1 on anything else (Docker reserves 2).
//!
//! ```text
//! apiproxy-healthcheck                 # auto: the role of the container's PID 1
//! apiproxy-healthcheck dataplane       # API_PROXY_METRICS_LISTEN (0.0.0.0:9000), /healthz
//! apiproxy-healthcheck controlplane    # API_PROXY_ADMIN_LISTEN (0.0.0.0:8001), /healthz
//! apiproxy-healthcheck dataplane /readyz
//! apiproxy-healthcheck http://127.0.0.1:9000/readyz
//! ```
//!
//! The port comes from the same environment variable the binary reads, with
//! the same default, so a container that moves its listener keeps a correct
//! health check. An unspecified listen address (0.0.0.0, [::]) is probed on
//! the loopback address of its family.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = match target(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("apiproxy-healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match probe(target.0, &target.1) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!(
                "apiproxy-healthcheck: GET http://{}{} answered {status}",
                target.0, target.1
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "apiproxy-healthcheck: GET http://{}{}: {e}",
                target.0, target.1
            );
            ExitCode::FAILURE
        }
    }
}

/// The address and path to probe for the command line.
fn target(args: &[String]) -> Result<(SocketAddr, String), String> {
    let first = args.first().map_or("auto", String::as_str);
    if let Some(rest) = first.strip_prefix("http://") {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = authority
            .parse::<SocketAddr>()
            .map_err(|_| format!("{first}: expected http://IP:PORT/PATH"))?;
        let path = if path.is_empty() { "/" } else { path };
        return Ok((addr, path.to_owned()));
    }
    let role = match first {
        "auto" => pid1_role(),
        "dataplane" | "controlplane" => first,
        other => {
            return Err(format!(
                "unknown argument {other:?}: expected dataplane, controlplane, auto or a URL"
            ))
        }
    };
    let (var, default) = match role {
        "controlplane" => ("API_PROXY_ADMIN_LISTEN", "0.0.0.0:8001"),
        _ => ("API_PROXY_METRICS_LISTEN", "0.0.0.0:9000"),
    };
    let listen = std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned());
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| format!("{var}: invalid address {listen:?}"))?;
    let path = args.get(1).map_or("/healthz", String::as_str);
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with /"));
    }
    Ok((loopback_for(listen), path.to_owned()))
}

/// `controlplane` when the container runs `apiproxy-controlplane` (as PID 1
/// or under an init such as `docker run --init`), else `dataplane`.
fn pid1_role() -> &'static str {
    let cmdline = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    let runs_controlplane = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg.rsplit(|b| *b == b'/').next() == Some(b"apiproxy-controlplane"));
    if runs_controlplane {
        "controlplane"
    } else {
        "dataplane"
    }
}

fn loopback_for(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// One `GET path`; returns the status code of the response.
fn probe(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: apiproxy-healthcheck\r\nConnection: close\r\n\r\n"
    )?;
    // The status line fits in the first read of any sane server; read a
    // little more only until its end is seen.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<u16>().ok()),
    ) {
        (Some(v), Some(status)) if v.starts_with("HTTP/1.") => Ok(status),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an HTTP/1.x response",
        )),
    }
}
