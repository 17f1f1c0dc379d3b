//! A tiny renderer for the original's Go-template subset: `{{.Pod.Name}}`, `{{.Pod.Namespace}}`,
//! `{{.Pod.UID}}`, `{{.Pod.ServiceAccount}}`, `{{.Pod.Hostname}}`, `{{.Pod.NodeName}}` and
//! `{{.Context.<key>}}`. Spaces inside the braces are allowed. Pure; no I/O.
//!
//! Unlike Go's `text/template`, a missing context key is an error (never `<no value>`), and so is
//! any other action: templates that worked with the original only use these fields.

use std::collections::BTreeMap;

/// The pod fields a template may reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFields {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
    pub hostname: String,
    pub node_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template {0:?} has an unclosed \"{{{{\"")]
    Unclosed(String),
    #[error(
        "template {template:?}: unknown field {field:?} (use .Pod.Name, .Pod.Namespace, .Pod.UID, .Pod.ServiceAccount, .Pod.Hostname, .Pod.NodeName or .Context.<key>)"
    )]
    UnknownField { template: String, field: String },
    #[error("template {template:?} references non-existing context key {key:?}")]
    MissingContext { template: String, key: String },
}

/// Renders `template` for `pod` with `context`.
pub fn render(
    template: &str,
    pod: &PodFields,
    context: &BTreeMap<String, String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed(template.to_string()))?;
        let field = after[..end].trim();
        out.push_str(&lookup(template, field, pod, context)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(
    template: &str,
    field: &str,
    pod: &PodFields,
    context: &BTreeMap<String, String>,
) -> Result<String, TemplateError> {
    let unknown = || TemplateError::UnknownField { template: template.to_string(), field: field.to_string() };
    if let Some(key) = field.strip_prefix(".Context.") {
        return context.get(key).cloned().ok_or_else(|| TemplateError::MissingContext {
            template: template.to_string(),
            key: key.to_string(),
        });
    }
    let value = match field.strip_prefix(".Pod.").ok_or_else(unknown)? {
        "Name" => &pod.name,
        "Namespace" => &pod.namespace,
        "UID" => &pod.uid,
        "ServiceAccount" => &pod.service_account,
        "Hostname" => &pod.hostname,
        "NodeName" => &pod.node_name,
        _ => return Err(unknown()),
    };
    Ok(value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodFields {
        PodFields {
            name: "web-1".into(),
            namespace: "shop".into(),
            uid: "u-1".into(),
            service_account: "web-sa".into(),
            hostname: "h".into(),
            node_name: "n1".into(),
        }
    }

    #[test]
    fn renders_every_field() {
        let ctx = BTreeMap::from([("Region".to_string(), "eu".to_string())]);
        let table = [
            ("ns/{{.Pod.Namespace}}/sa/{{.Pod.ServiceAccount}}", "ns/shop/sa/web-sa"),
            ("{{.Pod.Name}}", "web-1"),
            ("{{ .Pod.UID }}-{{.Pod.Hostname}}-{{.Pod.NodeName}}", "u-1-h-n1"),
            ("r/{{ .Context.Region }}/{{.Pod.Name}}", "r/eu/web-1"),
            ("plain", "plain"),
            ("", ""),
        ];
        for (template, want) in table {
            assert_eq!(render(template, &pod(), &ctx).as_deref(), Ok(want), "{template}");
        }
    }

    #[test]
    fn rejects_bad_templates() {
        let ctx = BTreeMap::new();
        assert!(matches!(render("{{.Pod.Label}}", &pod(), &ctx), Err(TemplateError::UnknownField { .. })));
        assert!(matches!(render("{{.Node.Name}}", &pod(), &ctx), Err(TemplateError::UnknownField { .. })));
        assert!(matches!(render("{{.Pod.Name", &pod(), &ctx), Err(TemplateError::Unclosed(_))));
        assert!(matches!(
            render("{{.Context.Zone}}", &pod(), &ctx),
            Err(TemplateError::MissingContext { .. })
        ));
    }
}
