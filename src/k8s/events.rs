//! Kubernetes Events about pods whose identity cannot be formed (invalid label or annotation
//! value, invalid federation domain). Events are best effort: a failure to publish is logged and
//! never blocks the registrar.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};

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

    pub async fn pod_warning(&self, namespace: &str, name: &str, uid: &str, reason: &str, note: String) {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some(uid.into()).filter(|u: &String| !u.is_empty()),
            ..Default::default()
        };
        self.warning(&reference, reason, note).await;
    }

    /// A `Warning` event with `reason` and `note` on the object `reference` points at.
    pub async fn warning(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        reason: &str,
        note: String,
    ) {
        let Some(recorder) = &self.recorder else { return };
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Register".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, reference).await {
            tracing::warn!(kind = ?reference.kind, name = ?reference.name, error = %e,
                "Could not publish Kubernetes event.");
        }
    }
}
