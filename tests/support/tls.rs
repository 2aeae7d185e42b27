//! The TLS tests' certificates, made here with rcgen: a CA, a server certificate for
//! 127.0.0.1 (also the client certificate a replica presents to its master) and a client
//! certificate, written as PEM files for `redis-server` and `redis-cli`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// PEM text of a test CA, a server certificate for 127.0.0.1 and a client certificate (each
/// certificate with its private key).
#[derive(Clone)]
pub struct Pki {
    pub ca: String,
    pub server: (String, String),
    pub client: (String, String),
}

/// Where [`Pki::write_to`] put the PEM files.
#[derive(Clone)]
pub struct PkiFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A new CA and the two certificates it signs.
    pub fn make() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "cachette test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, "cachette test");
            let cert = params.signed_by(&key, &ca).expect("signed");
            (cert.pem(), key.serialize_pem())
        };
        Pki {
            server: leaf(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]),
            client: leaf(vec!["cachette-client".to_owned()]),
            ca: ca.pem(),
        }
    }

    /// Writes every PEM into `dir` (created if missing).
    pub fn write_to(&self, dir: &Path) -> PkiFiles {
        std::fs::create_dir_all(dir).expect("a directory for the certificates");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        PkiFiles {
            ca: write("ca.crt", &self.ca),
            server_cert: write("server.crt", &self.server.0),
            server_key: write("server.key", &self.server.1),
            client_cert: write("client.crt", &self.client.0),
            client_key: write("client.key", &self.client.1),
        }
    }
}

impl PkiFiles {
    /// `redis-server` arguments for a TLS port that requires client certificates of the CA.
    pub fn server_args(&self) -> Vec<String> {
        let path = |path: &PathBuf| path.to_string_lossy().into_owned();
        vec![
            "--tls-cert-file".into(),
            path(&self.server_cert),
            "--tls-key-file".into(),
            path(&self.server_key),
            "--tls-ca-cert-file".into(),
            path(&self.ca),
            "--tls-auth-clients".into(),
            "yes".into(),
        ]
    }

    /// `redis-cli` arguments for such a port: TLS, the CA, the client certificate.
    pub fn cli_args(&self) -> Vec<String> {
        let path = |path: &PathBuf| path.to_string_lossy().into_owned();
        vec![
            "--tls".into(),
            "--cacert".into(),
            path(&self.ca),
            "--cert".into(),
            path(&self.client_cert),
            "--key".into(),
            path(&self.client_key),
        ]
    }
}
