//! Certificates for the test API server, minted with rcgen (envtest's "TinyCA" role).

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub struct KubePki {
    pub ca_pem: String,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// Service-account signing key (PKCS#8) and its public half.
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

/// A CA plus the leaf certificates a test needs, all PEM.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(cn: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf certificate for `sans` (DNS names or IPs), returning (cert PEM, key PEM).
    pub fn leaf(&self, cn: &str, sans: &[&str], client: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = if client {
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]
        };
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub fn write_kube_pki(dir: &Path) -> KubePki {
    let ca = TestCa::new("kwr-test-ca");
    let (cert, key) = ca.leaf("kube-apiserver", &["localhost", "127.0.0.1"], false);
    let serving_cert = dir.join("serving.crt");
    let serving_key = dir.join("serving.key");
    std::fs::write(&serving_cert, cert).unwrap();
    std::fs::write(&serving_key, key).unwrap();
    let sa_key = dir.join("sa.key");
    let sa_pub = dir.join("sa.pub");
    let sa = KeyPair::generate().unwrap();
    std::fs::write(&sa_key, sa.serialize_pem()).unwrap();
    std::fs::write(&sa_pub, sa.public_key_pem()).unwrap();
    KubePki { ca_pem: ca.cert_pem, serving_cert, serving_key, sa_key, sa_pub }
}
