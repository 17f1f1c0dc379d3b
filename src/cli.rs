//! Command-line parsing: turns the process arguments into a [`Command`]. Pure (no I/O, no
//! environment), so every accepted form is unit-tested; `main` does the printing and exiting.
//!
//! The flag spellings of the Go registrar (`-config FILE`, `-kubeconfig FILE`, `-version`) keep
//! working, so existing Deployments need no change, as does SPIRE's `-expandEnv`; the GNU forms
//! (`--config FILE`, `--config=FILE`) are accepted too. A hand-written parser is enough for three
//! flags and two subcommands and keeps clap out of the build.

use std::path::PathBuf;

/// The configuration file used when `-config` is not given (relative to the working directory,
/// as in the original).
pub const DEFAULT_CONFIG_PATH: &str = "k8s-workload-registrar.conf";

/// What the process was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Load the configuration and run the registrar (the default).
    Run(Args),
    /// Load and validate the configuration, print the effective configuration, exit.
    Validate(Args),
    /// Read the cluster and SPIRE and print what a converged registrar would change; write
    /// nothing.
    Plan(Args, Output),
    Help,
    Version,
}

/// How `plan` prints (`-output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// `plan`'s exit status when changes are pending (0: none; 1: an error; 2: a usage error, as
/// Go's flag package does).
pub const PLAN_CHANGES_PENDING: u8 = 3;

/// The flags of `run`, `validate` and `plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub config: PathBuf,
    /// `-kubeconfig`: this file instead of `KUBECONFIG` or the in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    /// `-expandEnv`: replace `$VAR` and `${VAR}` in the config file with the environment's
    /// values before parsing (SPIRE's convention; see `config::expand_env`).
    pub expand_env: bool,
}

impl Args {
    /// `config` with every other flag at its default.
    pub fn new(config: PathBuf) -> Self {
        Self { config, kubeconfig: None, expand_env: false }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("unknown flag {0:?} (see --help)")]
    UnknownFlag(String),
    #[error("flag {0:?} needs a value: the path of a file")]
    MissingValue(String),
    #[error("flag {0:?} takes true or false")]
    BadBool(String),
    #[error("unexpected argument {0:?}; commands are \"run\", \"validate\" and \"plan\" (see --help)")]
    UnexpectedArgument(String),
    #[error("flag -output takes text or json, not {0:?}")]
    BadOutput(String),
    #[error("flag -output is only for the plan command")]
    OutputWithoutPlan,
    #[error("flag -{0} is given more than once")]
    Repeated(&'static str),
}

/// Parses the arguments after the program name.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, CliError> {
    #[derive(PartialEq)]
    enum Sub {
        Run,
        Validate,
        Plan,
    }
    let mut sub: Option<Sub> = None;
    let mut config: Option<PathBuf> = None;
    let mut kubeconfig: Option<PathBuf> = None;
    let mut expand_env: Option<bool> = None;
    let mut output: Option<Output> = None;
    let mut args = args.into_iter();

