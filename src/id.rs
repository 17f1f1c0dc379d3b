//! SPIFFE trust domains, SPIFFE IDs and DNS names: parsing and validation rules, shared by every
//! mode. Pure; no I/O.
//!
//! The rules are the ones the SPIRE server enforces (go-spiffe `FromPath` and SPIRE's DNS-name
//! validation), so anything that passes here is accepted by the server, and anything the server
//! would reject is reported here with a reason that names the offending part.

use std::fmt;

/// Why an identifier was rejected. Messages are lowercase and name the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain {0:?} may only contain lowercase letters, digits, '.', '-' and '_'")]
    BadTrustDomainChar(String),
    #[error("SPIFFE ID {0:?} must start with \"spiffe://\"")]
    MissingScheme(String),
    #[error("path {0:?} must start with '/'")]
    NoLeadingSlash(String),
    #[error("path {0:?} must not be empty")]
    EmptyPath(String),
    #[error("path segment {segment:?} is empty (in {context:?})")]
    EmptySegment { segment: String, context: String },
    #[error("path segment {0:?} may not be '.' or '..'")]
    DotSegment(String),
    #[error("path segment {0:?} may only contain letters, digits, '.', '-' and '_'")]
    BadSegmentChar(String),
    #[error("path {0:?} must not end with '/'")]
    TrailingSlash(String),
    #[error("SPIFFE ID {id:?} is not in trust domain {expected:?}")]
    WrongTrustDomain { id: String, expected: String },
    /// The ID lies under a prefix that only SPIRE and the registrars' node aliases may use (see
    /// `identity::reserved`).
    #[error(
        "SPIFFE ID {id:?} is reserved: IDs under {prefix:?} belong to SPIRE and to registrars' node \
         aliases, and a workload holding one would give its node's agent other workloads' SVIDs"
    )]
    Reserved { id: String, prefix: String },
}

/// Why a DNS name was rejected (SPIRE's rule: labels of 2-63 letters, digits or inner hyphens).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("DNS name is empty")]
    Empty,
    #[error("DNS name {0:?} is longer than 255 characters")]
    TooLong(String),
    #[error("DNS name {name:?} has an invalid label {label:?}: {reason}")]
    BadLabel { name: String, label: String, reason: &'static str },
}

