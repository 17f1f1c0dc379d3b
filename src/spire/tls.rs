//! The rustls client configuration for dialing the SPIRE server over TCP with mutual TLS, the
//! way the original registrar did (go-spiffe `tlsconfig.MTLSClientConfig` with `AuthorizeAny`):
//!
//! * the client presents its own X509-SVID (from the agent's Workload API);
//! * the server's chain must verify against the trust-domain bundle from the Workload API;
//! * the server may have **any** SPIFFE ID, as long as it is in our trust domain (go-spiffe picks
//!   the bundle by the peer ID's trust domain, and we hold only our own domain's bundle, so this
//!   is what authorize-any amounted to);
//! * ALPN `h2` (gRPC), TLS 1.2 or 1.3, the `ring` provider chosen explicitly.
//!
//! Also the small DER reader both sides need: the Workload API sends certificate chains and
//! bundles as concatenated DER certificates, and the server's SPIFFE ID is a URI SAN, which
//! neither rustls nor webpki exposes.

use std::sync::Arc;

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};

use crate::id::{SpiffeId, TrustDomain};

/// ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";

/// Builds the mTLS client configuration from an SVID (`chain`: leaf first, then intermediates;
/// `key`: the leaf's PKCS#8 key) and the trust-domain `bundle` (CA certificates of
/// `trust_domain`). Fails if the bundle holds no usable root or the key does not fit the leaf.
pub fn client_config(
    chain: &[CertificateDer<'static>],
    key: &PrivatePkcs8KeyDer<'static>,
    bundle: &[CertificateDer<'static>],
    trust_domain: &TrustDomain,
) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(bundle.iter().cloned());
    if added == 0 {
        return Err(format!("the trust bundle of {trust_domain} holds no usable CA certificate"));
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("server verifier: {e}"))?;
    let verifier = SpiffeServerVerifier { webpki, trust_domain: trust_domain.clone() };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain.to_vec(), PrivateKeyDer::Pkcs8(key.clone_key()))
        .map_err(|e| format!("client certificate: {e}"))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Verifies the SPIRE server's certificate the SPIFFE way: chain to the bundle, SPIFFE ID in the
/// trust domain, host name ignored.
///
/// Why the name check is skipped: an X509-SVID identifies its holder by a `spiffe://` URI SAN
/// and need not carry any DNS name or IP address, so the name we dial (an IP or a Service name)
/// usually does not appear in the certificate. SPIFFE authentication replaces the host-name check
/// with a check of the SPIFFE ID, which this verifier does instead.
///
/// How: rustls' [`WebPkiServerVerifier`] checks the chain (signatures up to a bundle root,
/// validity period, key usage / EKU serverAuth) and only *after* that succeeded compares the
/// name, so its `NotValidForName` error means "the chain is good, the name is not in it". That
/// one error is tolerated; every other error (bad chain, expired, wrong EKU, ...) fails the
/// handshake. The TLS 1.2/1.3 signature checks are webpki's unchanged.
#[derive(Debug)]
struct SpiffeServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    trust_domain: TrustDomain,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(_)
            | Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let id = spiffe_id_of(end_entity)
            .map_err(|e| TlsError::General(format!("SPIRE server certificate: {e}")))?;
        SpiffeId::parse_in(&id, &self.trust_domain)
            .map_err(|e| TlsError::General(format!("SPIRE server certificate: {e}")))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// DER: just enough to split concatenated certificates and read the URI SAN of one.

const TAG_BOOLEAN: u8 = 0x01;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
/// `[3] EXPLICIT` in `TBSCertificate`: the extensions.
const TAG_EXTENSIONS: u8 = 0xa3;
/// `uniformResourceIdentifier [6] IMPLICIT IA5String` in `GeneralName`.
const TAG_GENERAL_NAME_URI: u8 = 0x86;
/// Content octets of OID 2.5.29.17 (subjectAltName).
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// One DER element read from the start of an input.
struct Tlv<'a> {
    tag: u8,
    contents: &'a [u8],
    /// The element including its header.
    whole: &'a [u8],
    /// The input after the element.
    rest: &'a [u8],
}