    while let Some(arg) = args.next() {
        if !arg.starts_with('-') || arg == "-" {
            sub = match (arg.as_str(), &sub) {
                ("run", None) => Some(Sub::Run),
                ("validate", None) => Some(Sub::Validate),
                ("plan", None) => Some(Sub::Plan),
                _ => return Err(CliError::UnexpectedArgument(arg)),
            };
            continue;
        }
        // Go's flag package treats `-x` and `--x` alike; so do we.
        let (name, inline) = match arg.trim_start_matches('-').split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (arg.trim_start_matches('-').to_string(), None),
        };
        let mut path_value = |inline: Option<String>| -> Result<PathBuf, CliError> {
            let value = match inline {
                Some(v) => v,
                // A following flag is not a file name: `-config -h` is a mistake.
                None => args
                    .next()
                    .filter(|v| !v.starts_with('-'))
                    .ok_or_else(|| CliError::MissingValue(arg.clone()))?,
            };
            if value.is_empty() {
                return Err(CliError::MissingValue(arg.clone()));
            }
            Ok(PathBuf::from(value))
        };
        match (name.as_str(), inline) {
            ("h" | "help", None) => return Ok(Command::Help),
            ("version", None) => return Ok(Command::Version),
            ("config", value) => {
                if config.replace(path_value(value)?).is_some() {
                    return Err(CliError::Repeated("config"));
                }
            }
            ("kubeconfig", value) => {
                if kubeconfig.replace(path_value(value)?).is_some() {
                    return Err(CliError::Repeated("kubeconfig"));
                }
            }
            // A Go boolean flag: `-expandEnv`, `-expandEnv=true`, `-expandEnv=false`.
            ("expandEnv", value) => {
                let on = match value.as_deref() {
                    None | Some("true" | "1" | "t" | "T" | "TRUE" | "True") => true,
                    Some("false" | "0" | "f" | "F" | "FALSE" | "False") => false,
                    Some(_) => return Err(CliError::BadBool(arg)),
                };
                if expand_env.replace(on).is_some() {
                    return Err(CliError::Repeated("expandEnv"));
                }
            }
            ("output", value) => {
                let value = match value {
                    Some(v) => v,
                    None => args.next().ok_or_else(|| CliError::MissingValue(arg.clone()))?,
                };
                let parsed = match value.as_str() {
                    "text" => Output::Text,
                    "json" => Output::Json,
                    _ => return Err(CliError::BadOutput(value)),
                };
                if output.replace(parsed).is_some() {
                    return Err(CliError::Repeated("output"));
                }
            }
            _ => return Err(CliError::UnknownFlag(arg)),
        }
    }

    let args = Args {
        kubeconfig,
        expand_env: expand_env.unwrap_or(false),
        ..Args::new(config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH)))
    };
    match (sub, output) {
        (Some(Sub::Plan), output) => Ok(Command::Plan(args, output.unwrap_or_default())),
        (_, Some(_)) => Err(CliError::OutputWithoutPlan),
        (None | Some(Sub::Run), None) => Ok(Command::Run(args)),
        (Some(Sub::Validate), None) => Ok(Command::Validate(args)),
    }
}

/// The `--help` text.
pub const USAGE: &str = "\
k8s-workload-registrar: keeps a SPIRE server's registration entries equal to what the
Kubernetes cluster's workloads should have.

USAGE:
    k8s-workload-registrar [run] [-config FILE]     run the registrar (default command)
    k8s-workload-registrar validate [-config FILE]  check FILE, print the effective config as JSON
    k8s-workload-registrar plan [-config FILE] [-output text|json]
                                                    print what the registrar would create, update
                                                    and delete in SPIRE, writing nothing; exit 0
                                                    when nothing is pending, 3 when changes are,
                                                    1 on errors
    k8s-workload-registrar -version                 print the version
    k8s-workload-registrar -help                    print this help

FLAGS:
    -config FILE      HCL configuration file [default: k8s-workload-registrar.conf]
                      (also --config FILE, -config=FILE, --config=FILE)
    -kubeconfig FILE  kubeconfig to use [default: $KUBECONFIG, else in-cluster]
    -expandEnv        replace $VAR and ${VAR} in the configuration file with environment
                      variables before parsing (unset ones become empty)
    -output FORMAT    plan only: text (grouped by node) or json      [default: text]
    -h, -help         print this help (also --help)
    -version          print the version (also --version)

