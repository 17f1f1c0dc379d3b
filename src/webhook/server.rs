//! The webhook's HTTPS server: rustls (ring provider, TLS 1.2 and 1.3) with client-certificate
//! verification against a CA bundle, serving an axum router over HTTP/1.1, with the serving
//! certificate reloaded from disk while running.
//!
//! # Guarantees
//!
//! * Unless [`TlsFiles::ca`] is `None` (`insecure_skip_client_verification`), a client must
//!   present a certificate chaining to the bundle, or its handshake fails (chain validation only,
//!   no identity check, like the original).
//! * A failed or slow (> [`HANDSHAKE_TIMEOUT`]) handshake ends that connection only; it is logged
//!   at debug and counted in `webhook_tls_handshake_failures_total{reason}`.
//! * The certificate/key pair is polled every [`RELOAD_PERIOD`]; a changed pair that loads
//!   replaces the served one for new handshakes (`webhook_certificate_reloads_total{outcome}`),
//!   one that does not is logged and the old pair stays.
//! * When `shutdown` resolves, the listener is closed, open connections finish their in-flight
//!   requests (HTTP/1 graceful shutdown) for up to [`DRAIN_TIMEOUT`], then are dropped.
//!
//! # Caveats
//!
//! * The CA bundle is read once: rotating the client CA needs a restart.
//! * Changes are detected by content, not mtime: both files are re-read each period (they are
//!   small), which also catches rewrites within the filesystem's mtime granularity and
//!   Kubernetes' symlink-swapped Secret volumes.

use std::{
    fmt::Display,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::CertifiedKey,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;

use super::Error;
use crate::actors::task::AbortOnDrop;

/// How often the certificate and key files are checked for changes.
pub const RELOAD_PERIOD: Duration = Duration::from_secs(2);
/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest open connections are given to finish after shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The PEM files the server is configured from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Serving certificate chain, leaf first (`cert_path`).
    pub cert: PathBuf,
    /// Its private key, PKCS#8, PKCS#1 or SEC1 (`key_path`).
    pub key: PathBuf,
    /// CA bundle client certificates must chain to (`cacert_path`); `None` accepts any client
    /// (`insecure_skip_client_verification`; the caller is expected to log a warning).
    pub ca: Option<PathBuf>,
}

/// Timings of [`serve_with`]; [`Default`] gives the `*_PERIOD`/`*_TIMEOUT` constants.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub reload_period: Duration,
    pub handshake_timeout: Duration,
    pub drain_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reload_period: RELOAD_PERIOD,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }
}

/// Binds the webhook address, with an error that names it.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Listen { addr: addr.to_string(), source })
}

/// Builds the server configuration from `files` (checking them all, so start-up fails early on a
/// bad file).
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, Error> {
    build(files).map(|built| built.config)
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, with [`Options::default`].
pub async fn serve(
    listener: TcpListener,
    files: TlsFiles,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    serve_with(listener, files, router, Options::default(), shutdown).await
}

/// [`serve`] with explicit timings. Fails only if the initial configuration does not load;
/// after that, per-connection and reload problems are logged, never returned.
pub async fn serve_with(
    listener: TcpListener,
    files: TlsFiles,
    router: Router,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let Built { config, resolver, provider, pem } = build(&files)?;
    crate::metrics::preinitialise_webhook();
    // The reloader dies with this future even if it is dropped rather than shut down.
    let _reloader =
        AbortOnDrop(tokio::spawn(watch_keypair(files, resolver, provider, Ok(pem), options.reload_period)));
    let acceptor = TlsAcceptor::from(config);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "webhook server listening");
    }
    // Dropping the sender tells every connection task to wind down.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(connection(
                        tcp,
                        peer,
                        acceptor.clone(),
                        router.clone(),
                        options.handshake_timeout,
                        stop_rx.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
        // Reap finished connections so the set does not grow with the server's lifetime.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    drop(stop_tx);
    let drained = tokio::time::timeout(options.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "webhook connections still open after drain timeout; closing"
        );
    }
    tracing::info!("webhook server stopped");
    Ok(())
}

/// One accepted TCP connection: TLS handshake, then HTTP until the client closes or shutdown.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    handshake_timeout: Duration,
    mut stop: watch::Receiver<()>,
) {
    let tls = tokio::select! {
        handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)) => match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return handshake_failed(peer, "error", e),
            Err(_) => return handshake_failed(peer, "timeout", "no handshake within the timeout"),
        },
        _ = stop.changed() => return,
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(router));
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            // Finish the request in flight, then close instead of waiting for the next one.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
    }
}

fn handshake_failed(peer: SocketAddr, reason: &'static str, error: impl Display) {
    tracing::debug!(%peer, %error, "webhook TLS handshake failed");
    metrics::counter!("webhook_tls_handshake_failures_total", "reason" => reason).increment(1);
}

