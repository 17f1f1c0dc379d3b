//! Kubernetes Events about objects whose identity cannot be formed (invalid or reserved label,
//! annotation or template value, invalid federation domain, a SpiffeID the policy refuses, an entry
//! SPIRE rejects). Events are best effort: a failure to publish is logged and never blocks the
//! registrar.
//!
//! One set of reasons for every mode ([`Reason`]), and notes shortened to the API server's 1 kB
//! limit rather than dropped.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Why an Event was recorded; the same reasons in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The object's label/annotation/template value, federation or spec forms no valid identity.
    InvalidIdentity,
    /// The identity is reserved (SPIRE's or a registrar's node-alias IDs), or a SpiffeID asks for
    /// what only the registrar may write (cluster/node selectors, another namespace, downstream).
    ReservedIdentity,
    /// Another entry with the same SPIFFE ID, parent and selectors exists and is not this object's.
    EntryConflict,
    /// SPIRE refused the entry with an error no retry can fix.
    SpireRejected,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidIdentity => "InvalidIdentity",
            Reason::ReservedIdentity => "ReservedIdentity",
            Reason::EntryConflict => "EntryConflict",
            Reason::SpireRejected => "SpireRejected",
        }
    }

    /// The reason for an ID error (reserved IDs get their own).
    pub fn of(error: &crate::id::IdError) -> Self {
        match error {
            crate::id::IdError::Reserved { .. } => Reason::ReservedIdentity,
            _ => Reason::InvalidIdentity,
        }
    }

    /// The reason for a pod's identity error.
    pub fn of_identity(error: &crate::identity::IdentityError) -> Self {
        match error.kind() {
            crate::identity::IdentityErrorKind::InvalidId { reason, .. } => Self::of(reason),
            _ => Reason::InvalidIdentity,
        }
    }
}

/// The API server refuses Event notes over 1 kB; longer ones are cut at a character boundary and
/// marked, so the Event is still recorded.
pub const MAX_NOTE_BYTES: usize = 1024;

/// `note` shortened to [`MAX_NOTE_BYTES`] (with a trailing `…`) when it is longer.
pub fn shorten_note(note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let marker = "…";
    let mut end = MAX_NOTE_BYTES - marker.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &note[..end])
}

/// How long publishing one Event may take before it is given up (and logged).
pub const PUBLISH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Publishes `Warning` events on behalf of the registrar.
#[derive(Clone)]
pub struct EventSink {
    recorder: Option<Recorder>,
}

impl EventSink {
    pub fn new(client: kube::Client, controller: &str) -> Self {
        let reporter =
            Reporter { controller: controller.to_string(), instance: std::env::var("POD_NAME").ok() };
        Self { recorder: Some(Recorder::new(client, reporter)) }
    }

    /// A sink that drops everything (unit tests).
    pub fn disabled() -> Self {
        Self { recorder: None }
    }

    pub fn pod_warning(&self, namespace: &str, name: &str, uid: &str, reason: Reason, note: String) {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some(uid.into()).filter(|u: &String| !u.is_empty()),
            ..Default::default()
        };
        self.warning(&reference, reason, note);
    }

    /// A `Warning` event with `reason` and `note` on the object `reference` points at. Published
    /// off the caller's path, within [`PUBLISH_DEADLINE`]: a slow or unreachable API server never
    /// holds up a sync (the kube client's own timeout is minutes).
    pub fn warning(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        reason: Reason,
        note: String,
    ) {
        let Some(recorder) = self.recorder.clone() else { return };
        let reference = reference.clone();
        let event = Event {
            type_: EventType::Warning,
            reason: reason.as_str().into(),
            note: Some(shorten_note(note)),
            action: "Register".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(PUBLISH_DEADLINE, recorder.publish(&event, &reference)).await;
            let error = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {PUBLISH_DEADLINE:?}"),
            };
            tracing::warn!(kind = ?reference.kind, name = ?reference.name, error, "Could not publish Kubernetes event.");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_shortened_at_a_character_boundary() {
        assert_eq!(shorten_note("short".into()), "short");
        let long = "é".repeat(MAX_NOTE_BYTES);
        let cut = shorten_note(long);
        assert!(cut.len() <= MAX_NOTE_BYTES && cut.ends_with('…'), "{}", cut.len());
    }
}
