//! A SPIRE Entry API client that speaks in model types.
//!
//! # Guarantees
//! * Lists are always paged (`PAGE_SIZE`), so responses stay bounded, and end
//!   on a short page where that is safe (`is_last_page`), saving an empty call per listing.
//! * Writes are split into batches (50 creates, 50 updates, 200 deletes, as
//!   spire-controller-manager does) and return one result per input item, in input order.
//! * `ALREADY_EXISTS` on create with the existing entry attached counts as success and returns
//!   the existing entry; `NOT_FOUND` on delete counts as success (the goal state is reached).
//! * `UNAVAILABLE` is retried with exponential backoff (`RETRIES` attempts); every call has a
//!   deadline (`CALL_TIMEOUT`), so a stalled server cannot block a caller forever; a write call
//!   ends within its write budget, retries included (see [`SpireClient::with_write_budget`]).
//!
//! Connecting is lazy: the channel dials on first use and redials after the server restarts,
//! so the client survives SPIRE server restarts without being rebuilt.
//!
//! With [`SpireClient::dry_run`] no write RPC is sent: writes are answered from an overlay that
//! reads show (`dry_run`).
//!
//! Two transports: the server's admin Unix socket (plaintext, callers are local admins), or its
//! TCP port with mutual TLS and an X509-SVID from the local agent (see [`SpireClient::tcp_mtls`]).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tonic::{Code, Request, Status, transport::Channel};

use super::dry_run::Overlay;
use super::{
    Error, Result,
    convert::{entry_from_proto, id_to_proto, selector_to_proto, spec_to_proto},
    proto::{
        entry::{self as api, entry_client::EntryClient},
        types,
    },
    workload::SvidSource,
};
use crate::{
    id::SpiffeId,
    model::{Entry, EntrySpec, Selector},
    readiness::Reachability,
};

/// Entries per ListEntries page. SPIRE sends responses of any size, and a page of 1000 typical
/// entries is well under 1 MiB; the receive limit is raised to [`MAX_RESPONSE`] (tonic's default
/// is 4 MiB) so that even pages of entries with many DNS names fit. Fewer pages matter: one
/// listing per resync interval is the registrar's whole idle load.
pub const PAGE_SIZE: i32 = 1000;
/// The largest response accepted from SPIRE.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Entries per BatchCreateEntry call (the pool fills batches across callers to this size).
pub const CREATE_BATCH: usize = 50;
const UPDATE_BATCH: usize = 50;
const DELETE_BATCH: usize = 200;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const RETRIES: u32 = 5;

/// One successful create: the entry SPIRE holds, and whether it held it already
/// (`ALREADY_EXISTS` with the "similar" entry attached: nothing was written).
#[derive(Debug, Clone)]
pub struct CreateResult {
    pub entry: Entry,
    pub existed: bool,
}

/// Which entries to list. Filters are ANDed by the server.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub by_parent_id: Option<SpiffeId>,
    pub by_spiffe_id: Option<SpiffeId>,
    /// Entries whose selector set equals exactly this set.
    pub by_selectors: Option<Vec<Selector>>,
}

/// Why one item of a batch failed, with SPIRE's code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ItemError {
    pub code: Code,
    pub message: String,
}

impl ItemError {
    /// True when no retry of the same entry can succeed: SPIRE refused its content
    /// (`INVALID_ARGUMENT`: a reserved path, a bad DNS name, ...) or names a federated trust
    /// domain it has no bundle for (answered as `INTERNAL`, measured on SPIRE 1.13).
    pub fn is_permanent(&self) -> bool {
        self.code == Code::InvalidArgument
            || (self.code == Code::Internal && self.message.contains("unable to find federated bundle"))
    }
}

/// Cheap to clone: clones share one HTTP/2 channel.
#[derive(Clone)]
pub struct SpireClient {
    inner: EntryClient<Channel>,
    timeout: Duration,
    /// How long one write call may take in all, retries included (see [`SpireClient::with_write_budget`]).
    write_budget: Duration,
    /// Shared by clones: whether the server has been answering (for `/readyz`).
    reach: Reachability,
    /// `dry_run`: writes go here instead of to the server, and reads show them (shared by
    /// clones; see [`super::dry_run`]).
    dry_run: Option<Arc<Mutex<Overlay>>>,
}