/// Hands out the current serving certificate; [`watch_keypair`] replaces it. A plain lock is
/// enough: reads are one `Arc` clone per handshake and writes happen at rotation time.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl Resolver {
    fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn replace(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The raw contents of the certificate and key files, to detect changes.
#[derive(PartialEq)]
struct KeypairPem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

struct Built {
    config: Arc<ServerConfig>,
    resolver: Arc<Resolver>,
    provider: Arc<CryptoProvider>,
    pem: KeypairPem,
}

fn build(files: &TlsFiles) -> Result<Built, Error> {
    // Explicit provider: never depend on (or race for) a process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pem = read_keypair(files)?;
    let key = certified_key(files, &pem, &provider)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match &files.ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, &provider)?),
        // The caller warns loudly about this once at start-up (`load` and `serve` both get here).
        None => builder.with_no_client_auth(),
    };
    let resolver = Arc::new(Resolver(RwLock::new(Arc::new(key))));
    let mut config = builder.with_cert_resolver(resolver.clone());
    // Only HTTP/1.1: the API server falls back to it, and the router is served as HTTP/1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Built { config: Arc::new(config), resolver, provider, pem })
}

fn keypair_error(files: &TlsFiles, reason: impl Display) -> Error {
    Error::Keypair {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_error(path: &Path, e: std::io::Error) -> String {
    format!("cannot read {}: {e}", path.display())
}

fn read_keypair(files: &TlsFiles) -> Result<KeypairPem, Error> {
    let cert = std::fs::read(&files.cert).map_err(|e| keypair_error(files, read_error(&files.cert, e)))?;
    let key = std::fs::read(&files.key).map_err(|e| keypair_error(files, read_error(&files.key, e)))?;
    Ok(KeypairPem { cert, key })
}

/// Parses the pair and checks that the key belongs to the leaf certificate.
fn certified_key(
    files: &TlsFiles,
    pem: &KeypairPem,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Error> {
    let chain = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| keypair_error(files, format!("invalid PEM in {}: {e}", files.cert.display())))?;
    if chain.is_empty() {
        return Err(keypair_error(files, format!("no certificate found in {}", files.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| {
        keypair_error(
            files,
            match e {
                pem::Error::NoItemsFound => format!("no private key found in {}", files.key.display()),
                e => format!("invalid PEM in {}: {e}", files.key.display()),
            },
        )
    })?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| keypair_error(files, format!("unusable certificate and key: {e}")))
}

fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let err = |reason: String| Error::CaCert { path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| err(format!("invalid PEM: {e}")))?;
        roots.add(cert).map_err(|e| err(format!("invalid CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate found".into()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(e.to_string()))
}

/// Polls the certificate and key files every `period` and swaps in a changed pair that loads.
/// `last` is what was loaded (or failed to read) last time, so each change is acted on — and
/// each problem logged — once.
async fn watch_keypair(
    files: TlsFiles,
    resolver: Arc<Resolver>,
    provider: Arc<CryptoProvider>,
    mut last: Result<KeypairPem, String>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the pair was just loaded
    loop {
        tick.tick().await;
        let now = match (tokio::fs::read(&files.cert).await, tokio::fs::read(&files.key).await) {
            (Ok(cert), Ok(key)) => Ok(KeypairPem { cert, key }),
            (Err(e), _) => Err(read_error(&files.cert, e)),
            (_, Err(e)) => Err(read_error(&files.key, e)),
        };
        if now == last {
            continue;
        }
        match &now {
            Ok(pem) => match certified_key(&files, pem, &provider) {
                Ok(key) => {
                    resolver.replace(key);
                    tracing::info!(cert = %files.cert.display(), "webhook serving certificate reloaded");
                    metrics::counter!("webhook_certificate_reloads_total", "outcome" => "ok").increment(1);
                }
                Err(e) => {
                    // Possibly a rotation caught half-way (new cert, old key): the next change
                    // is picked up on a later tick.
                    tracing::warn!(error = %e, "changed webhook certificate not loaded; keeping the current one");
                    metrics::counter!("webhook_certificate_reloads_total", "outcome" => "error").increment(1);
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "webhook certificate files unreadable; keeping the current certificate");
                metrics::counter!("webhook_certificate_reloads_total", "outcome" => "error").increment(1);
            }
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    use rustls::{ClientConfig, pki_types::ServerName};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        sync::oneshot,
        task::JoinHandle,
    };
    use tokio_rustls::TlsConnector;

    use super::*;

    const FAST: Options = Options {
        reload_period: Duration::from_millis(50),
        handshake_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(5),
    };

    struct Ca {
        der: CertificateDer<'static>,
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    /// PEM certificate and key of a leaf.
    struct Leaf {
        cert: String,
        key: String,
    }

    impl Ca {
        fn new(cn: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Ca { der: cert.der().clone(), pem: cert.pem(), issuer: Issuer::new(params, key) }
        }

        fn leaf(&self, cn: &str, eku: ExtendedKeyUsagePurpose) -> Leaf {
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![eku];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Leaf { cert: cert.pem(), key: key.serialize_pem() }
        }

        fn server(&self, cn: &str) -> Leaf {
            self.leaf(cn, ExtendedKeyUsagePurpose::ServerAuth)
        }

        fn client(&self, cn: &str) -> Leaf {
            self.leaf(cn, ExtendedKeyUsagePurpose::ClientAuth)
        }
    }

    /// A temporary directory with the server's files.
    struct Dir {
        dir: tempfile::TempDir,
        files: TlsFiles,
    }

    impl Dir {
        fn new(server: &Leaf, client_ca: Option<&Ca>) -> Dir {
            let dir = tempfile::tempdir().unwrap();
            let files = TlsFiles {
                cert: dir.path().join("server-cert.pem"),
                key: dir.path().join("server-key.pem"),
                ca: client_ca.map(|_| dir.path().join("cacert.pem")),
            };
            let d = Dir { dir, files };
            d.write_pair(server);
            if let (Some(ca), Some(path)) = (client_ca, &d.files.ca) {
                std::fs::write(path, &ca.pem).unwrap();
            }
            d
        }

        fn write_pair(&self, leaf: &Leaf) {
            std::fs::write(&self.files.cert, &leaf.cert).unwrap();
            std::fs::write(&self.files.key, &leaf.key).unwrap();
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    struct Running {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), Error>>,
    }

    async fn start(files: TlsFiles) -> Running {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().fallback(|| async { "hello" });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(listener, files, router, FAST, async {
            let _ = stopped.await;
        }));
        Running { addr, stop, task }
    }

    impl Running {
        async fn stop(self) {
            self.stop.send(()).unwrap();
            let result = tokio::time::timeout(Duration::from_secs(5), self.task).await;
            assert!(matches!(result, Ok(Ok(Ok(())))), "server did not stop cleanly");
        }
    }

    /// One HTTPS request as `client` (if any) trusting only `trust`: the response's status line
    /// and the certificate chain the server presented.
    async fn get(
        addr: SocketAddr,
        trust: &Ca,
        client: Option<&Leaf>,
    ) -> io::Result<(String, Vec<CertificateDer<'static>>)> {
        let mut roots = RootCertStore::empty();
        roots.add(trust.der.clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            Some(leaf) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(leaf.cert.as_bytes()).collect::<Result<_, _>>().unwrap(),
                    PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let exchange = async {
            let tcp = TcpStream::connect(addr).await?;
            let server_name = ServerName::try_from("localhost").unwrap();
            let mut tls = TlsConnector::from(Arc::new(config)).connect(server_name, tcp).await?;
            let chain = tls.get_ref().1.peer_certificates().unwrap_or_default().to_vec();
            // With TLS 1.3 the server judges the client certificate after the client finished
            // its side of the handshake: a refusal shows up here, on the first read.
            tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
            let mut buf = Vec::new();
            match tls.read_to_end(&mut buf).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
                Err(e) => return Err(e),
            }
            let status = String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_string();
            Ok((status, chain))
        };
        tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(io::Error::other)?
    }

    fn ok((status, _): &(String, Vec<CertificateDer<'static>>)) -> bool {
        status == "HTTP/1.1 200 OK"
    }

    #[tokio::test]
    async fn verified_clients_only() {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let dir = Dir::new(&server_ca.server("K8S WORKLOAD REGISTRAR SERVER"), Some(&client_ca));
        let server = start(dir.files.clone()).await;

        let good = client_ca.client("K8S WORKLOAD REGISTRAR CLIENT");
        let got = get(server.addr, &server_ca, Some(&good)).await.unwrap();
        assert!(ok(&got), "{:?}", got.0);

        let no_cert = get(server.addr, &server_ca, None).await;
        // Refused with a `certificate_required` alert (TLS 1.3).
        assert!(no_cert.is_err(), "client without certificate got {no_cert:?}");

        let stranger = Ca::new("other CA").client("K8S WORKLOAD REGISTRAR CLIENT");
        let wrong_ca = get(server.addr, &server_ca, Some(&stranger)).await;
        // Refused with an `unknown_ca` alert.
        assert!(wrong_ca.is_err(), "client of another CA got {wrong_ca:?}");

        // Refused handshakes are not fatal to the server.
        assert!(ok(&get(server.addr, &server_ca, Some(&good)).await.unwrap()));
        server.stop().await;
    }

    #[tokio::test]
    async fn without_ca_any_client_is_served() {
        let server_ca = Ca::new("server CA");
        let dir = Dir::new(&server_ca.server("server"), None);
        let server = start(dir.files.clone()).await;
        assert!(ok(&get(server.addr, &server_ca, None).await.unwrap()));
        let stranger = Ca::new("other CA").client("anyone");
        assert!(ok(&get(server.addr, &server_ca, Some(&stranger)).await.unwrap()));
        server.stop().await;
    }

    #[tokio::test]
    async fn alpn_is_http11_only() {
        let config = load(&Dir::new(&Ca::new("ca").server("server"), None).files).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[tokio::test]
    async fn serving_certificate_is_reloaded() {
        let (old_ca, new_ca, client_ca) = (Ca::new("old CA"), Ca::new("new CA"), Ca::new("client CA"));
        let dir = Dir::new(&old_ca.server("server-one"), Some(&client_ca));
        let client = client_ca.client("client");
        let server = start(dir.files.clone()).await;
        assert!(ok(&get(server.addr, &old_ca, Some(&client)).await.unwrap()));

        // A broken replacement is ignored: the old certificate keeps being served.
        std::fs::write(&dir.files.cert, "not a certificate").unwrap();
        tokio::time::sleep(FAST.reload_period * 6).await;
        assert!(ok(&get(server.addr, &old_ca, Some(&client)).await.unwrap()));

        let new = new_ca.server("server-two");
        dir.write_pair(&new);
        let want = CertificateDer::from_pem_slice(new.cert.as_bytes()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            // Trusting only the new CA: succeeds once the new certificate is served.
            match get(server.addr, &new_ca, Some(&client)).await {
                Ok(got) if ok(&got) => {
                    assert_eq!(got.1.first(), Some(&want));
                    break;
                }
                other => assert!(tokio::time::Instant::now() < deadline, "not reloaded: {other:?}"),
            }
            tokio::time::sleep(FAST.reload_period).await;
        }
        assert!(get(server.addr, &old_ca, Some(&client)).await.is_err(), "old certificate still served");
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_a_stalled_handshake() {
        let server_ca = Ca::new("server CA");
        let dir = Dir::new(&server_ca.server("server"), None);
        let server = start(dir.files.clone()).await;
        // A client that connects but never starts its handshake must not hold shutdown up to
        // the handshake or drain timeout.
        let _idle = TcpStream::connect(server.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        server.stop().await;
        assert!(started.elapsed() < FAST.drain_timeout, "took {:?}", started.elapsed());
    }

    fn load_err(files: &TlsFiles) -> String {
        match load(files) {
            Ok(_) => panic!("loaded {files:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let ca = Ca::new("ca");
        let dir = Dir::new(&ca.server("server"), Some(&ca));
        let with = |f: fn(&mut TlsFiles, &Dir)| {
            let mut files = dir.files.clone();
            f(&mut files, &dir);
            files
        };
        let missing = dir.path("missing.pem");
        let missing = missing.display().to_string();

        let err = load_err(&with(|f, d| f.key = d.path("missing.pem")));
        assert!(err.starts_with("unable to load server keypair"), "{err}");
        assert!(err.contains(&format!("cannot read {missing}")), "{err}");

        let err = load_err(&with(|f, d| f.cert = d.path("missing.pem")));
        assert!(err.contains(&format!("cannot read {missing}")), "{err}");

        std::fs::write(dir.path("garbage.pem"), "this is not PEM\n").unwrap();
        let garbage = dir.path("garbage.pem").display().to_string();
        let err = load_err(&with(|f, d| f.cert = d.path("garbage.pem")));
        assert!(err.contains(&format!("no certificate found in {garbage}")), "{err}");
        let err = load_err(&with(|f, d| f.key = d.path("garbage.pem")));
        assert!(err.contains(&format!("no private key found in {garbage}")), "{err}");

        // A key that is not the certificate's.
        std::fs::write(dir.path("other-key.pem"), ca.server("other").key).unwrap();
        let err = load_err(&with(|f, d| f.key = d.path("other-key.pem")));
        assert!(err.contains("unusable certificate and key"), "{err}");

        let err = load_err(&with(|f, d| f.ca = Some(d.path("missing.pem"))));
        assert!(err.starts_with(&format!("unable to read cacert file {missing}: ")), "{err}");
        let err = load_err(&with(|f, d| f.ca = Some(d.path("garbage.pem"))));
        assert_eq!(err, format!("unable to read cacert file {garbage}: no certificate found"));
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("unable to listen on addr {addr}: ")), "{err}");
    }
}