/// The DER element at the start of `input`. Only what X.509 uses: single-byte tags, definite
/// lengths of at most 4 length bytes.
fn read_tlv(input: &[u8]) -> Result<Tlv<'_>, String> {
    let truncated = || "truncated DER".to_string();
    let (&tag, after_tag) = input.split_first().ok_or_else(truncated)?;
    if tag & 0x1f == 0x1f {
        return Err("unsupported multi-byte DER tag".into());
    }
    let (&first, after_len1) = after_tag.split_first().ok_or_else(truncated)?;
    let (len, after_len) = match first {
        0..=0x7f => (usize::from(first), after_len1),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            if after_len1.len() < n {
                return Err(truncated());
            }
            let len = after_len1[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &after_len1[n..])
        }
        _ => return Err("unsupported DER length encoding".into()),
    };
    if after_len.len() < len {
        return Err(truncated());
    }
    let header = input.len() - after_len.len();
    Ok(Tlv { tag, contents: &after_len[..len], whole: &input[..header + len], rest: &after_len[len..] })
}

/// Reads one element and requires its tag.
fn expect_tlv(input: &[u8], want: u8) -> Result<(&[u8], &[u8]), String> {
    let Tlv { tag, contents, rest, .. } = read_tlv(input)?;
    if tag != want {
        return Err(format!("unexpected DER tag {tag:#04x}, wanted {want:#04x}"));
    }
    Ok((contents, rest))
}

/// Splits concatenated DER certificates (the Workload API's `x509_svid` and `bundle` fields).
/// Every element must be a SEQUENCE; empty input is an error.
pub fn split_der_certs(mut input: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let Tlv { tag, whole, rest, .. } = read_tlv(input)?;
        if tag != TAG_SEQUENCE {
            return Err(format!("expected a DER certificate (SEQUENCE), found tag {tag:#04x}"));
        }
        out.push(CertificateDer::from(whole.to_vec()));
        input = rest;
    }
    if out.is_empty() {
        return Err("no certificate".into());
    }
    Ok(out)
}

/// The URI SANs of a DER certificate, in order.
pub fn uri_sans(cert: &[u8]) -> Result<Vec<String>, String> {
    let (certificate, _) = expect_tlv(cert, TAG_SEQUENCE)?;
    let (mut tbs, _) = expect_tlv(certificate, TAG_SEQUENCE)?;
    let mut out = Vec::new();
    while !tbs.is_empty() {
        let Tlv { tag, contents, rest, .. } = read_tlv(tbs)?;
        tbs = rest;
        if tag != TAG_EXTENSIONS {
            continue;
        }
        let (mut extensions, _) = expect_tlv(contents, TAG_SEQUENCE)?;
        while !extensions.is_empty() {
            let (extension, rest) = expect_tlv(extensions, TAG_SEQUENCE)?;
            extensions = rest;
            let (oid, mut fields) = expect_tlv(extension, TAG_OID)?;
            if oid != OID_SUBJECT_ALT_NAME {
                continue;
            }
            if let Ok((_critical, rest)) = expect_tlv(fields, TAG_BOOLEAN) {
                fields = rest;
            }
            let (value, _) = expect_tlv(fields, TAG_OCTET_STRING)?;
            let (mut names, _) = expect_tlv(value, TAG_SEQUENCE)?;
            while !names.is_empty() {
                let Tlv { tag, contents: name, rest, .. } = read_tlv(names)?;
                names = rest;
                if tag == TAG_GENERAL_NAME_URI {
                    out.push(String::from_utf8(name.to_vec()).map_err(|_| "URI SAN is not ASCII")?);
                }
            }
        }
    }
    Ok(out)
}