impl SpireClient {
    /// A client for the admin Unix socket at `path` (plaintext h2c; callers there count as
    /// local admins). Does not dial until the first call.
    pub fn unix(path: impl Into<PathBuf>) -> Result<Self> {
        let path: PathBuf = path.into();
        // The URI is a placeholder; the connector below decides where we dial.
        let endpoint = tonic::transport::Endpoint::from_static("http://spire-server.local")
            .connect_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                // Name the socket: a bare "No such file or directory" says nothing to an operator.
                let stream = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("spire-server socket {}: {e}", path.display()))
                })?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }));
        Ok(Self::from_channel(channel))
    }

    /// A client for the server's TCP port `address` (`host:port`) with mutual TLS, like the
    /// original registrar: the registrar's own X509-SVID comes from the SPIRE agent's Workload
    /// API at `agent_socket` (a Unix socket path, no scheme). Waits up to `timeout` for the first
    /// SVID (so a missing registration shows up at start-up), then returns a lazy client.
    ///
    /// The server's chain is verified against the trust-domain bundle from the Workload API and
    /// any server SPIFFE ID in that trust domain is accepted. The server treats the caller as an
    /// admin only if an entry with the registrar's SPIFFE ID has `admin = true` (or the ID is in
    /// the server's `admin_ids`); otherwise Entry API calls fail with `PERMISSION_DENIED`.
    pub async fn tcp_mtls(address: &str, agent_socket: &Path, timeout: Duration) -> Result<Self> {
        let source = SvidSource::start(agent_socket);
        let svid = source.wait_first(timeout).await?;
        tracing::info!(
            server = address, agent_socket = %agent_socket.display(), spiffe_id = %svid.spiffe_id,
            "Dialing remote registration server with credentials from the agent socket."
        );
        Self::tcp_mtls_with(address, source)
    }

    /// Like [`SpireClient::tcp_mtls`] with an SVID source the caller started (and may watch).
    /// Does not wait: connections made before the source has an SVID fail (`UNAVAILABLE`).
    /// Every new connection (after a server restart, or the server's 3-minute recycling) uses the
    /// source's latest SVID and bundle.
    pub fn tcp_mtls_with(address: &str, source: SvidSource) -> Result<Self> {
        let bad = |reason: &str| Error::Address { address: address.to_string(), reason: reason.to_string() };
        let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?;
        port.parse::<u16>().map_err(|_| bad("invalid port"))?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        // The server is authenticated by its SPIFFE ID, not by name (see `tls`); the name only
        // goes into SNI. Any valid name does, so an unusual host falls back to a fixed one.
        let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::try_from("spire-server").expect("valid name"));
        // `http`: the TLS is ours (in the connector), tonic must not try its own.
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| bad(&e.to_string()))?
            .connect_timeout(Duration::from_secs(5));
        let address = address.to_string();
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let (source, address, server_name) = (source.clone(), address.clone(), server_name.clone());
            async move {
                let config = source.current_client_config().map_err(std::io::Error::other)?;
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }));
        Ok(Self::from_channel(channel))
    }

    /// For an already-built channel (tests).
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            inner: EntryClient::new(channel).max_decoding_message_size(MAX_RESPONSE),
            timeout: CALL_TIMEOUT,
            write_budget: CALL_TIMEOUT,
            reach: Reachability::default(),
            dry_run: None,
        }
    }

    /// This client, and its clones, in dry-run mode: no write RPC is ever sent; writes are
    /// answered from an overlay that every read shows (see [`super::dry_run`]).
    pub fn dry_run(mut self) -> Self {
        self.dry_run = Some(Arc::default());
        self
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run.is_some()
    }

    fn overlay(&self) -> Option<std::sync::MutexGuard<'_, Overlay>> {
        self.dry_run.as_ref().map(|o| o.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Dry run: each create answered by the overlay, ALREADY_EXISTS for an entry already there.
    async fn create_dry(
        &self,
        entries: Vec<(String, EntrySpec)>,
    ) -> Result<Vec<Result<CreateResult, ItemError>>> {
        let mut out = Vec::with_capacity(entries.len());
        for (id, spec) in entries {
            let filter = ListFilter { by_spiffe_id: Some(spec.spiffe_id.clone()), ..Default::default() };
            let existing = self.list_entries(&filter).await?;
            let created = self.overlay().expect("dry run").create(Some(&id), spec, &existing);
            out.push(Ok(created));
        }
        Ok(out)
    }

    /// Whether the server has been answering this client and its clones.
    pub fn reachability(&self) -> Reachability {
        self.reach.clone()
    }

    /// Overrides the per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.write_budget = self.write_budget.min(timeout);
        self
    }

    /// Bounds every write call (BatchCreate/Update/Delete), all its attempts included: each
    /// attempt's deadline (sent to the server as `grpc-timeout`) ends within `budget` of the
    /// call's start, and no attempt starts after that. With leader election the pool sets
    /// `lease_duration − renew_deadline`, so a write fence-checked by a leader is over before any
    /// other replica can lead (the leader stops at its renew deadline; others wait the whole lease).
    pub fn with_write_budget(mut self, budget: Duration) -> Self {
        self.write_budget = budget.min(self.timeout);
        self
    }

    /// Runs one RPC with a deadline, retrying `UNAVAILABLE` with backoff, and records its latency
    /// and outcome (bounded labels: method, outcome). Writes (`Batch*`) stay within the write
    /// budget in all.
    async fn call<Req, Resp, F, Fut>(&self, method: &'static str, req: Req, f: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(EntryClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
    {
        let start = std::time::Instant::now();
        let budget = if method.starts_with("Batch") { Some(self.write_budget) } else { None };
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let mut request = Request::new(req.clone());
            let deadline = match budget {
                Some(b) => b.saturating_sub(start.elapsed()).min(self.timeout),
                None => self.timeout,
            };
            request.set_timeout(deadline);
            let retry_fits = |backoff: Duration| budget.is_none_or(|b| start.elapsed() + backoff < b);
            match f(self.inner.clone(), request).await {
                Ok(resp) => break Ok(resp.into_inner()),
                Err(status)
                    if status.code() == Code::Unavailable && attempt < RETRIES && retry_fits(backoff) =>
                {
                    tracing::debug!(method, attempt, error = %status.message(), "SPIRE unavailable; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(status) => {
                    break Err(Error::Rpc {
                        method,
                        code: status.code(),
                        message: status.message().to_string(),
                    });
                }
            }
        };
        let label = match &outcome {
            Ok(_) => "ok",
            Err(e) => e.metric_label(),
        };
        // An answer the registrar cannot work with counts as unreachable, a per-call refusal
        // (NOT_FOUND, INVALID_ARGUMENT, ...) as an answer.
        match &outcome {
            Err(Error::Rpc {
                code:
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::Unknown,
                ..
            }) => self.reach.failed(),
            _ => self.reach.ok(),
        }
        metrics::histogram!("registrar_spire_call_duration_seconds", "method" => method, "outcome" => label)
            .record(start.elapsed().as_secs_f64());
        outcome
    }

    /// All entries matching `filter`, following page tokens until the server says there are no
    /// more. Entries the registrar cannot read (not expected from a real server) are an error
    /// rather than silently dropped, so a caller never mistakes them for absent.
    pub async fn list_entries(&self, filter: &ListFilter) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.pages(filter, |e| out.push(e)).await?;
        Ok(match self.overlay() {
            Some(overlay) => overlay.view(out, filter),
            None => out,
        })
    }

    /// [`SpireClient::list_entries`], handed to `each` one entry at a time as the pages arrive
    /// and kept nowhere, so a caller that keeps less than the entry (anti-entropy keeps a digest)
    /// never holds the whole listing. A dry run's overlay needs the whole listing, so it is
    /// collected first then.
    pub async fn for_each_entry(
        &self,
        filter: &ListFilter,
        mut each: impl FnMut(Entry) + Send,
    ) -> Result<()> {
        if self.dry_run.is_some() {
            self.list_entries(filter).await?.into_iter().for_each(each);
            return Ok(());
        }
        self.pages(filter, &mut each).await
    }

    /// Follows the pages of a listing, as the server answers it (no overlay).
    async fn pages(&self, filter: &ListFilter, mut each: impl FnMut(Entry) + Send) -> Result<()> {
        let proto_filter = api::list_entries_request::Filter {
            by_parent_id: filter.by_parent_id.as_ref().map(id_to_proto),
            by_spiffe_id: filter.by_spiffe_id.as_ref().map(id_to_proto),
            by_selectors: filter.by_selectors.as_ref().map(|s| types::SelectorMatch {
                selectors: s.iter().map(selector_to_proto).collect(),
                r#match: types::selector_match::MatchBehavior::MatchExact as i32,
            }),
            ..Default::default()
        };
        let mut page_token = String::new();
        loop {
            let req = api::ListEntriesRequest {
                filter: Some(proto_filter.clone()),
                output_mask: None,
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
            };
            let resp =
                self.call("ListEntries", req, |mut c, r| async move { c.list_entries(r).await }).await?;
            for e in &resp.entries {
                each(entry_from_proto(e)?);
            }
            if is_last_page(filter, resp.entries.len(), &resp.next_page_token) {
                return Ok(());
            }
            page_token = resp.next_page_token;
        }
    }

    /// Creates entries. For each input, `Ok(entry)` is the created entry, or the existing
    /// "similar" entry (same parent, SPIFFE ID and selectors) when SPIRE answers ALREADY_EXISTS.
    pub async fn create_entries(&self, specs: &[EntrySpec]) -> Result<Vec<Result<Entry, ItemError>>> {
        Ok(self.create_entries_detailed(specs).await?.into_iter().map(|r| r.map(|c| c.entry)).collect())
    }

    /// [`SpireClient::create_entries`], telling created entries from existing ones.
    pub async fn create_entries_detailed(
        &self,
        specs: &[EntrySpec],
    ) -> Result<Vec<Result<CreateResult, ItemError>>> {
        if self.is_dry_run() {
            return self.create_dry(specs.iter().map(|s| (String::new(), s.clone())).collect()).await;
        }
        let protos: Vec<_> = specs.iter().map(|s| spec_to_proto("", s)).collect();
        self.create(protos).await
    }

    /// Like [`SpireClient::create_entries`], with client-chosen entry IDs (SPIRE ≥ 1.8). The
    /// "similar" entry SPIRE hands back on ALREADY_EXISTS may carry another ID: callers that need
    /// *their* entry compare IDs. An ID already taken by a different entry is an `ItemError`
    /// (ALREADY_EXISTS without an entry).
    pub async fn create_entries_with_ids(&self, entries: &[Entry]) -> Result<Vec<Result<Entry, ItemError>>> {
        let detailed = self.create_entries_with_ids_detailed(entries).await?;
        Ok(detailed.into_iter().map(|r| r.map(|c| c.entry)).collect())
    }

    /// [`SpireClient::create_entries_with_ids`], telling created entries from existing ones.
    pub async fn create_entries_with_ids_detailed(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<Result<CreateResult, ItemError>>> {
        if self.is_dry_run() {
            return self.create_dry(entries.iter().map(|e| (e.id.clone(), e.spec.clone())).collect()).await;
        }
        let protos: Vec<_> = entries.iter().map(|e| spec_to_proto(&e.id, &e.spec)).collect();
        self.create(protos).await
    }

    async fn create(&self, entries: Vec<types::Entry>) -> Result<Vec<Result<CreateResult, ItemError>>> {
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(CREATE_BATCH) {
            let req = api::BatchCreateEntryRequest { entries: chunk.to_vec(), output_mask: None };
            let resp = self
                .call("BatchCreateEntry", req, |mut c, r| async move { c.batch_create_entry(r).await })
                .await?;
            check_count("BatchCreateEntry", chunk.len(), resp.results.len())?;
            for r in resp.results {
                let status = r.status.unwrap_or_default();
                let code = Code::from_i32(status.code);
                out.push(match (code, r.entry) {
                    (Code::Ok | Code::AlreadyExists, Some(e)) => Ok(CreateResult {
                        entry: entry_from_proto(&e)?,
                        existed: code == Code::AlreadyExists,
                    }),
                    _ => Err(ItemError { code, message: status.message }),
                });
            }
        }
        Ok(out)
    }

    /// The entry with this ID, `None` when there is none.
    pub async fn get_entry(&self, id: &str) -> Result<Option<Entry>> {
        let req = api::GetEntryRequest { id: id.to_string(), output_mask: None };
        let real = match self.call("GetEntry", req, |mut c, r| async move { c.get_entry(r).await }).await {
            Ok(e) => Some(entry_from_proto(&e)?),
            Err(Error::Rpc { code: Code::NotFound, .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(match self.overlay() {
            Some(overlay) => overlay.get(id, real),
            None => real,
        })
    }

    /// Updates entries: every field the registrar manages is replaced (`convert::managed_mask`),
    /// the others are left as they are. One result per input.
    pub async fn update_entries(&self, entries: &[Entry]) -> Result<Vec<Result<Entry, ItemError>>> {
        if let Some(mut overlay) = self.overlay() {
            return Ok(entries
                .iter()
                .map(|e| {
                    overlay.update(e);
                    Ok(e.clone())
                })
                .collect());
        }
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(UPDATE_BATCH) {
            let req = api::BatchUpdateEntryRequest {
                entries: chunk.iter().map(|e| spec_to_proto(&e.id, &e.spec)).collect(),
                input_mask: Some(super::convert::managed_mask()),
                output_mask: None,
            };
            let resp = self
                .call("BatchUpdateEntry", req, |mut c, r| async move { c.batch_update_entry(r).await })
                .await?;
            check_count("BatchUpdateEntry", chunk.len(), resp.results.len())?;
            for r in resp.results {
                let status = r.status.unwrap_or_default();
                let code = Code::from_i32(status.code);
                out.push(match (code, r.entry) {
                    (Code::Ok, Some(e)) => Ok(entry_from_proto(&e)?),
                    _ => Err(ItemError { code, message: status.message }),
                });
            }
        }
        Ok(out)
    }

    /// Deletes entries by ID. `NOT_FOUND` counts as success: the entry is gone either way.
    pub async fn delete_entries(&self, ids: &[String]) -> Result<Vec<Result<(), ItemError>>> {
        if let Some(mut overlay) = self.overlay() {
            return Ok(ids
                .iter()
                .map(|id| {
                    overlay.delete(id);
                    Ok(())
                })
                .collect());
        }
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(DELETE_BATCH) {
            let req = api::BatchDeleteEntryRequest { ids: chunk.to_vec() };
            let resp = self
                .call("BatchDeleteEntry", req, |mut c, r| async move { c.batch_delete_entry(r).await })
                .await?;
            check_count("BatchDeleteEntry", chunk.len(), resp.results.len())?;
            for r in resp.results {
                let status = r.status.unwrap_or_default();
                let code = Code::from_i32(status.code);
                out.push(match code {
                    Code::Ok | Code::NotFound => Ok(()),
                    _ => Err(ItemError { code, message: status.message }),
                });
            }
        }
        Ok(out)
    }

    /// Number of entries in the server (unfiltered); a cheap health probe.
    pub async fn count_entries(&self) -> Result<i32> {
        let req = api::CountEntriesRequest { filter: None };
        Ok(self.call("CountEntries", req, |mut c, r| async move { c.count_entries(r).await }).await?.count)
    }
}

fn check_count(method: &'static str, sent: usize, got: usize) -> Result<()> {
    if sent == got { Ok(()) } else { Err(Error::ResultCount { method, sent, got }) }
}

/// Whether a ListEntries page of `len` entries ends the listing. SPIRE hands a token with every
/// non-empty page, so waiting for an empty token costs a second, empty call per listing. A short
/// page is the last one when SQL did all the filtering (no filter, parent or SPIFFE ID); with a
/// selector filter SPIRE filters after the SQL page, so short pages come mid-listing and only the
/// token can be believed.
fn is_last_page(filter: &ListFilter, len: usize, next_token: &str) -> bool {
    let short = len < PAGE_SIZE as usize;
    next_token.is_empty() || len == 0 || (short && filter.by_selectors.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TrustDomain;

    #[test]
    fn a_short_page_ends_a_listing_only_when_sql_filtered_it() {
        let td = TrustDomain::parse("example.org").unwrap();
        let by_parent =
            ListFilter { by_parent_id: SpiffeId::from_path(&td, "/p").ok(), ..Default::default() };
        let by_selectors =
            ListFilter { by_selectors: Some(vec![Selector::k8s("ns:a")]), ..Default::default() };
        let full = PAGE_SIZE as usize;
        for f in [&ListFilter::default(), &by_parent, &by_selectors] {
            assert!(is_last_page(f, 3, ""), "no token: done");
            assert!(is_last_page(f, 0, "17"), "empty page: done");
            assert!(!is_last_page(f, full, "17"), "a full page may have more behind it");
        }
        assert!(is_last_page(&ListFilter::default(), 3, "17"));
        assert!(is_last_page(&by_parent, full - 1, "17"));
        assert!(!is_last_page(&by_selectors, 1, "17"), "selector filters give short pages mid-list");
    }

    #[tokio::test]
    async fn a_write_to_a_server_that_never_answers_ends_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stalled.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // Accepts connections and never says a word.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let spec = crate::model::sample_spec();
        let budget = Duration::from_millis(300);
        let client = SpireClient::unix(&path).unwrap().with_write_budget(budget);
        let start = std::time::Instant::now();
        let err = client.create_entries(&[spec]).await.unwrap_err();
        // The bound is the budget plus scheduling slack, far below the 10 s per-call default.
        assert!(start.elapsed() < budget * 5, "took {:?}: {err}", start.elapsed());
        assert!(matches!(err, Error::Rpc { method: "BatchCreateEntry", .. }), "{err}");
    }
}
