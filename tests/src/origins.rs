//! Real third-party servers as HTTPS origins, with a certificate from a
//! [`TestCa`]: Debian's nginx and haproxy, each offering HTTP/2 and
//! HTTP/1.1 by ALPN and answering every request with 200.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::TestCa;
use crate::TempDir;

/// A running origin; stopped (by its PID) when dropped.
pub struct Origin {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Origin {
    /// nginx answering `nginx ok`, logging `$server_protocol $status
    /// $request_uri` a line (see [`Origin::access_log`]).
    pub fn nginx(ca: &TestCa) -> Origin {
        Origin::start("nginx", ca, |d, port| {
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 error_log {d}/error.log;\npid {d}/nginx.pid;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n\
                   log_format plain '$server_protocol $status $request_uri';\n\
                   access_log {d}/access.log plain;\n\
                   client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                   server {{\n\
                     listen 127.0.0.1:{port} ssl http2;\n\
                     ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;\n\
                     location / {{ return 200 \"nginx ok\\n\"; }}\n\
                   }}\n\
                 }}\n"
            );
            std::fs::write(format!("{d}/nginx.conf"), conf).unwrap();
            let mut cmd = Command::new(binary("nginx"));
            cmd.args(["-p", d, "-e", &format!("{d}/error.log")])
                .args(["-c", &format!("{d}/nginx.conf")]);
            cmd
        })
    }

    /// haproxy answering `haproxy <HTTP version>` (`2.0` over h2) from its
    /// own `http-request return`.
    pub fn haproxy(ca: &TestCa) -> Origin {
        Origin::start("haproxy", ca, |d, port| {
            let pem = format!("{d}/cert.pem");
            let key = std::fs::read_to_string(format!("{d}/key.pem")).unwrap();
            let mut both = std::fs::read_to_string(&pem).unwrap();
            both.push_str(&key);
            std::fs::write(format!("{d}/both.pem"), both).unwrap();
            let conf = format!(
                "global\n  maxconn 1000\n\
                 defaults\n  mode http\n  timeout client 10s\n  timeout server 10s\n  timeout connect 5s\n\
                 frontend origin\n  bind 127.0.0.1:{port} ssl crt {d}/both.pem alpn h2,http/1.1\n\
                 \x20 http-request return status 200 content-type text/plain lf-string \"haproxy %[req.ver]\"\n"
            );
            std::fs::write(format!("{d}/haproxy.cfg"), conf).unwrap();
            let mut cmd = Command::new(binary("haproxy"));
            cmd.args(["-db", "-f", &format!("{d}/haproxy.cfg")]);
            cmd
        })
    }

    /// Writes the certificate into a new directory, starts what `command`
    /// makes of it (given the directory and a free port) and waits until
    /// it listens. Neither server can listen on port 0 and say where: when
    /// another process takes the free port first, the start is detected as
    /// failed and made again on another port.
    fn start(name: &str, ca: &TestCa, command: impl Fn(&str, u16) -> Command) -> Origin {
        let dir = TempDir::new(name);
        std::fs::write(dir.path("cert.pem"), &ca.server_cert_pem).unwrap();
        std::fs::write(dir.path("key.pem"), &ca.server_key_pem).unwrap();
        for _ in 0..5 {
            let port = crate::free_port();
            let _ = std::fs::remove_file(dir.path("error.log"));
            let log = std::fs::File::create(dir.path("output.log")).unwrap();
            let mut child = command(dir.0.to_str().expect("utf-8 path"), port)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{name} runs (Debian's {name} package): {e}"));
            if listening(&mut child, port, &dir) {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                return Origin { child, addr, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "{name} did not listen: {}",
            std::fs::read_to_string(dir.path("output.log")).unwrap_or_default()
        );
    }
    /// nginx's access log, a line a request.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Whether `child` came to listen on `port` itself (within 10 s); false
/// as soon as its bind failed (it exited, or logged that the address is in
/// use: nginx keeps trying for a while before it gives up).
fn listening(child: &mut Child, port: u16, dir: &TempDir) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if crate::listens_on(child.id(), port) {
            return true;
        }
        let logs = ["output.log", "error.log"]
            .map(|f| std::fs::read_to_string(dir.path(f)).unwrap_or_default());
        if logs.iter().any(|l| l.contains("Address already in use")) {
            return false;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Debian's path for `name`, else whatever `PATH` finds.
fn binary(name: &str) -> String {
    ["/usr/sbin", "/usr/local/sbin"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|path| Path::new(path).exists())
        .unwrap_or_else(|| name.to_owned())
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