CONFIGURATION (HCL; unknown keys and keys of another mode are errors):
  all modes:
    trust_domain          required, e.g. \"example.org\" (or \"spiffe://example.org\")
    cluster               required; cluster name of the k8s_psat node attestor
    server_socket_path    SPIRE server API socket path, or
    server_address        \"unix://<path>\" or \"host:port\" (then agent_socket_path is required);
                          give exactly one of the two
    agent_socket_path     SPIRE agent Workload API socket (for mTLS to a TCP server)
    mode                  \"webhook\" | \"reconcile\" | \"crd\"          [\"webhook\"]
    pod_label             take the ID from this pod label        } at most one;
    pod_annotation        take the ID from this pod annotation   } default: service account
    disabled_namespaces   [\"kube-system\", \"kube-public\"]; [] disables none
    log_level             panic|fatal|error|warn|info|debug|trace  [\"info\"]
    log_format            \"text\" | \"json\"                        [\"text\"]
    log_path              log to this file instead of stderr
    resync_interval       full resync period, e.g. \"30s\", \"5m\"   [\"60s\"]
    dry_run               webhook/reconcile: write nothing to SPIRE, log and count the
                          writes it would make (elects on its own \"-dry-run\" lock) [false]
    x509_svid_ttl         webhook/reconcile: X509-SVID TTL of every entry, e.g. \"1h\" [0 = server default]
    jwt_svid_ttl          webhook/reconcile: JWT-SVID TTL of every entry         [0 = server default]
    entry_hint            webhook/reconcile: hint on every entry (entry show)    [\"\" = none]
  webhook mode:
    addr [\":8443\"]  cert_path [\"cert.pem\"]  key_path [\"key.pem\"]  cacert_path [\"cacert.pem\"]
    insecure_skip_client_verification [false]  metrics_addr [\":8080\"; \"0\" disables]
  reconcile mode:
    leader_election [false]  leader_election_resource_lock [\"configmaps\" | \"leases\"]
    leader_election_namespace [own namespace]  metrics_addr [\":8080\"; \"0\" disables]
    controller_name [\"spire-k8s-registrar\"]  add_pod_dns_names [false]
    cluster_dns_zone [\"cluster.local\"]
  crd mode:
    add_svc_dns_name [true]  pod_controller [true]  leader_election [false]
    leader_election_resource_lock [\"configmaps\"]  leader_election_namespace [own namespace]
    metrics_bind_addr [\":8080\"; \"0\" disables]  webhook_enabled [false]
    webhook_cert_dir [\"/run/spire/serving-certs\"]  webhook_port [9443]
    webhook_service_name [\"k8s-workload-registrar\"]  identity_template  identity_template_label
    dns_name_templates [[\"{{.Pod.Name}}\"]]  context { Key = \"value\" }

ENVIRONMENT:
    KUBECONFIG   kubeconfig file to use unless -kubeconfig is given; otherwise in-cluster
    RUST_LOG     tracing filter (e.g. \"info,k8s_workload_registrar=debug\"); overrides log_level
";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, CliError> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    fn run(path: &str) -> Command {
        Command::Run(Args::new(PathBuf::from(path)))
    }

    fn validate(path: &str) -> Command {
        Command::Validate(Args::new(PathBuf::from(path)))
    }

    fn with(command: Command, f: impl FnOnce(&mut Args)) -> Command {
        match command {
            Command::Run(mut a) => {
                f(&mut a);
                Command::Run(a)
            }
            Command::Validate(mut a) => {
                f(&mut a);
                Command::Validate(a)
            }
            other => other,
        }
    }

    #[test]
    fn accepted_forms() {
        let cases: &[(&[&str], Command)] = &[
            (&[], run(DEFAULT_CONFIG_PATH)),
            (&["run"], run(DEFAULT_CONFIG_PATH)),
            (&["-config", "a.conf"], run("a.conf")),
            (&["--config", "a.conf"], run("a.conf")),
            (&["-config=a.conf"], run("a.conf")),
            (&["--config=a.conf"], run("a.conf")),
            (&["--config=x=y.conf"], run("x=y.conf")),
            (&["run", "-config", "a.conf"], run("a.conf")),
            (&["validate"], validate(DEFAULT_CONFIG_PATH)),
            (&["validate", "-config", "b.conf"], validate("b.conf")),
            (&["validate", "--config=b.conf"], validate("b.conf")),
            (&["-config", "b.conf", "validate"], validate("b.conf")),
            (&["-h"], Command::Help),
            (&["-help"], Command::Help),
            (&["--help"], Command::Help),
            (&["validate", "--help"], Command::Help),
            (&["-version"], Command::Version),
            (&["--version"], Command::Version),
            (
                &["-kubeconfig", "k.yaml"],
                with(run(DEFAULT_CONFIG_PATH), |a| a.kubeconfig = Some("k.yaml".into())),
            ),
            (
                &["-config", "a.conf", "--kubeconfig=k.yaml"],
                with(run("a.conf"), |a| a.kubeconfig = Some("k.yaml".into())),
            ),
            (&["-expandEnv"], with(run(DEFAULT_CONFIG_PATH), |a| a.expand_env = true)),
            (&["validate", "-expandEnv=true"], with(validate(DEFAULT_CONFIG_PATH), |a| a.expand_env = true)),
            (&["-expandEnv=false"], run(DEFAULT_CONFIG_PATH)),
            (&["plan"], Command::Plan(Args::new(DEFAULT_CONFIG_PATH.into()), Output::Text)),
            (
                &["plan", "-config", "a.conf", "-output", "json"],
                Command::Plan(Args::new("a.conf".into()), Output::Json),
            ),
            (&["-output=text", "plan"], Command::Plan(Args::new(DEFAULT_CONFIG_PATH.into()), Output::Text)),
        ];
        for (args, expected) in cases {
            assert_eq!(parse(args).as_ref(), Ok(expected), "{args:?}");
        }
    }

    #[test]
    fn rejected_forms() {
        let cases: &[(&[&str], CliError, &str)] = &[
            (&["-verbose"], CliError::UnknownFlag("-verbose".into()), "\"-verbose\""),
            (&["validate", "--nope"], CliError::UnknownFlag("--nope".into()), "\"--nope\""),
            (&["-kubeconfig"], CliError::MissingValue("-kubeconfig".into()), "needs a value"),
            (&["-expandEnv=yes"], CliError::BadBool("-expandEnv=yes".into()), "true or false"),
            (&["-expandEnv", "-expandEnv"], CliError::Repeated("expandEnv"), "more than once"),
            (&["-config"], CliError::MissingValue("-config".into()), "needs a value"),
            (&["-config", "-h"], CliError::MissingValue("-config".into()), "needs a value"),
            (&["--config="], CliError::MissingValue("--config=".into()), "needs a value"),
            (&["-version=1"], CliError::UnknownFlag("-version=1".into()), "unknown flag"),
            (&["frobnicate"], CliError::UnexpectedArgument("frobnicate".into()), "\"frobnicate\""),
            (&["validate", "run"], CliError::UnexpectedArgument("run".into()), "\"run\""),
            (&["-config", "a", "-config", "b"], CliError::Repeated("config"), "more than once"),
            (&["plan", "-output", "yaml"], CliError::BadOutput("yaml".into()), "text or json"),
            (&["plan", "-output"], CliError::MissingValue("-output".into()), "needs a value"),
            (&["-output", "json"], CliError::OutputWithoutPlan, "only for the plan command"),
            (&["plan", "validate"], CliError::UnexpectedArgument("validate".into()), "\"plan\""),
        ];
        for (args, expected, needle) in cases {
            let got = parse(args);
            assert_eq!(got.as_ref(), Err(expected), "{args:?}");
            assert!(expected.to_string().contains(needle), "{expected}");
        }
    }

    #[test]
    fn usage_mentions_every_config_key_and_environment() {
        let fixed =
            ["-config", "-kubeconfig", "-expandEnv", "-output", "validate", "plan", "KUBECONFIG", "RUST_LOG"];
        for needle in fixed.into_iter().chain(crate::config::known_keys()) {
            assert!(USAGE.contains(needle), "USAGE lacks {needle}");
        }
    }
}
