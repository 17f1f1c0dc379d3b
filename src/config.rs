//! Configuration: the HCL file format, its defaults, and every rule a configuration must satisfy
//! before the registrar starts. Pure, except [`load`], which only reads the file.
//!
//! Parsing runs in three steps so that a user sees every problem of a file at once:
//!
//! 1. syntax (`hcl::parse`): a syntax error is reported alone, with line and column;
//! 2. shape: every top-level key must be known (the closest known key is suggested otherwise),
//!    must have the right type, and string values must be quoted strings, not expressions;
//! 3. meaning: required keys, keys of another mode, addresses, durations and the cross-key rules
//!    of the original registrar, producing the typed [`Config`] with every default filled in.
//!
//! Deliberate differences from the Go registrar: unknown keys and keys of another mode are errors
//! (HCL v1 silently ignored them, which hid typos such as `add_svc_dns_names`); giving both
//! `server_address` and `server_socket_path` is an error (the original let `server_address` win);
//! templates that reference a context key that is not defined are errors; `trust_domain` may be
//! written with its `spiffe://` prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::id::{self, TrustDomain};

// ---------------------------------------------------------------------------------------------
// Typed configuration
// ---------------------------------------------------------------------------------------------

/// A validated configuration; every default is filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub log_path: Option<PathBuf>,
    #[serde(serialize_with = "display")]
    pub trust_domain: TrustDomain,
    pub server: ServerAddress,
    pub cluster: String,
    pub id_source: IdSource,
    pub disabled_namespaces: BTreeSet<String>,
    /// `dry_run`: run normally but send no write to SPIRE (`spire::dry_run`); reconcile and
    /// webhook modes.
    pub dry_run: bool,
    /// `x509_svid_ttl`, `jwt_svid_ttl`, `entry_hint`: set on every entry (reconcile and webhook
    /// modes; crd mode's entries follow their SpiffeID, whose schema has no such fields).
    pub managed: crate::model::Managed,
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Panic,
    Fatal,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How to reach the SPIRE server's API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerAddress {
    /// Plaintext gRPC on the server's local socket (callers there are admins).
    Unix { path: PathBuf },
    /// mTLS gRPC to `host:port`, with an X509-SVID obtained from the agent's Workload API socket.
    Tcp { address: String, agent_socket_path: PathBuf },
}

pub use crate::identity::IdSource;

/// The selected mode with its own settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    Webhook(WebhookConfig),
    Reconcile(ReconcileConfig),
    Crd(CrdConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cacert_path: PathBuf,
    pub insecure_skip_client_verification: bool,
    pub metrics_addr: Option<SocketAddr>,
    #[serde(serialize_with = "duration")]
    pub resync_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderElection {
    pub enabled: bool,
    pub lock: LockKind,
    /// `None`: the namespace the registrar runs in.
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    ConfigMaps,
    Leases,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconcileConfig {
    pub leader_election: LeaderElection,
    pub metrics_addr: Option<SocketAddr>,
    pub controller_name: String,
    pub add_pod_dns_names: bool,
    pub cluster_dns_zone: String,
    #[serde(serialize_with = "duration")]
    pub resync_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrdConfig {
    pub add_svc_dns_name: bool,
    pub pod_controller: bool,
    pub leader_election: LeaderElection,
    pub metrics_addr: Option<SocketAddr>,
    pub webhook_enabled: bool,
    pub webhook_cert_dir: PathBuf,
    pub webhook_port: u16,
    pub webhook_service_name: String,
    pub identity_template: Option<String>,
    pub identity_template_label: Option<String>,
    pub dns_name_templates: Vec<String>,
    pub context: BTreeMap<String, String>,
    #[serde(serialize_with = "duration")]
    pub resync_interval: Duration,
}

impl Config {
    /// Pretty JSON of the effective configuration (what `validate` prints).
    pub fn to_json(&self) -> String {
        // Every field serialises to a string-keyed JSON value, so this cannot fail in practice;
        // still, a printing helper should not be able to panic.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

impl LogLevel {
    /// The `tracing` level directive: tracing has no panic/fatal levels, so both map to `error`.
    pub fn as_filter(&self) -> &'static str {
        match self {
            LogLevel::Panic | LogLevel::Fatal | LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    fn parse(raw: &str) -> Result<Self, String> {
        // Case-insensitive, as logrus' ParseLevel was.
        Ok(match raw.to_ascii_lowercase().as_str() {
            "panic" => LogLevel::Panic,
            "fatal" => LogLevel::Fatal,
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(format!(
                    "invalid log level {raw:?}, valid values are panic, fatal, error, warn, warning, info, \
                     debug and trace"
                ));
            }
        })
    }
}

impl LogFormat {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("invalid log format {raw:?}, valid values are \"text\" and \"json\"")),
        }
    }
}

impl LockKind {
    /// The name used in the configuration file.
    pub fn as_str(&self) -> &'static str {
        match self {
            LockKind::ConfigMaps => "configmaps",
            LockKind::Leases => "leases",
        }
    }

    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "configmaps" => Ok(LockKind::ConfigMaps),
            "leases" => Ok(LockKind::Leases),
            _ => Err(format!("invalid lock kind {raw:?}, valid values are \"configmaps\" and \"leases\"")),
        }
    }
}

impl Mode {
    /// The mode's name as written in the configuration file.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Webhook(_) => "webhook",
            Mode::Reconcile(_) => "reconcile",
            Mode::Crd(_) => "crd",
        }
    }

    /// Where `/metrics` listens; `None` when disabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        match self {
            Mode::Webhook(c) => c.metrics_addr,
            Mode::Reconcile(c) => c.metrics_addr,
            Mode::Crd(c) => c.metrics_addr,
        }
    }

    /// How often a full resync against the SPIRE server runs.
    pub fn resync_interval(&self) -> Duration {
        match self {
            Mode::Webhook(c) => c.resync_interval,
            Mode::Reconcile(c) => c.resync_interval,
            Mode::Crd(c) => c.resync_interval,
        }
    }

    /// Leader-election settings; webhook mode has none (every replica answers admission requests).
    pub fn leader_election(&self) -> Option<&LeaderElection> {
        match self {
            Mode::Webhook(_) => None,
            Mode::Reconcile(c) => Some(&c.leader_election),
            Mode::Crd(c) => Some(&c.leader_election),
        }
    }
}

fn display<T: fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn duration<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*value))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem with one key. `message` is the full line shown to the user and always names the
/// key; `key` is there for programs (and tests) that want to know which key it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

impl FieldError {
    /// `key "<key>": <detail>`.
    fn at(key: &str, detail: impl fmt::Display) -> Self {
        Self { key: key.to_string(), message: format!("key {key:?}: {detail}") }
    }