/// The SPIFFE ID of an X509-SVID: its only URI SAN (X509-SVID spec: exactly one).
pub fn spiffe_id_of(cert: &[u8]) -> Result<String, String> {
    let mut uris = uri_sans(cert)?;
    match uris.len() {
        1 => Ok(uris.remove(0)),
        0 => Err("no URI SAN, not an X509-SVID".into()),
        n => Err(format!("{n} URI SANs, an X509-SVID has exactly one")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
    };
    use rustls::server::WebPkiClientVerifier;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Ca {
        cert: CertificateDer<'static>,
        params: CertificateParams,
        key: KeyPair,
    }

    fn new_ca(td: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap().der().clone();
        Ca { cert, params, key }
    }

    /// An SVID for `uri` (plus optional DNS names) signed by `ca`: (chain, PKCS#8 key).
    fn svid(ca: &Ca, uri: &str, dns: &[&str]) -> (Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>) {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let cert = params.signed_by(&key, &issuer).unwrap().der().clone();
        (vec![cert], PrivatePkcs8KeyDer::from(key.serialize_der()))
    }

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    #[test]
    fn splits_concatenated_certificates_and_reads_the_uri_san() {
        let ca = new_ca("example.org");
        let (chain, _) = svid(&ca, "spiffe://example.org/spire/server", &["localhost"]);
        let mut joined = chain[0].to_vec();
        joined.extend_from_slice(&ca.cert);
        let certs = split_der_certs(&joined).unwrap();
        assert_eq!(certs, vec![chain[0].clone(), ca.cert.clone()]);
        assert_eq!(spiffe_id_of(&certs[0]).unwrap(), "spiffe://example.org/spire/server");
        assert_eq!(uri_sans(&ca.cert).unwrap(), vec!["spiffe://example.org".to_string()]);

        assert!(split_der_certs(&[]).is_err(), "empty");
        assert!(split_der_certs(&joined[..joined.len() - 1]).is_err(), "truncated");
        assert!(split_der_certs(&[0x04, 0x00]).is_err(), "not a SEQUENCE");
        assert!(split_der_certs(&[0x30, 0x80, 0x00, 0x00]).is_err(), "indefinite length");
        let no_uri = CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap();
        assert!(spiffe_id_of(no_uri.der()).is_err());
    }

    #[test]
    fn long_form_lengths() {
        let mut der = vec![0x30, 0x82, 0x01, 0x00];
        der.extend(std::iter::repeat_n(0u8, 256));
        der.extend([0x30, 0x81, 0x80]);
        der.extend(std::iter::repeat_n(0u8, 128));
        let certs = split_der_certs(&der).unwrap();
        assert_eq!(certs.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![260, 131]);
    }

    /// Serves one mTLS connection with `server` credentials, requiring a client certificate from
    /// `client_ca`; returns the peer's SPIFFE ID as the server saw it, or the handshake error.
    async fn handshake(
        server: (Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>),
        client_ca: &Ca,
        client: ClientConfig,
    ) -> Result<String, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(client_ca.cert.clone()).unwrap();
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(server.0, PrivateKeyDer::Pkcs8(server.1))
            .unwrap();
        server_config.alpn_protocols = vec![b"h2".to_vec()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
            let peer = conn.peer_certificates().unwrap()[0].clone();
            tls.write_all(b"ok").await.unwrap();
            tls.shutdown().await.ok();
            spiffe_id_of(&peer)
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let client_result = async {
            let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }
        .await;
        let server_result = tokio::time::timeout(Duration::from_secs(5), server_task).await.unwrap().unwrap();
        client_result?;
        server_result
    }

    #[tokio::test]
    async fn mutual_tls_with_any_server_id_in_the_trust_domain() {
        let ca = new_ca("example.org");
        let (chain, key) = svid(&ca, "spiffe://example.org/registrar", &[]);
        let config =
            || client_config(&chain, &key, std::slice::from_ref(&ca.cert), &td("example.org")).unwrap();

        // The server SVID names no host at all: accepted, and the server sees our SVID.
        let server = svid(&ca, "spiffe://example.org/spire/server", &[]);
        assert_eq!(handshake(server, &ca, config()).await.unwrap(), "spiffe://example.org/registrar");
        // Any ID in the trust domain is accepted (authorize-any).
        let server = svid(&ca, "spiffe://example.org/some/other/server", &["unrelated.example"]);
        assert!(handshake(server, &ca, config()).await.is_ok());

        // A server ID in another trust domain, even signed by our CA: refused.
        let server = svid(&ca, "spiffe://other.org/spire/server", &[]);
        let err = handshake(server, &ca, config()).await.unwrap_err();
        assert!(err.contains("trust domain") || err.contains("other.org"), "{err}");

        // A server chained to another CA (same subject name, other key): refused.
        let other = new_ca("example.org");
        let server = svid(&other, "spiffe://example.org/spire/server", &[]);
        let err = handshake(server, &ca, config()).await.unwrap_err();
        assert!(err.contains("invalid peer certificate"), "{err}");
    }

    #[test]
    fn refuses_an_empty_bundle_and_a_mismatched_key() {
        let ca = new_ca("example.org");
        let (chain, key) = svid(&ca, "spiffe://example.org/registrar", &[]);
        assert!(client_config(&chain, &key, &[], &td("example.org")).is_err());
        let (_, other_key) = svid(&ca, "spiffe://example.org/registrar", &[]);
        assert!(
            client_config(&chain, &other_key, std::slice::from_ref(&ca.cert), &td("example.org")).is_err()
        );
    }
}
