//! The registrar's own identity, from the SPIRE agent's SPIFFE Workload API.
//!
//! When the SPIRE server is reached over TCP, the registrar authenticates with an X509-SVID that
//! the local agent issues it (the original registrar did the same with go-spiffe's
//! `X509Source`). [`SvidSource`] keeps a `FetchX509SVID` stream open in a background task: the
//! agent sends the current SVID and bundle first and again whenever either rotates, and the
//! source keeps the latest, already turned into a rustls client configuration. New TLS
//! connections use the latest configuration; existing ones keep theirs until they close (the
//! SPIRE server recycles connections every 3 minutes, well inside an SVID's lifetime).
//!
//! When the stream fails or ends (agent restarting, no identity registered yet, ...) the task
//! reconnects with exponential backoff and keeps serving the last good SVID meanwhile.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig,
    pki_types::{CertificateDer, PrivatePkcs8KeyDer},
};
use tokio::sync::watch;
use tonic::{Request, metadata::MetadataValue, transport::Channel};

use super::{
    Error, Result,
    proto::workload::{
        X509svidRequest, X509svidResponse, spiffe_workload_api_client::SpiffeWorkloadApiClient,
    },
    tls,
};
use crate::id::SpiffeId;

/// The metadata every Workload API call must carry (the agent refuses calls without it, a guard
/// against server-side request forgery).
const SECURITY_HEADER: &str = "workload.spiffe.io";
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A Workload API client on the agent's Unix socket `path` (no scheme). Does not dial until the
/// first call; redials after failures.
pub fn workload_client(path: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let path = path.to_path_buf();
    // The URI is a placeholder; the connector decides where we dial.
    let endpoint = tonic::transport::Endpoint::from_static("http://spire-agent.local")
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
    }));
    SpiffeWorkloadApiClient::new(channel)
}

/// One X509-SVID with what is needed to use it.
pub struct X509Svid {
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub private_key: PrivatePkcs8KeyDer<'static>,
    /// CA certificates of the SVID's trust domain.
    pub bundle: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for X509Svid {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("cert_chain", &self.cert_chain.len())
            .field("bundle", &self.bundle.len())
            .finish_non_exhaustive()
    }
}

impl X509Svid {
    /// The default (first) SVID of a `FetchX509SVID` message.
    pub fn from_response(resp: &X509svidResponse) -> Result<Self, String> {
        let svid = resp.svids.first().ok_or("the Workload API answered without any SVID")?;
        let spiffe_id = SpiffeId::parse(&svid.spiffe_id).map_err(|e| format!("SVID ID: {e}"))?;
        let cert_chain =
            tls::split_der_certs(&svid.x509_svid).map_err(|e| format!("SVID certificates: {e}"))?;
        if svid.x509_svid_key.is_empty() {
            return Err("SVID without a private key".into());
        }
        let private_key = PrivatePkcs8KeyDer::from(svid.x509_svid_key.clone());
        let bundle = tls::split_der_certs(&svid.bundle).map_err(|e| format!("trust bundle: {e}"))?;
        Ok(Self { spiffe_id, cert_chain, private_key, bundle })
    }

    /// The mTLS client configuration for the SPIRE server of this SVID's trust domain.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        tls::client_config(&self.cert_chain, &self.private_key, &self.bundle, self.spiffe_id.trust_domain())
    }
}

/// The latest usable SVID and its TLS configuration.
struct Current {
    svid: Arc<X509Svid>,
    config: Arc<ClientConfig>,
}

#[derive(Default)]
struct State {
    current: Option<Arc<Current>>,
    /// Why the last attempt failed, if it did (reported by `wait_first`).
    last_error: Option<String>,
    /// SVID updates accepted so far (first one included).
    updates: u64,
}

/// The registrar's X509-SVID from the agent, kept current. Cheap to clone; the background task
/// stops when the last clone is dropped. Must be created inside a Tokio runtime.
#[derive(Clone)]
pub struct SvidSource {
    inner: Arc<Inner>,
}

struct Inner {
    rx: watch::Receiver<State>,
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SvidSource {
    /// Starts watching the Workload API at `agent_socket` (a Unix socket path, no scheme).
    /// Returns at once; see [`SvidSource::wait_first`].
    pub fn start(agent_socket: impl Into<PathBuf>) -> Self {
        let socket = agent_socket.into();
        let (tx, rx) = watch::channel(State::default());
        let task = tokio::spawn(run(workload_client(&socket), socket.clone(), tx));
        Self { inner: Arc::new(Inner { rx, socket, task }) }
    }

    /// Waits up to `timeout` for the first SVID. The error names the last failure (for example
    /// the agent's "no identity issued" when no registration entry matches the registrar).
    pub async fn wait_first(&self, timeout: Duration) -> Result<Arc<X509Svid>> {
        let mut rx = self.inner.rx.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| s.current.is_some()).await.ok().and_then(|s| s.current.clone())
        })
        .await;
        match waited {
            Ok(Some(current)) => Ok(current.svid.clone()),
            Ok(None) => Err(Error::WorkloadApi("the SVID watcher stopped".into())),
            Err(_) => {
                let why = self.inner.rx.borrow().last_error.clone().unwrap_or_else(|| "no answer yet".into());
                Err(Error::WorkloadApi(format!(
                    "no X509-SVID from the agent Workload API at {} within {timeout:?}: {why}",
                    self.inner.socket.display()
                )))
            }
        }
    }

    /// The latest SVID, if one has arrived.
    pub fn current(&self) -> Option<Arc<X509Svid>> {
        self.inner.rx.borrow().current.as_ref().map(|c| c.svid.clone())
    }

    /// The mTLS client configuration built from the latest SVID and bundle.
    pub fn current_client_config(&self) -> Result<Arc<ClientConfig>> {
        let state = self.inner.rx.borrow();
        match &state.current {
            Some(c) => Ok(c.config.clone()),
            None => Err(Error::WorkloadApi(format!(
                "no X509-SVID from the agent Workload API at {} yet{}",
                self.inner.socket.display(),
                state.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ))),
        }
    }

    /// How many SVID updates were accepted (1 after the first SVID; grows with rotations).
    pub fn updates(&self) -> u64 {
        self.inner.rx.borrow().updates
    }
}

