//! CRD mode: SpiffeID custom resources (`spiffeid.spiffe.io/v1beta1`) are the source of truth;
//! each maps to exactly one SPIRE entry (see [`controller`]).
//!
//! * core, pure: [`resource`] (the type), [`convert`] (SpiffeID → `EntrySpec`), [`policy`] (what
//!   a SpiffeID may ask for: the trust boundary), [`plan`] (entry ownership and the write to
//!   make), [`pods`] (Pod / Node → SpiffeID spec), [`projection`] (the whole set of SpiffeIDs the
//!   projector keeps), [`template`] (the identity / DNS-name template subset);
//! * shell: [`controller`] (SpiffeID → entry, writes through the fenced SPIRE pool), [`sync`]
//!   (Pod / Node / EndpointSlice → SpiffeID, with `pod_controller` and `add_svc_dns_name`),
//!   [`registrations`] (pod creation times handed from `sync` to `controller`, for the
//!   registration-latency histogram); the
//!   wiring is `app::crd` (the controller, projector and webhook server as supervised `Task`s).
//!
//! * [`admission`] (pure): the SpiffeID validating webhook (`webhook_enabled`), served over HTTPS
//!   on `webhook_port` with `tls.crt`/`tls.key` from `webhook_cert_dir`.

pub mod admission;
pub mod controller;
pub mod convert;
pub mod plan;
pub mod pods;
pub mod policy;
pub mod projection;
pub mod registrations;
pub mod resource;
pub mod sync;
pub mod template;