/// A validated trust-domain name, stored bare (`example.org`, never `spiffe://example.org`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Accepts `example.org` or `spiffe://example.org` (a deliberate difference from the original,
    /// which built broken IDs from the prefixed form). Comparison is always exact.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let name = raw.strip_prefix("spiffe://").unwrap_or(raw);
        let name = name.strip_suffix('/').unwrap_or(name);
        if name.is_empty() {
            return Err(IdError::EmptyTrustDomain);
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
            return Err(IdError::BadTrustDomainChar(raw.to_string()));
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<td>/spire/server`, the parent of node(-alias) entries.
    pub fn server_id(&self) -> SpiffeId {
        SpiffeId { trust_domain: self.clone(), path: "/spire/server".to_string() }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks one path segment: non-empty, not `.`/`..`, only `[A-Za-z0-9._-]`.
pub fn validate_segment(segment: &str, context: &str) -> Result<(), IdError> {
    if segment.is_empty() {
        return Err(IdError::EmptySegment { segment: segment.to_string(), context: context.to_string() });
    }
    if segment == "." || segment == ".." {
        return Err(IdError::DotSegment(segment.to_string()));
    }
    if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(IdError::BadSegmentChar(segment.to_string()));
    }
    Ok(())
}

/// A validated SPIFFE ID: a trust domain and a non-empty path of valid segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Always starts with `/`, never ends with `/`, segments validated.
    path: String,
}

impl SpiffeId {
    /// Builds `spiffe://<td>/<seg1>/<seg2>...`, validating each segment.
    pub fn from_segments<S: AsRef<str>>(td: &TrustDomain, segments: &[S]) -> Result<Self, IdError> {
        let mut path = String::new();
        for s in segments {
            let s = s.as_ref();
            validate_segment(s, s)?;
            path.push('/');
            path.push_str(s);
        }
        if path.is_empty() {
            return Err(IdError::EmptyPath(path));
        }
        Ok(Self { trust_domain: td.clone(), path })
    }

    /// Parses a path such as `/ns/default/sa/foo` within `td`.
    pub fn from_path(td: &TrustDomain, path: &str) -> Result<Self, IdError> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(if path.is_empty() {
                IdError::EmptyPath(path.to_string())
            } else {
                IdError::NoLeadingSlash(path.to_string())
            });
        };
        if rest.is_empty() {
            return Err(IdError::EmptyPath(path.to_string()));
        }
        if rest.ends_with('/') {
            return Err(IdError::TrailingSlash(path.to_string()));
        }
        for seg in rest.split('/') {
            validate_segment(seg, path)?;
        }
        Ok(Self { trust_domain: td.clone(), path: path.to_string() })
    }

    /// Parses a full `spiffe://td/path` URI.
    pub fn parse(uri: &str) -> Result<Self, IdError> {
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| IdError::MissingScheme(uri.to_string()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let td = TrustDomain::parse(td)?;
        Self::from_path(&td, path)
    }

    /// Parses a full URI and requires it to be in `td` (exact comparison, never a string prefix).
    pub fn parse_in(uri: &str, td: &TrustDomain) -> Result<Self, IdError> {
        let id = Self::parse(uri)?;
        if &id.trust_domain != td {
            return Err(IdError::WrongTrustDomain { id: uri.to_string(), expected: td.to_string() });
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Appends validated segments.
    pub fn join<S: AsRef<str>>(&self, segments: &[S]) -> Result<Self, IdError> {
        let mut path = self.path.clone();
        for s in segments {
            let s = s.as_ref();
            validate_segment(s, s)?;
            path.push('/');
            path.push_str(s);
        }
        Ok(Self { trust_domain: self.trust_domain.clone(), path })
    }

    /// True when `self` is `ancestor` or lies strictly below it (segment-wise, same trust domain).
    pub fn is_under(&self, ancestor: &SpiffeId) -> bool {
        self.trust_domain == ancestor.trust_domain
            && (self.path == ancestor.path
                || (self.path.starts_with(&ancestor.path)
                    && self.path.as_bytes().get(ancestor.path.len()) == Some(&b'/')))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// SPIRE's DNS-name rule: trimmed, non-empty, at most 255 characters, dot-separated labels of
/// 1-63 characters that match `^[a-zA-Z0-9]([-]*[a-zA-Z0-9])+$` (so at least two characters, no
/// leading or trailing hyphen, no `*` or `_`). Returns the trimmed name.
pub fn validate_dns_name(raw: &str) -> Result<String, DnsError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(DnsError::Empty);
    }
    if name.len() > 255 {
        return Err(DnsError::TooLong(name.to_string()));
    }
    for label in name.split('.') {
        let bad = |reason| DnsError::BadLabel { name: name.to_string(), label: label.to_string(), reason };
        if label.len() < 2 {
            return Err(bad("labels need at least two characters"));
        }
        if label.len() > 63 {
            return Err(bad("labels may have at most 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad("labels may only contain letters, digits and '-'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("labels may not start or end with '-'"));
        }
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    #[test]
    fn trust_domain_accepts_bare_and_prefixed_forms() {
        assert_eq!(TrustDomain::parse("spiffe://example.org").unwrap(), td());
        assert_eq!(td().as_str(), "example.org");
        assert!(matches!(TrustDomain::parse("Example.org"), Err(IdError::BadTrustDomainChar(_))));
        assert!(matches!(TrustDomain::parse(""), Err(IdError::EmptyTrustDomain)));
        assert!(matches!(TrustDomain::parse("spiffe://"), Err(IdError::EmptyTrustDomain)));
    }

    #[test]
    fn ids_from_segments_and_paths() {
        let id = SpiffeId::from_segments(&td(), &["ns", "default", "sa", "web"]).unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/ns/default/sa/web");
        assert_eq!(SpiffeId::from_path(&td(), "/ns/default/sa/web").unwrap(), id);
        assert_eq!(SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap(), id);
        for bad in ["", "/", "//a", "/a/", "/a//b", "/./a", "/a/..", "/a b", "a/b", "/é"] {
            assert!(SpiffeId::from_path(&td(), bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(SpiffeId::from_segments(&td(), &["a/b"]).is_err());
        assert!(SpiffeId::from_segments::<&str>(&td(), &[]).is_err());
    }

    #[test]
    fn trust_domain_checks_are_exact_not_prefix() {
        let evil = "spiffe://example.org.evil/ns/x";
        assert!(matches!(SpiffeId::parse_in(evil, &td()), Err(IdError::WrongTrustDomain { .. })));
        let root = SpiffeId::from_path(&td(), "/reg/c/node").unwrap();
        assert!(SpiffeId::from_path(&td(), "/reg/c/node/n1").unwrap().is_under(&root));
        assert!(root.is_under(&root));
        assert!(!SpiffeId::from_path(&td(), "/reg/c/nodes/n1").unwrap().is_under(&root));
        let other = SpiffeId::parse("spiffe://example.com/reg/c/node/n1").unwrap();
        assert!(!other.is_under(&root));
    }

    #[test]
    fn dns_names_follow_spires_rule() {
        assert_eq!(validate_dns_name(" web.default.svc ").unwrap(), "web.default.svc");
        assert!(validate_dns_name("10-0-0-1.ns.pod.cluster.local").is_ok());
        for bad in ["", "a.b", "-ab", "ab-", "a_b", "*.example.org", "ab..cd", &"a".repeat(64)] {
            assert!(validate_dns_name(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