/// The background task: stream, and restream with backoff, forever (aborted on drop).
async fn run(mut client: SpiffeWorkloadApiClient<Channel>, socket: PathBuf, tx: watch::Sender<State>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let why = stream_once(&mut client, &tx, &mut backoff).await;
        let have_svid = tx.borrow().current.is_some();
        tracing::warn!(
            socket = %socket.display(), error = %why, retry_in = ?backoff, have_svid,
            "Workload API stream failed; reconnecting."
        );
        tx.send_modify(|s| s.last_error = Some(why));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Runs one `FetchX509SVID` stream until it fails; returns why it ended.
async fn stream_once(
    client: &mut SpiffeWorkloadApiClient<Channel>,
    tx: &watch::Sender<State>,
    backoff: &mut Duration,
) -> String {
    let mut request = Request::new(X509svidRequest {});
    request.metadata_mut().insert(SECURITY_HEADER, MetadataValue::from_static("true"));
    let mut stream = match client.fetch_x509svid(request).await {
        Ok(resp) => resp.into_inner(),
        Err(status) => return format!("{:?}: {}", status.code(), status.message()),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return "the agent ended the stream".into(),
            Err(status) => return format!("{:?}: {}", status.code(), status.message()),
        };
        let accepted = X509Svid::from_response(&resp).and_then(|svid| {
            let config = svid.client_config()?;
            Ok(Current { svid: Arc::new(svid), config: Arc::new(config) })
        });
        match accepted {
            Ok(current) => {
                *backoff = MIN_BACKOFF;
                let (id, first) = (current.svid.spiffe_id.to_string(), tx.borrow().current.is_none());
                tx.send_modify(|s| {
                    s.current = Some(Arc::new(current));
                    s.last_error = None;
                    s.updates += 1;
                });
                if first {
                    tracing::info!(spiffe_id = %id, "Got the registrar's X509-SVID from the Workload API.");
                } else {
                    tracing::debug!(spiffe_id = %id, "X509-SVID or bundle rotated.");
                }
            }
            Err(why) => {
                // Keep the previous SVID (still valid until it expires); the agent sends again
                // on the next change.
                tracing::warn!(error = %why, "Workload API sent an unusable X509-SVID; keeping the previous one.");
                tx.send_modify(|s| s.last_error = Some(why));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spire::proto::workload::X509svid;

    #[test]
    fn parses_the_default_svid_and_rejects_garbage() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.subject_alt_names =
            vec![rcgen::SanType::URI("spiffe://example.org/registrar".try_into().unwrap())];
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&key, &rcgen::Issuer::from_params(&params, &ca_key)).unwrap();
        let mut chain = leaf.der().to_vec();
        chain.extend_from_slice(ca.der());
        let good = X509svid {
            spiffe_id: "spiffe://example.org/registrar".into(),
            x509_svid: chain,
            x509_svid_key: key.serialize_der(),
            bundle: ca.der().to_vec(),
            hint: String::new(),
        };
        let resp = |svids: Vec<X509svid>| X509svidResponse { svids, ..Default::default() };

        let svid = X509Svid::from_response(&resp(vec![good.clone()])).unwrap();
        assert_eq!(svid.spiffe_id.to_string(), "spiffe://example.org/registrar");
        assert_eq!(svid.cert_chain.len(), 2);
        assert_eq!(svid.bundle, vec![ca.der().clone()]);
        assert!(svid.client_config().is_ok());
        assert!(!format!("{svid:?}").contains("private_key"), "Debug never shows the key");

        assert!(X509Svid::from_response(&resp(vec![])).is_err());
        let bad_id = X509svid { spiffe_id: "not-an-id".into(), ..good.clone() };
        assert!(X509Svid::from_response(&resp(vec![bad_id])).is_err());
        let no_bundle = X509svid { bundle: vec![], ..good.clone() };
        assert!(X509Svid::from_response(&resp(vec![no_bundle])).is_err());
        let no_key = X509svid { x509_svid_key: vec![], ..good };
        assert!(X509Svid::from_response(&resp(vec![no_key])).is_err());
    }

    #[tokio::test]
    async fn wait_first_times_out_with_the_reason() {
        let source = SvidSource::start("/nonexistent/kwr-agent.sock");
        let err = source.wait_first(Duration::from_millis(600)).await.unwrap_err().to_string();
        assert!(err.contains("/nonexistent/kwr-agent.sock"), "{err}");
        assert!(err.contains("Unavailable") || err.contains("no answer"), "{err}");
        assert!(source.current_client_config().is_err());
        assert!(source.current().is_none());
    }
}