    /// A message that already names its key(s), for rules that involve several keys.
    fn whole(key: &str, message: impl Into<String>) -> Self {
        Self { key: key.to_string(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unable to load configuration {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid HCL; reported alone because nothing after it can be trusted.
    #[error("{}", render_syntax(path.as_deref(), *line, *column, message, excerpt))]
    Syntax { path: Option<PathBuf>, line: usize, column: usize, message: String, excerpt: String },
    /// Every problem found, in file order where possible; one line each.
    #[error("{}", render_invalid(path.as_deref(), errors))]
    Invalid { path: Option<PathBuf>, errors: Vec<FieldError> },
}

impl ConfigError {
    /// The individual problems (empty for read and syntax errors).
    pub fn errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }

    fn in_file(self, file: &Path) -> Self {
        match self {
            ConfigError::Syntax { line, column, message, excerpt, .. } => {
                ConfigError::Syntax { path: Some(file.to_path_buf()), line, column, message, excerpt }
            }
            ConfigError::Invalid { errors, .. } => {
                ConfigError::Invalid { path: Some(file.to_path_buf()), errors }
            }
            other => other,
        }
    }

    fn syntax(err: hcl::Error) -> Self {
        match err {
            hcl::Error::Parse(e) => {
                let (line, column) = (e.location().line(), e.location().column());
                let gutter = " ".repeat(line.to_string().len());
                let caret = " ".repeat(column.saturating_sub(1));
                let excerpt = format!("  {line} | {}\n  {gutter} | {caret}^", e.line());
                ConfigError::Syntax { path: None, line, column, message: e.message().to_string(), excerpt }
            }
            other => ConfigError::Syntax {
                path: None,
                line: 0,
                column: 0,
                message: other.to_string(),
                excerpt: String::new(),
            },
        }
    }
}

fn render_syntax(path: Option<&Path>, line: usize, column: usize, message: &str, excerpt: &str) -> String {
    // `file:line:col:` is the form editors and terminals turn into a link.
    let place = match (path, line) {
        (Some(p), 0) => format!("{}: ", p.display()),
        (Some(p), _) => format!("{}:{line}:{column}: ", p.display()),
        (None, 0) => String::new(),
        (None, _) => format!("line {line}, column {column}: "),
    };
    let excerpt = if excerpt.is_empty() { String::new() } else { format!("\n{excerpt}") };
    format!("{place}syntax error: {message}{excerpt}")
}

fn render_invalid(path: Option<&Path>, errors: &[FieldError]) -> String {
    let prefix = path.map(|p| format!("{}: ", p.display())).unwrap_or_default();
    errors.iter().map(|e| format!("{prefix}{e}")).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Reads and validates a configuration file; errors name the file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, false)
}

/// [`load`], with `$VAR` and `${VAR}` replaced by the process environment first when
/// `expand_env` (the `-expandEnv` flag).
pub fn load_with(path: &Path, expand_env: bool) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let text = if expand_env { expand_vars(&text, |name| std::env::var(name).ok()) } else { text };
    parse(&text).map_err(|e| e.in_file(path))
}

/// Replaces `${NAME}` and `$NAME` with `lookup(NAME)` (empty when unset), exactly as Go's
/// `os.ExpandEnv`, which SPIRE's `-expandEnv` uses, so one config file behaves the same under
/// both: a name is `[A-Za-z0-9_]+`, or one of the shell's special characters (`$$` reads the
/// variable `$`); `${}` and an unclosed `${` are dropped; a `$` followed by anything else stays.
pub fn expand_vars(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    fn special(c: u8) -> bool {
        matches!(c, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9')
    }
    fn name_char(c: u8) -> bool {
        c == b'_' || c.is_ascii_alphanumeric()
    }
    // (name, bytes consumed after the '$'); an empty name with width > 0 is bad syntax.
    fn shell_name(s: &[u8]) -> (&[u8], usize) {
        if s[0] == b'{' {
            if s.len() > 2 && special(s[1]) && s[2] == b'}' {
                return (&s[1..2], 3);
            }
            return match s.iter().position(|&c| c == b'}') {
                None => (&[], 1),
                Some(1) => (&[], 2),
                Some(i) => (&s[1..i], i + 1),
            };
        }
        if special(s[0]) {
            return (&s[..1], 1);
        }
        let n = s.iter().take_while(|&&c| name_char(c)).count();
        (&s[..n], n)
    }
    let bytes = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut j = 0;
    while j < bytes.len() {
        if bytes[j] == b'$' && j + 1 < bytes.len() {
            let (name, width) = shell_name(&bytes[j + 1..]);
            if name.is_empty() && width == 0 {
                out.push(b'$');
            } else if !name.is_empty() {
                out.extend_from_slice(lookup(&String::from_utf8_lossy(name)).unwrap_or_default().as_bytes());
            }
            j += 1 + width;
        } else {
            out.push(bytes[j]);
            j += 1;
        }
    }
    // Only ASCII was removed or replaced by whole strings: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Validates configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let body = hcl::parse(text).map_err(ConfigError::syntax)?;
    let mut ck = Check::default();
    let (raw, present) = read_raw(body, &mut ck);
    let config = validate(&raw, &present, &mut ck);
    match config {
        Some(config) if ck.errors.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid { path: None, errors: ck.errors }),
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModeName {
    Webhook,
    Reconcile,
    Crd,
}

impl ModeName {
    fn as_str(self) -> &'static str {
        match self {
            ModeName::Webhook => "webhook",
            ModeName::Reconcile => "reconcile",
            ModeName::Crd => "crd",
        }
    }

    fn parse(raw: &str) -> Result<Self, String> {
        // Case-sensitive, like the original.
        match raw {
            "webhook" => Ok(ModeName::Webhook),
            "reconcile" => Ok(ModeName::Reconcile),
            "crd" => Ok(ModeName::Crd),
            _ => {
                Err(format!("invalid mode {raw:?}, valid values are \"webhook\", \"reconcile\" and \"crd\""))
            }
        }
    }
}

const ALL: &[ModeName] = &[ModeName::Webhook, ModeName::Reconcile, ModeName::Crd];
const WEBHOOK: &[ModeName] = &[ModeName::Webhook];
const RECONCILE: &[ModeName] = &[ModeName::Reconcile];
const CRD: &[ModeName] = &[ModeName::Crd];
const WEBHOOK_RECONCILE: &[ModeName] = &[ModeName::Webhook, ModeName::Reconcile];
const RECONCILE_CRD: &[ModeName] = &[ModeName::Reconcile, ModeName::Crd];

/// Every key and the modes it is valid in. A unit test keeps this equal to `RawConfig`'s fields.
const KEYS: &[(&str, &[ModeName])] = &[
    ("log_level", ALL),
    ("log_format", ALL),
    ("log_path", ALL),
    ("trust_domain", ALL),
    ("server_address", ALL),
    ("server_socket_path", ALL),
    ("agent_socket_path", ALL),
    ("cluster", ALL),
    ("pod_label", ALL),
    ("pod_annotation", ALL),
    ("mode", ALL),
    ("disabled_namespaces", ALL),
    ("resync_interval", ALL),
    ("dry_run", WEBHOOK_RECONCILE),
    ("x509_svid_ttl", WEBHOOK_RECONCILE),
    ("jwt_svid_ttl", WEBHOOK_RECONCILE),
    ("entry_hint", WEBHOOK_RECONCILE),
    ("addr", WEBHOOK),
    ("cert_path", WEBHOOK),
    ("key_path", WEBHOOK),
    ("cacert_path", WEBHOOK),
    ("insecure_skip_client_verification", WEBHOOK),
    ("metrics_addr", WEBHOOK_RECONCILE),
    ("leader_election", RECONCILE_CRD),
    ("leader_election_resource_lock", RECONCILE_CRD),
    ("leader_election_namespace", RECONCILE_CRD),
    ("controller_name", RECONCILE),
    ("add_pod_dns_names", RECONCILE),
    ("cluster_dns_zone", RECONCILE),
    ("add_svc_dns_name", CRD),
    ("pod_controller", CRD),
    ("metrics_bind_addr", CRD),
    ("webhook_enabled", CRD),
    ("webhook_cert_dir", CRD),
    ("webhook_port", CRD),
    ("webhook_service_name", CRD),
    ("identity_template", CRD),
    ("identity_template_label", CRD),
    ("dns_name_templates", CRD),
    ("context", CRD),
];

/// Every configuration key the file may contain (for help texts and tests).
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|(k, _)| *k)
}

fn key_modes(key: &str) -> Option<&'static [ModeName]> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, modes)| *modes)
}

