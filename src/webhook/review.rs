//! AdmissionReview parsing and response building, for `admission.k8s.io/v1` and `v1beta1`.
//!
//! Pure: bytes in, [`Request`] out; verdict in, JSON out. The two versions share the same wire
//! shape for every field the registrar reads, so instead of converting v1beta1 to v1 and back
//! (as the original did) we parse both the same way and answer with the request's own
//! apiVersion.
//!
//! Error messages are the HTTP 400 bodies the handler sends: shape problems start with
//! `Malformed JSON body: `, an unknown version or kind is `Unsupported group version kind: …`.

use serde_json::{Value, json};

use super::{Operation, Request};

/// The AdmissionReview versions the API server may send (the webhook configuration lists both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    V1Beta1,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "admission.k8s.io/v1",
            ApiVersion::V1Beta1 => "admission.k8s.io/v1beta1",
        }
    }

    fn parse(s: &str) -> Option<ApiVersion> {
        match s {
            "admission.k8s.io/v1" => Some(ApiVersion::V1),
            "admission.k8s.io/v1beta1" => Some(ApiVersion::V1Beta1),
            _ => None,
        }
    }
}

/// A JSON object, as parsed.
type Object = serde_json::Map<String, Value>;

fn malformed(what: impl std::fmt::Display) -> String {
    format!("Malformed JSON body: {what}")
}

/// Takes `key` out of `obj`; absent and `null` are both `None` (the API server sends
/// `"object": null` for DELETE and `"oldObject": null` for CREATE).
fn take(obj: &mut Object, key: &str) -> Option<Value> {
    obj.remove(key).filter(|v| !v.is_null())
}

fn take_object(obj: &mut Object, key: &str, path: &str) -> Result<Option<Object>, String> {
    match take(obj, key) {
        None => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(malformed(format_args!("{path} is not an object"))),
    }
}

fn take_string(obj: &mut Object, key: &str, path: &str) -> Result<Option<String>, String> {
    match take(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(malformed(format_args!("{path} is not a string"))),
    }
}

