//! A real nginx (Debian's `nginx` package) as an HTTPS origin: TLS with a
//! certificate from a [`TestCa`], HTTP/2 and HTTP/1.1 by ALPN.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::TestCa;
use crate::TempDir;

/// A running nginx; stopped (by its PID) when dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Nginx {
    /// nginx on a free port of 127.0.0.1 answering every request with 200
    /// `nginx ok`, logging `$server_protocol $status $request_uri` a line.
    pub fn start_https(ca: &TestCa) -> Nginx {
        let dir = TempDir::new("nginx");
        std::fs::write(dir.path("cert.pem"), &ca.server_cert_pem).unwrap();
        std::fs::write(dir.path("key.pem"), &ca.server_key_pem).unwrap();
        let port = crate::free_port();
        let d = dir.0.display();
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
        let conf_path = dir.path("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir.0)
            .arg("-e")
            .arg(dir.path("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx runs (Debian's nginx package)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(dir.path("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, addr, dir }
    }

    /// The access log's lines so far.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn nginx_binary() -> &'static str {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nginx")
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