/// The file as hcl-rs sees it. Everything is optional so that absence can be told from a value
/// equal to the default (`[]` and absent differ for the list keys).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    log_level: Option<String>,
    log_format: Option<String>,
    log_path: Option<String>,
    trust_domain: Option<String>,
    server_address: Option<String>,
    server_socket_path: Option<String>,
    agent_socket_path: Option<String>,
    cluster: Option<String>,
    pod_label: Option<String>,
    pod_annotation: Option<String>,
    mode: Option<String>,
    disabled_namespaces: Option<Vec<String>>,
    resync_interval: Option<String>,
    dry_run: Option<bool>,
    x509_svid_ttl: Option<String>,
    jwt_svid_ttl: Option<String>,
    entry_hint: Option<String>,
    addr: Option<String>,
    cert_path: Option<String>,
    key_path: Option<String>,
    cacert_path: Option<String>,
    insecure_skip_client_verification: Option<bool>,
    metrics_addr: Option<String>,
    leader_election: Option<bool>,
    leader_election_resource_lock: Option<String>,
    leader_election_namespace: Option<String>,
    controller_name: Option<String>,
    add_pod_dns_names: Option<bool>,
    cluster_dns_zone: Option<String>,
    add_svc_dns_name: Option<bool>,
    pod_controller: Option<bool>,
    metrics_bind_addr: Option<String>,
    webhook_enabled: Option<bool>,
    webhook_cert_dir: Option<String>,
    webhook_port: Option<u16>,
    webhook_service_name: Option<String>,
    identity_template: Option<String>,
    identity_template_label: Option<String>,
    dns_name_templates: Option<Vec<String>>,
    context: Option<BTreeMap<String, String>>,
}

// ---------------------------------------------------------------------------------------------
// Step 2: shape
// ---------------------------------------------------------------------------------------------

/// Collects problems. A key whose value was rejected for its shape is "broken": later steps
/// neither default it nor report it as missing, so each mistake is reported once.
#[derive(Default)]
struct Check {
    errors: Vec<FieldError>,
    broken: BTreeSet<String>,
}

/// Marker: the problem has been recorded in `Check::errors`.
struct Reported;

impl Check {
    fn fail(&mut self, key: &str, detail: impl fmt::Display) -> Reported {
        self.errors.push(FieldError::at(key, detail));
        Reported
    }

    fn fail_whole(&mut self, key: &str, message: impl Into<String>) -> Reported {
        self.errors.push(FieldError::whole(key, message));
        Reported
    }

    fn break_key(&mut self, key: &str, detail: impl fmt::Display) {
        self.fail(key, detail);
        self.broken.insert(key.to_string());
    }

    /// A string value: absent → `Ok(None)`; broken or empty → `Err`.
    fn string(&mut self, key: &str, value: &Option<String>) -> Result<Option<String>, Reported> {
        if self.broken.contains(key) {
            return Err(Reported);
        }
        match value {
            Some(s) if s.is_empty() => Err(self.fail(key, "must not be empty")),
            other => Ok(other.clone()),
        }
    }