/// Parses an AdmissionReview body into its version and the request fields the registrar uses.
///
/// Fields are read from the JSON tree by hand (not through derived structs) so that each
/// problem is reported by its JSON path, and so that nothing but objects are accepted where
/// objects belong (serde's derive would also take arrays).
pub fn parse(body: &[u8]) -> Result<(ApiVersion, Request), String> {
    let doc: Value = serde_json::from_slice(body).map_err(malformed)?;
    let Value::Object(mut doc) = doc else {
        return Err(malformed("not a JSON object"));
    };
    let api_version = take_string(&mut doc, "apiVersion", "apiVersion")?;
    let api_version = api_version.ok_or_else(|| malformed("missing apiVersion"))?;
    let kind = take_string(&mut doc, "kind", "kind")?.ok_or_else(|| malformed("missing kind"))?;
    let api = match ApiVersion::parse(&api_version) {
        Some(api) if kind == "AdmissionReview" => api,
        _ => return Err(format!("Unsupported group version kind: {api_version}/{kind}")),
    };
    let mut req = take_object(&mut doc, "request", "request")?.ok_or_else(|| malformed("missing request"))?;
    let uid = take_string(&mut req, "uid", "request.uid")?
        .filter(|u| !u.is_empty())
        .ok_or_else(|| malformed("missing request.uid"))?;
    let operation = match take_string(&mut req, "operation", "request.operation")?.as_deref() {
        Some("CREATE") => Operation::Create,
        Some("UPDATE") => Operation::Update,
        Some("DELETE") => Operation::Delete,
        Some("CONNECT") => Operation::Connect,
        Some(other) => return Err(malformed(format_args!("unknown request.operation {other:?}"))),
        None => return Err(malformed("missing request.operation")),
    };
    let (group, kind) = match take_object(&mut req, "kind", "request.kind")? {
        Some(mut gvk) => (
            take_string(&mut gvk, "group", "request.kind.group")?.unwrap_or_default(),
            take_string(&mut gvk, "kind", "request.kind.kind")?.unwrap_or_default(),
        ),
        None => Default::default(),
    };
    let namespace = take_string(&mut req, "namespace", "request.namespace")?.unwrap_or_default();
    let name = take_string(&mut req, "name", "request.name")?;
    let object = take(&mut req, "object");
    let old_object = take(&mut req, "oldObject");
    let dry_run = match take(&mut req, "dryRun") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(malformed("request.dryRun is not a boolean")),
    };
    // A CREATE through generateName carries no request.name; the object's metadata has the
    // name the API server generated (empty only if it did not get that far).
    let name = match name.filter(|n| !n.is_empty()) {
        Some(name) => name,
        None => object
            .as_ref()
            .and_then(|o| o.pointer("/metadata/name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    };
    Ok((api, Request { uid, operation, group, kind, namespace, name, object, old_object, dry_run }))
}

/// The AdmissionReview answering request `uid`. A denial carries a `status` with code 403 and
/// `message` (what kubectl shows the user); an allowance carries no status.
pub fn response(api: ApiVersion, uid: &str, verdict_allowed: bool, message: Option<&str>) -> Value {
    let mut response = json!({ "uid": uid, "allowed": verdict_allowed });
    if !verdict_allowed {
        let mut status = json!({ "code": 403 });
        if let Some(message) = message {
            status["message"] = json!(message);
        }
        response["status"] = status;
    }
    json!({ "apiVersion": api.as_str(), "kind": "AdmissionReview", "response": response })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pod CREATE as a v1 API server sends it (StatefulSet controller creating `web-0`).
    pub(crate) const V1_CREATE: &str = r#"{
      "apiVersion": "admission.k8s.io/v1",
      "kind": "AdmissionReview",
      "request": {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "web-0",
        "namespace": "default",
        "operation": "CREATE",
        "userInfo": {
          "username": "system:serviceaccount:kube-system:statefulset-controller",
          "uid": "5c8b2d2a-0c4e-4b0e-9a43-2f1c7a3f0b11",
          "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
        },
        "object": {
          "apiVersion": "v1",
          "kind": "Pod",
          "metadata": {
            "name": "web-0",
            "generateName": "web-",
            "namespace": "default",
            "labels": {"app": "nginx", "statefulset.kubernetes.io/pod-name": "web-0"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web",
              "uid": "a1b2c3d4-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]
          },
          "spec": {
            "serviceAccountName": "default",
            "containers": [{"name": "nginx", "image": "registry.k8s.io/nginx-slim:0.8",
              "ports": [{"containerPort": 80, "name": "web", "protocol": "TCP"}]}]
          },
          "status": {"phase": "Pending", "qosClass": "BestEffort"}
        },
        "oldObject": null,
        "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
      }
    }"#;

    /// A dry-run pod DELETE from a v1beta1 API server (`kubectl delete --dry-run=server`).
    pub(crate) const V1BETA1_DELETE: &str = r#"{
      "apiVersion": "admission.k8s.io/v1beta1",
      "kind": "AdmissionReview",
      "request": {
        "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "frontend-7d9f8c6b5-x2x4q",
        "namespace": "shop",
        "operation": "DELETE",
        "userInfo": {"username": "admin", "groups": ["system:masters", "system:authenticated"]},
        "object": null,
        "oldObject": {
          "apiVersion": "v1",
          "kind": "Pod",
          "metadata": {"name": "frontend-7d9f8c6b5-x2x4q", "namespace": "shop",
            "uid": "9e1e4f0a-7c2b-4f55-8a43-d2b4d6b3c001", "labels": {"app": "frontend"}},
          "spec": {"serviceAccountName": "frontend", "nodeName": "node-1",
            "containers": [{"name": "app", "image": "example.com/frontend:1.2.3"}]},
          "status": {"phase": "Running", "podIP": "10.244.1.17"}
        },
        "dryRun": true,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions", "dryRun": ["All"]}
      }
    }"#;

    /// `base` with `path` (a JSON pointer) replaced by `value`, or removed when `None`.
    pub(crate) fn edited(base: &str, path: &str, value: Option<Value>) -> Vec<u8> {
        let mut doc: Value = serde_json::from_str(base).unwrap();
        let (parent, key) = path.rsplit_once('/').unwrap();
        let parent = doc.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        match value {
            Some(v) => parent.insert(key.to_string(), v),
            None => parent.remove(key),
        };
        serde_json::to_vec(&doc).unwrap()
    }

    #[test]
    fn parses_v1_create() {
        let (api, req) = parse(V1_CREATE.as_bytes()).unwrap();
        assert_eq!(api, ApiVersion::V1);
        assert_eq!(req.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(req.operation, Operation::Create);
        assert_eq!((req.group.as_str(), req.kind.as_str()), ("", "Pod"));
        assert_eq!((req.namespace.as_str(), req.name.as_str()), ("default", "web-0"));
        assert_eq!(req.object.as_ref().unwrap()["spec"]["serviceAccountName"], "default");
        assert_eq!(req.old_object, None);
        assert!(!req.dry_run);
    }

    #[test]
    fn parses_v1beta1_delete() {
        let (api, req) = parse(V1BETA1_DELETE.as_bytes()).unwrap();
        assert_eq!(api, ApiVersion::V1Beta1);
        assert_eq!(req.uid, "0df28fbd-5f5f-11e8-bc74-36e6bb280816");
        assert_eq!(req.operation, Operation::Delete);
        assert_eq!((req.namespace.as_str(), req.name.as_str()), ("shop", "frontend-7d9f8c6b5-x2x4q"));
        assert_eq!(req.object, None);
        assert_eq!(req.old_object.as_ref().unwrap()["spec"]["nodeName"], "node-1");
        assert!(req.dry_run);
    }

    #[test]
    fn optional_fields_and_operations() {
        type Check = fn(&Request);
        let cases: &[(&str, Option<Value>, Check)] = &[
            // generateName CREATE: the name comes from the object.
            ("/request/name", None, |r| assert_eq!(r.name, "web-0")),
            ("/request/name", Some(json!("")), |r| assert_eq!(r.name, "web-0")),
            ("/request/name", Some(Value::Null), |r| assert_eq!(r.name, "web-0")),
            ("/request/object", Some(Value::Null), |r| assert_eq!(r.object, None)),
            ("/request/namespace", None, |r| assert_eq!(r.namespace, "")),
            ("/request/dryRun", None, |r| assert!(!r.dry_run)),
            ("/request/kind", None, |r| assert_eq!((r.group.as_str(), r.kind.as_str()), ("", ""))),
            ("/request/operation", Some(json!("UPDATE")), |r| assert_eq!(r.operation, Operation::Update)),
            ("/request/operation", Some(json!("CONNECT")), |r| assert_eq!(r.operation, Operation::Connect)),
            ("/request/oldObject", Some(json!({"kind": "Pod"})), |r| assert!(r.old_object.is_some())),
        ];
        for (path, value, check) in cases {
            let (_, req) = parse(&edited(V1_CREATE, path, value.clone()))
                .unwrap_or_else(|e| panic!("{path} = {value:?}: {e}"));
            check(&req);
        }
        // No name anywhere: empty rather than an error (the admission layer decides).
        let mut doc: Value = serde_json::from_str(V1_CREATE).unwrap();
        doc["request"].as_object_mut().unwrap().remove("name");
        doc["request"]["object"]["metadata"].as_object_mut().unwrap().remove("name");
        assert_eq!(parse(&serde_json::to_vec(&doc).unwrap()).unwrap().1.name, "");
    }

    #[test]
    fn errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "Malformed JSON body: EOF while parsing"),
            (b"{not json".to_vec(), "Malformed JSON body: key must be a string"),
            (b"[]".to_vec(), "Malformed JSON body: not a JSON object"),
            (b"\"AdmissionReview\"".to_vec(), "Malformed JSON body: not a JSON object"),
            (
                edited(V1_CREATE, "/apiVersion", Some(json!(1))),
                "Malformed JSON body: apiVersion is not a string",
            ),
            (edited(V1_CREATE, "/apiVersion", None), "Malformed JSON body: missing apiVersion"),
            (edited(V1_CREATE, "/kind", None), "Malformed JSON body: missing kind"),
            (
                edited(V1_CREATE, "/apiVersion", Some(json!("admission.k8s.io/v2"))),
                "Unsupported group version kind: admission.k8s.io/v2/AdmissionReview",
            ),
            (
                edited(V1_CREATE, "/apiVersion", Some(json!("v1"))),
                "Unsupported group version kind: v1/AdmissionReview",
            ),
            (
                edited(V1_CREATE, "/kind", Some(json!("Pod"))),
                "Unsupported group version kind: admission.k8s.io/v1/Pod",
            ),
            (edited(V1_CREATE, "/request", None), "Malformed JSON body: missing request"),
            (edited(V1_CREATE, "/request", Some(Value::Null)), "Malformed JSON body: missing request"),
            (edited(V1_CREATE, "/request/uid", None), "Malformed JSON body: missing request.uid"),
            (edited(V1_CREATE, "/request/uid", Some(json!(""))), "Malformed JSON body: missing request.uid"),
            (edited(V1_CREATE, "/request", Some(json!([]))), "Malformed JSON body: request is not an object"),
            (
                edited(V1_CREATE, "/request/uid", Some(json!(7))),
                "Malformed JSON body: request.uid is not a string",
            ),
            (
                edited(V1_CREATE, "/request/kind", Some(json!("Pod"))),
                "Malformed JSON body: request.kind is not an object",
            ),
            (
                edited(V1_CREATE, "/request/kind/kind", Some(json!(["Pod"]))),
                "Malformed JSON body: request.kind.kind is not a string",
            ),
            (
                edited(V1_CREATE, "/request/namespace", Some(json!({}))),
                "Malformed JSON body: request.namespace is not a string",
            ),
            (edited(V1_CREATE, "/request/operation", None), "Malformed JSON body: missing request.operation"),
            (
                edited(V1_CREATE, "/request/operation", Some(json!("create"))),
                "Malformed JSON body: unknown request.operation \"create\"",
            ),
            (
                edited(V1_CREATE, "/request/dryRun", Some(json!("yes"))),
                "Malformed JSON body: request.dryRun is not a boolean",
            ),
        ];
        for (body, want) in cases {
            let err = parse(&body).expect_err(want);
            assert!(err.starts_with(want), "got {err:?}, want prefix {want:?}");
        }
    }

    #[test]
    fn responses() {
        assert_eq!(
            response(ApiVersion::V1, "u-1", true, None),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "response": {"uid": "u-1", "allowed": true}})
        );
        // An allowance never carries a status, even if a message is passed.
        assert_eq!(
            response(ApiVersion::V1, "u-1", true, Some("x")),
            response(ApiVersion::V1, "u-1", true, None)
        );
        assert_eq!(
            response(ApiVersion::V1Beta1, "u-2", false, Some("no SPIFFE ID")),
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                   "response": {"uid": "u-2", "allowed": false,
                                "status": {"code": 403, "message": "no SPIFFE ID"}}})
        );
        assert_eq!(response(ApiVersion::V1, "u-3", false, None)["response"]["status"], json!({"code": 403}));
    }
}
