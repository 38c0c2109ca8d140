//! A throwaway CA and server certificate for TLS upstreams.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

pub struct TestCa {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: with rcgen's default name on both, OpenSSL
        // (nginx verifying an origin) takes the leaf for self-signed.
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "apiproxy test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        TestCa {
            ca_pem: ca.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
            server_cert: cert.der().clone(),
            server_key: key.serialize_der(),
        }
    }

    /// A CA and server certificate made before (the PEM texts of
    /// [`TestCa::new`]'s fields), for a second server of the same run.
    pub fn from_pem(ca_pem: &str, server_cert_pem: &str, server_key_pem: &str) -> TestCa {
        use rustls::pki_types::pem::PemObject;
        let cert =
            CertificateDer::from_pem_slice(server_cert_pem.as_bytes()).expect("a certificate");
        let key =
            PrivatePkcs8KeyDer::from_pem_slice(server_key_pem.as_bytes()).expect("a PKCS#8 key");
        TestCa {
            ca_pem: ca_pem.to_owned(),
            server_cert_pem: server_cert_pem.to_owned(),
            server_key_pem: server_key_pem.to_owned(),
            server_cert: cert,
            server_key: key.secret_pkcs8_der().to_vec(),
        }
    }

    /// A TLS acceptor offering h2 and http/1.1 by ALPN.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor_offering(&[b"h2", b"http/1.1"])
    }

    /// A TLS acceptor offering `alpn` only.
    pub fn acceptor_offering(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.server_cert.clone()], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A data plane in standalone mode with `mappings` (JSON object text)
/// that trusts `ca` (`API_PROXY_CA_FILE`); the directory holding the CA
/// file comes with it.
pub fn trusting_dataplane(
    ca: &TestCa,
    mappings: &str,
    env: &[(&str, &str)],
) -> (crate::DataPlane, crate::TempDir) {
    let dir = crate::TempDir::new("ca");
    let ca_file = dir.path("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let mut all = vec![("API_PROXY_CA_FILE", ca_file.to_str().unwrap())];
    all.extend_from_slice(env);
    (crate::DataPlane::start(mappings, &all), dir)
}