    /// A string value turned into `T`, or `default` when absent.
    fn parsed<T>(
        &mut self,
        key: &str,
        value: &Option<String>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, Reported> {
        match self.string(key, value)? {
            None => Ok(default),
            Some(s) => parse(&s).map_err(|why| self.fail(key, why)),
        }
    }

    /// A required string value turned into `T`; `None` once the problem is recorded.
    fn required<T>(
        &mut self,
        key: &str,
        value: &Option<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.string(key, value) {
            Ok(None) => {
                self.fail_whole(key, format!("{key} must be specified"));
                None
            }
            Ok(Some(s)) => parse(&s).map_err(|why| self.fail(key, why)).ok(),
            Err(Reported) => None,
        }
    }

    /// A list of non-empty strings, or `default` when absent.
    fn list(&mut self, key: &str, value: &Option<Vec<String>>, default: &[&str]) -> Vec<String> {
        if self.broken.contains(key) {
            return Vec::new();
        }
        match value {
            None => default.iter().map(|s| s.to_string()).collect(),
            Some(items) => {
                if items.iter().any(String::is_empty) {
                    self.fail(key, "list items must not be empty");
                }
                items.clone()
            }
        }
    }
}

/// Checks names and shapes of the top-level keys and deserialises the good ones. Returns the raw
/// values and the set of known keys present in the file.
fn read_raw(body: hcl::Body, ck: &mut Check) -> (RawConfig, BTreeSet<String>) {
    // Grouped by key, in file order: a key can only repeat as blocks (hcl-rs rejects a redefined
    // attribute as a syntax error), and repeated blocks would otherwise surface as a confusing
    // "invalid type: sequence" error.
    let mut groups: Vec<(String, Vec<hcl::Structure>)> = Vec::new();
    for structure in body.into_inner() {
        let (name, block) = match &structure {
            hcl::Structure::Attribute(a) => (a.key().to_string(), None),
            hcl::Structure::Block(b) => (b.identifier().to_string(), Some(b)),
        };
        if key_modes(&name).is_none() {
            ck.fail_whole(&name, unknown_key_message(&name));
            continue;
        }
        match block {
            Some(_) if name != "context" => {
                ck.break_key(&name, format!("expected an attribute (`{name} = ...`), got a block"));
            }
            Some(b) if !b.labels().is_empty() => {
                ck.break_key(
                    &name,
                    "the context block takes no labels (write `context { key = \"value\" }`)",
                );
            }
            _ => {}
        }
        match groups.iter_mut().find(|(k, _)| *k == name) {
            Some((_, group)) => group.push(structure),
            None => groups.push((name, vec![structure])),
        }
    }

    // Each key alone, so that a type error names its key (serde's messages don't) and every
    // type error is reported, not just the first one.
    for (name, group) in &groups {
        if ck.broken.contains(name) {
            continue;
        }
        if group.len() > 1 {
            ck.break_key(name, "is given more than once");
        } else if let Err(e) = hcl::from_body::<RawConfig>(hcl::Body(group.clone())) {
            ck.break_key(name, e);
        }
    }

    let present: BTreeSet<String> = groups.iter().map(|(k, _)| k.clone()).collect();
    let good: Vec<hcl::Structure> =
        groups.into_iter().filter(|(k, _)| !ck.broken.contains(k)).flat_map(|(_, group)| group).collect();
    let raw = match hcl::from_body::<RawConfig>(hcl::Body(good)) {
        Ok(raw) => raw,
        Err(e) => {
            // Unreachable in practice: every key deserialised alone above.
            ck.fail_whole("", e.to_string());
            RawConfig::default()
        }
    };
    reject_expressions(&raw, ck);
    (raw, present)
}

/// hcl-rs renders any non-string expression given for a string (`5`, `true`, `foo`, `"${x}"`) as
/// a `${...}` interpolation instead of failing; we have no variables, so each of these is a
/// mistake (most often a missing pair of quotes). Walking the serialised raw config finds them
/// in every string, list item and context value without a hand-kept list of fields.
fn reject_expressions(raw: &RawConfig, ck: &mut Check) {
    fn strings<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::String(s) => out.push(s),
            serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(raw) else {
        return;
    };
    for (key, value) in &fields {
        let mut found = Vec::new();
        strings(value, &mut found);
        if let Some(expr) = found.iter().find(|s| s.contains("${")) {
            ck.break_key(key, format!("expected a quoted string, got an expression ({expr})"));
        }
    }
}

fn unknown_key_message(key: &str) -> String {
    let closest = KEYS
        .iter()
        .map(|(k, _)| (edit_distance(key, k), *k))
        .min()
        .filter(|(d, _)| *d <= (key.chars().count() / 3).max(2));
    match closest {
        Some((_, k)) => format!("unknown key {key:?} (did you mean {k:?}?)"),
        None => format!("unknown key {key:?}"),
    }
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Step 3: meaning
// ---------------------------------------------------------------------------------------------

const DEFAULT_DISABLED_NAMESPACES: &[&str] = &["kube-system", "kube-public"];
const DEFAULT_DNS_NAME_TEMPLATES: &[&str] = &["{{.Pod.Name}}"];
const DEFAULT_RESYNC: Duration = Duration::from_secs(60);
const DEFAULT_WEBHOOK_PORT: u16 = 9443;

fn any_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// Builds the typed config; `None` when a required piece is missing (errors are in `ck`).
fn validate(raw: &RawConfig, present: &BTreeSet<String>, ck: &mut Check) -> Option<Config> {
    let log_level = ck.parsed("log_level", &raw.log_level, LogLevel::Info, LogLevel::parse);
    let log_format = ck.parsed("log_format", &raw.log_format, LogFormat::Text, LogFormat::parse);
    let log_path = ck.string("log_path", &raw.log_path).ok().flatten().map(PathBuf::from);
    let trust_domain = ck.required("trust_domain", &raw.trust_domain, |s| {
        TrustDomain::parse(s).map_err(|e| format!("malformed trust domain: {e}"))
    });
    let server = server_address(raw, ck);
    let cluster = ck.required("cluster", &raw.cluster, |s| {
        id::validate_segment(s, "cluster")
            .map(|()| s.to_string())
            .map_err(|e| format!("{e} (the cluster name is used as a SPIFFE ID path segment)"))
    });
    let id_source = id_source(raw, ck);
    let disabled_namespaces =
        ck.list("disabled_namespaces", &raw.disabled_namespaces, DEFAULT_DISABLED_NAMESPACES);

    let managed = managed(raw, ck);
    let mode_name = ck.parsed("mode", &raw.mode, ModeName::Webhook, ModeName::parse).ok();
    // With an invalid mode we can't tell which keys belong, so mode-specific checks are skipped.
    let mode = mode_name.map(|name| {
        check_mode_keys(name, raw.mode.is_none(), present, ck);
        match name {
            ModeName::Webhook => Mode::Webhook(webhook(raw, ck)),
            ModeName::Reconcile => Mode::Reconcile(reconcile(raw, ck)),
            ModeName::Crd => Mode::Crd(crd(raw, ck)),
        }
    });

    Some(Config {
        log_level: log_level.ok()?,
        log_format: log_format.ok()?,
        log_path,
        trust_domain: trust_domain?,
        server: server?,
        cluster: cluster?,
        id_source: id_source?,
        disabled_namespaces: disabled_namespaces.into_iter().collect(),
        dry_run: raw.dry_run.unwrap_or(false),
        managed: managed?,
        mode: mode?,
    })
}

/// Longest `entry_hint` SPIRE accepts.
const MAX_HINT: usize = 1024;

fn managed(raw: &RawConfig, ck: &mut Check) -> Option<crate::model::Managed> {
    // SPIRE stores TTLs as int32 seconds; 0 means the server's default.
    let ttl = |d: Duration| -> Result<i32, String> {
        if d.subsec_nanos() != 0 {
            return Err("must be whole seconds (SPIRE stores TTLs in seconds)".into());
        }
        i32::try_from(d.as_secs()).map_err(|_| format!("at most {}s", i32::MAX))
    };
    let parse = |s: &str| -> Result<i32, String> {
        match s.trim() {
            "0" => Ok(0),
            other => ttl(parse_duration(other)?),
        }
    };
    let x509 = ck.parsed("x509_svid_ttl", &raw.x509_svid_ttl, 0, parse);
    let jwt = ck.parsed("jwt_svid_ttl", &raw.jwt_svid_ttl, 0, parse);
    let hint = ck.parsed("entry_hint", &raw.entry_hint, String::new(), |s| {
        if s.chars().count() > MAX_HINT {
            Err(format!("at most {MAX_HINT} characters"))
        } else if s.chars().any(char::is_control) {
            Err("must not contain control characters".into())
        } else {
            Ok(s.to_string())
        }
    });
    Some(crate::model::Managed { x509_svid_ttl: x509.ok()?, jwt_svid_ttl: jwt.ok()?, hint: hint.ok()? })
}

fn server_address(raw: &RawConfig, ck: &mut Check) -> Option<ServerAddress> {
    let address = ck.string("server_address", &raw.server_address).ok()?;
    let socket = ck.string("server_socket_path", &raw.server_socket_path).ok()?;
    let agent = ck.string("agent_socket_path", &raw.agent_socket_path).ok()?;
    match (address, socket) {
        (None, None) => {
            ck.fail_whole("server_address", "server_address or server_socket_path must be specified");
            None
        }
        (Some(address), Some(socket)) => {
            ck.fail_whole(
                "server_address",
                format!(
                    "both server_address ({address:?}) and server_socket_path ({socket:?}) are given; \
                     specify only one of them"
                ),
            );
            None
        }
        (None, Some(socket)) => Some(ServerAddress::Unix { path: PathBuf::from(socket) }),
        (Some(address), None) => match address.strip_prefix("unix://") {
            Some("") => {
                ck.fail("server_address", "\"unix://\" must be followed by the socket's path");
                None
            }
            Some(path) => Some(ServerAddress::Unix { path: PathBuf::from(path) }),
            None => {
                if let Err(why) = check_host_port(&address) {
                    ck.fail("server_address", why);
                    return None;
                }
                let Some(agent) = agent else {
                    ck.fail_whole(
                        "agent_socket_path",
                        "agent_socket_path must be specified if the server is not a local socket",
                    );
                    return None;
                };
                Some(ServerAddress::Tcp { address, agent_socket_path: PathBuf::from(agent) })
            }
        },
    }
}

/// A gRPC TCP target: `host:port` or `[ipv6]:port`, with a numeric port.
fn check_host_port(raw: &str) -> Result<(), String> {
    let bad = || format!("invalid address {raw:?}, expected \"unix://<path>\" or \"host:port\"");
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    if host_ok && !port.is_empty() && port.parse::<u16>().is_ok() { Ok(()) } else { Err(bad()) }
}

fn id_source(raw: &RawConfig, ck: &mut Check) -> Option<IdSource> {
    let label = ck.string("pod_label", &raw.pod_label).ok()?;
    let annotation = ck.string("pod_annotation", &raw.pod_annotation).ok()?;
    match (label, annotation) {
        (Some(_), Some(_)) => {
            ck.fail_whole("pod_label", "can't specify both pod_label and pod_annotation");
            None
        }
        (Some(label), None) => Some(IdSource::Label(label)),
        (None, Some(annotation)) => Some(IdSource::Annotation(annotation)),
        (None, None) => Some(IdSource::ServiceAccount),
    }
}

fn check_mode_keys(mode: ModeName, defaulted: bool, present: &BTreeSet<String>, ck: &mut Check) {
    let mode_text = if defaulted {
        format!("mode is {:?}, the default", mode.as_str())
    } else {
        format!("mode is {:?}", mode.as_str())
    };
    for key in present {
        let Some(modes) = key_modes(key) else { continue };
        if modes.contains(&mode) {
            continue;
        }
        let names: Vec<String> = modes.iter().map(|m| format!("{:?}", m.as_str())).collect();
        let valid = match names.as_slice() {
            [one] => format!("mode {one}"),
            [init @ .., last] => format!("modes {} and {last}", init.join(", ")),
            [] => String::new(),
        };
        // The two metrics keys differ between modes for historical reasons; point to the right one.
        let hint = match (key.as_str(), mode) {
            ("metrics_addr", ModeName::Crd) => "; use \"metrics_bind_addr\" instead",
            ("metrics_bind_addr", _) => "; use \"metrics_addr\" instead",
            _ => "",
        };
        ck.fail_whole(key, format!("key {key:?} is only valid in {valid} ({mode_text}){hint}"));
    }
}

fn webhook(raw: &RawConfig, ck: &mut Check) -> WebhookConfig {
    let path = |ck: &mut Check, key: &str, value: &Option<String>, default: &str| {
        PathBuf::from(ck.string(key, value).ok().flatten().unwrap_or_else(|| default.to_string()))
    };
    WebhookConfig {
        addr: ck
            .parsed("addr", &raw.addr, Some(any_addr(8443)), |s| parse_listen(s, false))
            .ok()
            .flatten()
            .unwrap_or(any_addr(8443)),
        cert_path: path(ck, "cert_path", &raw.cert_path, "cert.pem"),
        key_path: path(ck, "key_path", &raw.key_path, "key.pem"),
        cacert_path: path(ck, "cacert_path", &raw.cacert_path, "cacert.pem"),
        insecure_skip_client_verification: raw.insecure_skip_client_verification.unwrap_or(false),
        metrics_addr: metrics(ck, "metrics_addr", &raw.metrics_addr),
        resync_interval: resync(raw, ck),
    }
}

fn reconcile(raw: &RawConfig, ck: &mut Check) -> ReconcileConfig {
    let segment = |s: &str| {
        id::validate_segment(s, "controller_name")
            .map(|()| s.to_string())
            .map_err(|e| format!("{e} (the controller name is used as a SPIFFE ID path segment)"))
    };
    let default_name = "spire-k8s-registrar";
    ReconcileConfig {
        leader_election: leader_election(raw, ck),
        metrics_addr: metrics(ck, "metrics_addr", &raw.metrics_addr),
        controller_name: ck
            .parsed("controller_name", &raw.controller_name, default_name.to_string(), segment)
            .unwrap_or_default(),
        add_pod_dns_names: raw.add_pod_dns_names.unwrap_or(false),
        cluster_dns_zone: ck
            .string("cluster_dns_zone", &raw.cluster_dns_zone)
            .ok()
            .flatten()
            .unwrap_or_else(|| "cluster.local".to_string()),
        resync_interval: resync(raw, ck),
    }
}

fn crd(raw: &RawConfig, ck: &mut Check) -> CrdConfig {
    let identity_template = ck.string("identity_template", &raw.identity_template).ok().flatten();
    let identity_template_label =
        ck.string("identity_template_label", &raw.identity_template_label).ok().flatten();
    let dns_name_templates =
        ck.list("dns_name_templates", &raw.dns_name_templates, DEFAULT_DNS_NAME_TEMPLATES);
    let context = if ck.broken.contains("context") { Some(BTreeMap::new()) } else { raw.context.clone() };

    if identity_template.is_some() && (raw.pod_label.is_some() || raw.pod_annotation.is_some()) {
        ck.fail_whole(
            "identity_template",
            "can only use one of identity_template, pod_annotation, or pod_label",
        );
    }
    // The original only checked that *some* context exists; a missing key renders as
    // "<no value>" in Go templates and yields broken IDs, so each referenced key is checked.
    let mut check_refs = |key: &str, what: &str, template: &str| {
        for name in context_refs(template) {
            match &context {
                None => {
                    ck.fail_whole(
                        key,
                        format!("{what} references non-existing context (no `context` is defined)"),
                    );
                    return;
                }
                Some(map) if !map.contains_key(&name) => {
                    ck.fail_whole(key, format!("{what} references non-existing context key {name:?}"));
                }
                Some(_) => {}
            }
        }
    };
    if let Some(template) = &identity_template {
        check_refs("identity_template", "identity_template", template);
    }
    for template in &dns_name_templates {
        check_refs("dns_name_templates", "dns_name_template", template);
    }
    check_templates(ck, identity_template.as_deref(), &dns_name_templates, context.as_ref());

    let text = |ck: &mut Check, key: &str, value: &Option<String>, default: &str| {
        ck.string(key, value).ok().flatten().unwrap_or_else(|| default.to_string())
    };
    CrdConfig {
        add_svc_dns_name: raw.add_svc_dns_name.unwrap_or(true),
        pod_controller: raw.pod_controller.unwrap_or(true),
        leader_election: leader_election(raw, ck),
        metrics_addr: metrics(ck, "metrics_bind_addr", &raw.metrics_bind_addr),
        webhook_enabled: raw.webhook_enabled.unwrap_or(false),
        webhook_cert_dir: PathBuf::from(text(
            ck,
            "webhook_cert_dir",
            &raw.webhook_cert_dir,
            "/run/spire/serving-certs",
        )),
        // 0 means "default", as in the original.
        webhook_port: match raw.webhook_port {
            None | Some(0) => DEFAULT_WEBHOOK_PORT,
            Some(port) => port,
        },
        webhook_service_name: text(
            ck,
            "webhook_service_name",
            &raw.webhook_service_name,
            "k8s-workload-registrar",
        ),
        identity_template,
        identity_template_label,
        dns_name_templates,
        context: context.unwrap_or_default(),
        resync_interval: resync(raw, ck),
    }
}

/// The original's start-up check, with this registrar's per-pod rules: every template is rendered
/// for a dummy pod (all fields `xx`, UID `123`) and the real context; the identity must be a valid,
/// unreserved workload ID and every DNS name valid. A template failing here would fail for every
/// pod — and a registrar that started anyway would remove every pod's SpiffeID and entry.
fn check_templates(
    ck: &mut Check,
    identity_template: Option<&str>,
    dns_name_templates: &[String],
    context: Option<&BTreeMap<String, String>>,
) {
    use crate::crd::template::{PodFields, TemplateError, render};
    let xx = || "xx".to_string();
    let dummy = PodFields {
        name: xx(),
        namespace: xx(),
        uid: "123".into(),
        service_account: xx(),
        hostname: xx(),
        node_name: xx(),
    };
    let empty = BTreeMap::new();
    let context = context.unwrap_or(&empty);
    // Missing context keys were reported above, with the key's name.
    let rendered = |ck: &mut Check, key: &str, template: &str| match render(template, &dummy, context) {
        Ok(out) => Some(out),
        Err(TemplateError::MissingContext { .. }) => None,
        Err(e) => {
            ck.fail_whole(key, format!("{}: {e}", key.trim_end_matches('s')));
            None
        }
    };
    let td = TrustDomain::parse("testdomain").expect("valid trust domain");
    if let Some(template) = identity_template
        && let Some(out) = rendered(ck, "identity_template", template)
        && let Err(e) = crate::identity::workload_id(&td, &out, None)
    {
        ck.fail_whole(
            "identity_template",
            format!("identity_template {template:?} yields the path {out:?} for a pod, which is no valid workload ID: {e}"),
        );
    }
    for template in dns_name_templates {
        // As the original: spaces are removed from DNS templates before rendering.
        let compact: String = template.chars().filter(|c| *c != ' ').collect();
        if let Some(out) = rendered(ck, "dns_name_templates", &compact)
            && let Err(e) = id::validate_dns_name(&out)
        {
            ck.fail_whole(
                "dns_name_templates",
                format!(
                    "dns_name_template {template:?} yields {out:?} for a pod, which is no valid DNS name: {e}"
                ),
            );
        }
    }
}

fn leader_election(raw: &RawConfig, ck: &mut Check) -> LeaderElection {
    LeaderElection {
        enabled: raw.leader_election.unwrap_or(false),
        lock: ck
            .parsed(
                "leader_election_resource_lock",
                &raw.leader_election_resource_lock,
                LockKind::ConfigMaps,
                LockKind::parse,
            )
            .unwrap_or(LockKind::ConfigMaps),
        namespace: ck
            .parsed("leader_election_namespace", &raw.leader_election_namespace, None, |s| {
                check_dns_label(s).map(|()| Some(s.to_string()))
            })
            .ok()
            .flatten(),
    }
}

fn metrics(ck: &mut Check, key: &str, value: &Option<String>) -> Option<SocketAddr> {
    ck.parsed(key, value, Some(any_addr(8080)), |s| parse_listen(s, true)).ok().flatten()
}

fn resync(raw: &RawConfig, ck: &mut Check) -> Duration {
    ck.parsed("resync_interval", &raw.resync_interval, DEFAULT_RESYNC, parse_duration)
        .unwrap_or(DEFAULT_RESYNC)
}

/// `:PORT` (all IPv4 interfaces, Go's shorthand), `IP:PORT`, `[IPv6]:PORT`, and `0` for "disabled"
/// where that is allowed.
fn parse_listen(raw: &str, can_disable: bool) -> Result<Option<SocketAddr>, String> {
    if can_disable && raw == "0" {
        return Ok(None);
    }
    let addr = match raw.strip_prefix(':') {
        Some(port) => port.parse::<u16>().ok().map(any_addr),
        None => raw.parse::<SocketAddr>().ok(),
    };
    let disable = if can_disable { ", or \"0\" to disable" } else { "" };
    addr.map(Some).ok_or_else(|| {
        format!("invalid listen address {raw:?}, expected \":PORT\" (all interfaces) or \"IP:PORT\"{disable}")
    })
}

/// Go-style durations made of integer parts: `30s`, `5m`, `1h`, `1500ms`, `1m30s`.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {raw:?}, expected a number with a unit such as \"30s\", \"5m\", \"1h\" or \"1500ms\""
        )
    };
    if raw.is_empty() {
        return Err(bad());
    }
    let mut rest = raw;
    let mut millis: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let amount: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_millis: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        millis = amount.checked_mul(unit_millis).and_then(|m| millis.checked_add(m)).ok_or_else(bad)?;
    }
    if millis == 0 {
        return Err(format!("duration {raw:?} must be greater than zero"));
    }
    Ok(Duration::from_millis(millis))
}

/// The shortest single-unit form that `parse_duration` reads back to the same value.
fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    match millis {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{m}ms"),
    }
}

/// A Kubernetes namespace name (RFC 1123 label).
fn check_dns_label(raw: &str) -> Result<(), String> {
    let ok = raw.len() <= 63
        && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !raw.starts_with('-')
        && !raw.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid namespace {raw:?}: at most 63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        ))
    }
}

/// The context keys a template references as `{{.Context.<key>}}` (spaces ignored, as in the
/// original's check).
fn context_refs(template: &str) -> Vec<String> {
    let compact: String = template.chars().filter(|c| *c != ' ').collect();
    let marker = "{{.Context.";
    compact
        .match_indices(marker)
        .map(|(at, _)| {
            compact[at + marker.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_vars_is_gos_expand_env() {
        let env = |name: &str| match name {
            "CLUSTER" => Some("prod".to_string()),
            "TD" => Some("example.org".to_string()),
            "$" => Some("dollar".to_string()),
            _ => None,
        };
        let cases = [
            ("cluster = \"$CLUSTER\"", "cluster = \"prod\""),
            ("trust_domain = \"${TD}\"", "trust_domain = \"example.org\""),
            ("a = \"${TD}x$CLUSTER-y\"", "a = \"example.orgxprod-y\""),
            ("unset = \"$NOPE${NOPE}\"", "unset = \"\""),
            ("dollar = \"$$\"", "dollar = \"dollar\""),
            ("trailing $", "trailing $"),
            ("kept = \"$.\"", "kept = \"$.\""),
            ("empty ${} gone", "empty  gone"),
            ("unclosed ${TD", "unclosed TD"),
            ("é ${TD} ü", "é example.org ü"),
            ("tmpl = \"{{.Pod.Name}}\"", "tmpl = \"{{.Pod.Name}}\""),
        ];
        for (text, want) in cases {
            assert_eq!(expand_vars(text, env), want, "{text}");
        }
    }

    fn ok(text: &str) -> Config {
        match parse(text) {
            Ok(c) => c,
            Err(e) => panic!("expected valid config, got:\n{e}\n--- config:\n{text}"),
        }
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}\n--- config:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const BASE: &str = r#"
trust_domain = "example.org"
server_socket_path = "/run/spire/sockets/api.sock"
cluster = "demo"
"#;

    fn with(extra: &str) -> String {
        format!("{BASE}{extra}\n")
    }

    const SEED: &str = r#"
log_level = "info"
trust_domain = "example.org"
server_socket_path = "/tmp/spire-server/private/api.sock"
cluster = "production"
mode = "reconcile"
leader_election = true
add_pod_dns_names = false
disabled_namespaces = ["kube-system", "kube-public", "spire-system"]
"#;

    #[test]
    fn seed_example_validates_exactly() {
        let c = ok(SEED);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.log_path, None);
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.server, ServerAddress::Unix { path: "/tmp/spire-server/private/api.sock".into() });
        assert_eq!(c.cluster, "production");
        assert_eq!(c.id_source, IdSource::ServiceAccount);
        let ns: BTreeSet<String> =
            ["kube-system", "kube-public", "spire-system"].iter().map(|s| s.to_string()).collect();
        assert_eq!(c.disabled_namespaces, ns);
        assert_eq!(
            c.mode,
            Mode::Reconcile(ReconcileConfig {
                leader_election: LeaderElection {
                    enabled: true,
                    lock: LockKind::ConfigMaps,
                    namespace: None
                },
                metrics_addr: Some("0.0.0.0:8080".parse().unwrap()),
                controller_name: "spire-k8s-registrar".into(),
                add_pod_dns_names: false,
                cluster_dns_zone: "cluster.local".into(),
                resync_interval: Duration::from_secs(60),
            })
        );
        assert_eq!(c.mode.name(), "reconcile");
        assert_eq!(c.mode.metrics_addr(), Some("0.0.0.0:8080".parse().unwrap()));
    }

    #[test]
    fn minimal_config_defaults_to_webhook_mode() {
        let c = ok(BASE);
        assert_eq!(
            c.mode,
            Mode::Webhook(WebhookConfig {
                addr: "0.0.0.0:8443".parse().unwrap(),
                cert_path: "cert.pem".into(),
                key_path: "key.pem".into(),
                cacert_path: "cacert.pem".into(),
                insecure_skip_client_verification: false,
                metrics_addr: Some("0.0.0.0:8080".parse().unwrap()),
                resync_interval: Duration::from_secs(60),
            })
        );
        let ns: BTreeSet<String> = ["kube-system", "kube-public"].iter().map(|s| s.to_string()).collect();
        assert_eq!(c.disabled_namespaces, ns);
        assert_eq!(c.log_level, LogLevel::Info);
        assert!(c.mode.leader_election().is_none());
    }

    #[test]
    fn crd_defaults() {
        let c = ok(&with("mode = \"crd\""));
        let Mode::Crd(crd) = c.mode else { panic!("not crd") };
        assert_eq!(
            crd,
            CrdConfig {
                add_svc_dns_name: true,
                pod_controller: true,
                leader_election: LeaderElection {
                    enabled: false,
                    lock: LockKind::ConfigMaps,
                    namespace: None
                },
                metrics_addr: Some("0.0.0.0:8080".parse().unwrap()),
                webhook_enabled: false,
                webhook_cert_dir: "/run/spire/serving-certs".into(),
                webhook_port: 9443,
                webhook_service_name: "k8s-workload-registrar".into(),
                identity_template: None,
                identity_template_label: None,
                dns_name_templates: vec!["{{.Pod.Name}}".into()],
                context: BTreeMap::new(),
                resync_interval: Duration::from_secs(60),
            }
        );
    }

    #[test]
    fn crd_full() {
        let c = ok(&with(
            r#"
mode = "crd"
add_svc_dns_name = false
pod_controller = false
leader_election = true
leader_election_resource_lock = "leases"
leader_election_namespace = "spire"
metrics_bind_addr = "127.0.0.1:9090"
webhook_enabled = true
webhook_port = 0
identity_template = "region/{{ .Context.Region }}/ns/{{.Pod.Namespace}}"
identity_template_label = "spiffe.io/template"
dns_name_templates = []
context {
  Region = "EU"
}
resync_interval = "1m30s"
"#,
        ));
        let Mode::Crd(crd) = c.mode else { panic!("not crd") };
        assert!(!crd.add_svc_dns_name && !crd.pod_controller && crd.webhook_enabled);
        assert_eq!(
            crd.leader_election,
            LeaderElection { enabled: true, lock: LockKind::Leases, namespace: Some("spire".into()) }
        );
        assert_eq!(crd.metrics_addr, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(crd.webhook_port, 9443);
        assert!(crd.dns_name_templates.is_empty());
        assert_eq!(crd.context.get("Region").map(String::as_str), Some("EU"));
        assert_eq!(crd.resync_interval, Duration::from_secs(90));
    }

    #[test]
    fn context_as_map_attribute() {
        let c = ok(&with("mode = \"crd\"\ncontext = { a = \"b\" }"));
        let Mode::Crd(crd) = c.mode else { panic!("not crd") };
        assert_eq!(crd.context.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn valid_variants() {
        type Probe = fn(&Config) -> bool;
        let cases: &[(&str, Probe)] = &[
            ("metrics_addr = \"0\"", |c| c.mode.metrics_addr().is_none()),
            ("metrics_addr = \"[::1]:9000\"", |c| {
                c.mode.metrics_addr() == Some("[::1]:9000".parse().unwrap())
            }),
            ("disabled_namespaces = []", |c| c.disabled_namespaces.is_empty()),
            ("log_level = \"WARNING\"", |c| {
                c.log_level == LogLevel::Warn && c.log_level.as_filter() == "warn"
            }),
            ("log_level = \"fatal\"", |c| c.log_level.as_filter() == "error"),
            ("log_format = \"json\"", |c| c.log_format == LogFormat::Json),
            ("pod_label = \"spiffe.io/id\"", |c| c.id_source == IdSource::Label("spiffe.io/id".into())),
            ("pod_annotation = \"spiffe.io/id\"", |c| {
                c.id_source == IdSource::Annotation("spiffe.io/id".into())
            }),
            ("resync_interval = \"1500ms\"", |c| c.mode.resync_interval() == Duration::from_millis(1500)),
            ("x509_svid_ttl = \"1h\"", |c| c.managed.x509_svid_ttl == 3600 && c.managed.jwt_svid_ttl == 0),
            ("jwt_svid_ttl = \"5m\"", |c| c.managed.jwt_svid_ttl == 300),
            ("x509_svid_ttl = \"0\"", |c| c.managed.x509_svid_ttl == 0),
            ("entry_hint = \"kwr/demo\"", |c| c.managed.hint == "kwr/demo"),
            ("dry_run = true", |c| c.dry_run),
            ("resync_interval = \"2h\"", |c| c.mode.resync_interval() == Duration::from_secs(7200)),
            ("addr = \"127.0.0.1:443\"", |c| matches!(&c.mode, Mode::Webhook(w) if w.addr.port() == 443)),
        ];
        for (extra, check) in cases {
            let c = ok(&with(extra));
            assert!(check(&c), "{extra}: {c:?}");
        }
    }

    #[test]
    fn spiffe_prefixed_trust_domain_accepted() {
        let c = ok(&BASE.replace("\"example.org\"", "\"spiffe://example.org\""));
        assert_eq!(c.trust_domain.as_str(), "example.org");
    }

    #[test]
    fn server_address_forms() {
        let unix = ok(r#"
trust_domain = "example.org"
server_address = "unix:///run/api.sock"
cluster = "c"
"#);
        assert_eq!(unix.server, ServerAddress::Unix { path: "/run/api.sock".into() });
        let tcp = ok(r#"
trust_domain = "example.org"
server_address = "spire-server.spire:8081"
agent_socket_path = "/run/spire/sockets/agent.sock"
cluster = "c"
"#);
        assert_eq!(
            tcp.server,
            ServerAddress::Tcp {
                address: "spire-server.spire:8081".into(),
                agent_socket_path: "/run/spire/sockets/agent.sock".into()
            }
        );
    }

    /// Each case: config text and substrings that must all appear in the error.
    #[test]
    fn error_cases_name_their_key() {
        let no_server = "trust_domain = \"example.org\"\ncluster = \"c\"";
        let tcp_no_agent = "trust_domain = \"example.org\"\ncluster = \"c\"\nserver_address = \"s:8081\"";
        let cases: Vec<(String, &[&str])> = vec![
            (with("clustr = \"x\""), &["unknown key \"clustr\" (did you mean \"cluster\"?)"]),
            (with("mode = \"crd\"\nadd_svc_dns_names = false"), &["did you mean \"add_svc_dns_name\"?"]),
            (with("completely_unrelated_thing = 1"), &["unknown key \"completely_unrelated_thing\""]),
            (with("log_level = \"loud\""), &["key \"log_level\"", "invalid log level \"loud\""]),
            (with("log_format = \"xml\""), &["key \"log_format\"", "\"text\" and \"json\""]),
            (with("log_path = \"\""), &["key \"log_path\": must not be empty"]),
            (BASE.replace("trust_domain = \"example.org\"", ""), &["trust_domain must be specified"]),
            (BASE.replace("example.org", "Example.ORG"), &["key \"trust_domain\": malformed trust domain"]),
            (BASE.replace("cluster = \"demo\"", ""), &["cluster must be specified"]),
            (BASE.replace("\"demo\"", "\"\""), &["key \"cluster\": must not be empty"]),
            (BASE.replace("\"demo\"", "\"a/b\""), &["key \"cluster\"", "path segment"]),
            (with("cluster_x = 1"), &["unknown key \"cluster_x\""]),
            (no_server.to_string(), &["server_address or server_socket_path must be specified"]),
            (with("server_address = \"unix:///x\""), &["server_address", "server_socket_path", "only one"]),
            (
                tcp_no_agent.to_string(),
                &["agent_socket_path must be specified if the server is not a local socket"],
            ),
            (
                format!("{tcp_no_agent}\nagent_socket_path = \"/a\"").replace("s:8081", "s:port"),
                &["key \"server_address\"", "host:port"],
            ),
            (
                "trust_domain = \"example.org\"\ncluster = \"c\"\nserver_address = \"unix://\"".into(),
                &["key \"server_address\"", "socket's path"],
            ),
            (
                with("pod_label = \"a\"\npod_annotation = \"b\""),
                &["can't specify both pod_label and pod_annotation"],
            ),
            (with("pod_label = \"\""), &["key \"pod_label\": must not be empty"]),
            (with("pod_annotation = \"\""), &["key \"pod_annotation\": must not be empty"]),
            (with("mode = \"Reconcile\""), &["key \"mode\"", "invalid mode \"Reconcile\""]),
            (
                with("mode = \"reconcile\"\naddr = \":1\""),
                &["key \"addr\" is only valid in mode \"webhook\" (mode is \"reconcile\")"],
            ),
            (
                with("leader_election = true"),
                &[
                    "key \"leader_election\" is only valid in modes \"reconcile\" and \"crd\" (mode is \"webhook\", the default)",
                ],
            ),
            (with("mode = \"crd\"\nmetrics_addr = \":1\""), &["key \"metrics_addr\"", "metrics_bind_addr"]),
            (
                with("mode = \"reconcile\"\nleader_election_resource_lock = \"endpoints\""),
                &["key \"leader_election_resource_lock\"", "\"configmaps\" and \"leases\""],
            ),
            (
                with("mode = \"reconcile\"\nleader_election_namespace = \"Bad_NS\""),
                &["key \"leader_election_namespace\""],
            ),
            (with("mode = \"reconcile\"\ncontroller_name = \"a/b\""), &["key \"controller_name\""]),
            (
                with("mode = \"reconcile\"\nmetrics_addr = \"localhost:80\""),
                &["key \"metrics_addr\"", "IP:PORT"],
            ),
            (with("addr = \"0\""), &["key \"addr\"", "IP:PORT"]),
            (with("mode = \"crd\"\nmetrics_bind_addr = \"8080\""), &["key \"metrics_bind_addr\""]),
            (with("resync_interval = \"30\""), &["key \"resync_interval\"", "invalid duration"]),
            (with("resync_interval = \"0s\""), &["key \"resync_interval\"", "greater than zero"]),
            (with("x509_svid_ttl = \"1500ms\""), &["key \"x509_svid_ttl\"", "whole seconds"]),
            (
                with("jwt_svid_ttl = \"1h1h\"\nx509_svid_ttl = \"900000h\""),
                &["key \"x509_svid_ttl\"", "at most"],
            ),
            (with("entry_hint = \"a\\nb\""), &["key \"entry_hint\"", "control characters"]),
            (with("mode = \"crd\"\ndry_run = true"), &["dry_run"]),
            (with("mode = \"crd\"\nx509_svid_ttl = \"1h\""), &["x509_svid_ttl"]),
            (
                with("mode = \"crd\"\npod_label = \"l\"\nidentity_template = \"x\""),
                &["can only use one of identity_template, pod_annotation, or pod_label"],
            ),
            (
                with("mode = \"crd\"\nidentity_template = \"r/{{ .Context.Region }}\""),
                &["identity_template references non-existing context"],
            ),
            (
                with("mode = \"crd\"\ncontext { A = \"b\" }\nidentity_template = \"r/{{.Context.Region}}\""),
                &["identity_template references non-existing context key \"Region\""],
            ),
            (
                with("mode = \"crd\"\ndns_name_templates = [\"{{.Context.Zone}}\"]"),
                &["dns_name_template references non-existing context"],
            ),
            (
                with("mode = \"crd\"\nidentity_template = \"ns/{{.Pod.Name}}/\""),
                &["identity_template \"", "must not end with '/'", "\"ns/xx/\""],
            ),
            (
                with("mode = \"crd\"\nidentity_template = \"spiffe://x/{{.Pod.Name}}\""),
                &["identity_template \"", "no valid workload ID"],
            ),
            (
                with("mode = \"crd\"\nidentity_template = \"//{{.Pod.Name}}\""),
                &["identity_template \"", "is empty"],
            ),
            (
                with("mode = \"crd\"\nidentity_template = \"spire/{{.Pod.Name}}\""),
                &["identity_template \"", "is reserved"],
            ),
            (
                with("mode = \"crd\"\nidentity_template = \"ns/{{.Pod.XXXX}}\""),
                &["identity_template: ", "unknown field \".Pod.XXXX\""],
            ),
            (
                with("mode = \"crd\"\ndns_name_templates = [\"$%^&*\"]"),
                &["dns_name_template \"", "no valid DNS name"],
            ),
            (
                with("mode = \"crd\"\ndns_name_templates = [\"{{.Pod.Name}}\", \"{{.Pod.Nope}}\"]"),
                &["dns_name_template: ", ".Pod.Nope"],
            ),
            (
                with("cluster_dns_zone = \"x\""),
                &["key \"cluster_dns_zone\" is only valid in mode \"reconcile\""],
            ),
            (
                BASE.replace("\"demo\"", "5"),
                &["key \"cluster\": expected a quoted string, got an expression (${5})"],
            ),
            (
                BASE.replace("\"demo\"", "foo"),
                &["key \"cluster\": expected a quoted string, got an expression (${foo})"],
            ),
            (BASE.replace("\"demo\"", "true"), &["key \"cluster\"", "${true}"]),
            (BASE.replace("\"demo\"", "\"${x}\""), &["key \"cluster\"", "expression"]),
            (with("disabled_namespaces = [\"a\", 1]"), &["key \"disabled_namespaces\"", "${1}"]),
            (with("disabled_namespaces = \"a\""), &["key \"disabled_namespaces\"", "sequence"]),
            (with("disabled_namespaces = [\"\"]"), &["key \"disabled_namespaces\"", "empty"]),
            (with("mode = \"crd\"\ncontext { a = 5 }"), &["key \"context\"", "${5}"]),
            (with("mode = \"crd\"\ncontext \"x\" { a = \"b\" }"), &["key \"context\"", "labels"]),
            (
                with("mode = \"crd\"\ncontext { a = \"b\" }\ncontext { c = \"d\" }"),
                &["key \"context\": is given more than once"],
            ),
            (with("cluster_dns_zone { }"), &["key \"cluster_dns_zone\"", "got a block"]),
            (
                with("insecure_skip_client_verification = \"yes\""),
                &["key \"insecure_skip_client_verification\"", "boolean"],
            ),
            (with("mode = \"crd\"\nwebhook_port = 70000"), &["key \"webhook_port\"", "70000"]),
        ];
        for (text, needles) in cases {
            let message = err(&text);
            for needle in needles {
                assert!(message.contains(needle), "missing {needle:?} in:\n{message}\n--- config:\n{text}");
            }
        }
    }

    #[test]
    fn several_errors_reported_together() {
        let e = parse(
            r#"
trust_domain = "example.org"
clustr = "x"
modee = "crd"
mode = "reconcile"
log_level = "loud"
leader_election = "yes"
addr = ":8443"
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = e.errors().iter().map(|f| f.key.as_str()).collect();
        for key in ["clustr", "modee", "log_level", "leader_election", "addr", "cluster", "server_address"] {
            assert!(keys.contains(&key), "no error for {key}: {e}");
        }
        assert_eq!(e.to_string().lines().count(), e.errors().len(), "{e}");
        assert!(e.to_string().contains("did you mean \"mode\"?"), "{e}");
    }

    #[test]
    fn a_broken_required_key_is_not_also_reported_missing() {
        let e = parse(&BASE.replace("\"demo\"", "[\"a\"]")).unwrap_err();
        assert_eq!(e.errors().len(), 1, "{e}");
        assert_eq!(e.errors()[0].key, "cluster");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = parse("trust_domain = \"example.org\"\ncluster = = 3\n").unwrap_err();
        let ConfigError::Syntax { line, .. } = &e else { panic!("not a syntax error: {e:?}") };
        assert_eq!(*line, 2);
        let text = e.to_string();
        assert!(text.starts_with("line 2, column "), "{text}");
        assert!(text.contains("cluster = = 3"), "{text}");
    }

    #[test]
    fn load_prefixes_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg.conf");
        std::fs::write(&path, "cluster = = 3\n").unwrap();
        let text = load(&path).unwrap_err().to_string();
        assert!(text.starts_with(&format!("{}:1:", path.display())), "{text}");

        std::fs::write(&path, with("clustr = \"x\"")).unwrap();
        let text = load(&path).unwrap_err().to_string();
        assert!(text.starts_with(&format!("{}: unknown key \"clustr\"", path.display())), "{text}");

        std::fs::write(&path, SEED).unwrap();
        assert_eq!(load(&path).unwrap(), ok(SEED));

        let missing = dir.path().join("missing.conf");
        let text = load(&missing).unwrap_err().to_string();
        assert!(text.starts_with("unable to load configuration"), "{text}");
    }

    #[test]
    fn keys_table_matches_raw_config() {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(RawConfig::default()) else {
            panic!("RawConfig must serialise to an object")
        };
        let fields: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
        let keys: BTreeSet<&str> = KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(fields, keys);
        assert_eq!(keys.len(), KEYS.len(), "duplicate entry in KEYS");
    }

    #[test]
    fn to_json_shows_defaults() {
        let json: serde_json::Value = serde_json::from_str(&ok(SEED).to_json()).unwrap();
        assert_eq!(json["trust_domain"], "example.org");
        assert_eq!(json["log_level"], "info");
        assert_eq!(json["server"]["unix"]["path"], "/tmp/spire-server/private/api.sock");
        assert_eq!(json["id_source"], "service_account");
        assert_eq!(json["mode"]["kind"], "reconcile");
        assert_eq!(json["mode"]["metrics_addr"], "0.0.0.0:8080");
        assert_eq!(json["mode"]["resync_interval"], "1m");
        assert_eq!(json["mode"]["leader_election"]["lock"], "configmaps");
        assert_eq!(json["mode"]["controller_name"], "spire-k8s-registrar");
    }

    #[test]
    fn durations_round_trip() {
        for (text, millis) in
            [("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000), ("1500ms", 1500), ("1h1m", 3_660_000)]
        {
            let d = parse_duration(text).unwrap();
            assert_eq!(d, Duration::from_millis(millis), "{text}");
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        for bad in ["", "s", "10", "1d", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("clustr", "cluster"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the text, parsing returns (it never panics), and errors are never empty.
            #[test]
            fn parse_never_panics(text in "[a-z_ =\"{}\\[\\],0-9.:/$\n]{0,80}") {
                if let Err(e) = parse(&text) {
                    prop_assert!(!e.to_string().is_empty());
                }
            }

            #[test]
            fn durations_round_trip(millis in 1u64..10_000_000_000) {
                let d = Duration::from_millis(millis);
                prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
            }
        }
    }
}
