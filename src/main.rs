//! The `k8s-workload-registrar` binary: arguments, logging, signals and exit codes. The
//! registrar itself is `app::run` in the library.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use k8s_workload_registrar::{
    app,
    cli::{self, Command},
    config::{self, Config, LogFormat},
};

fn main() -> ExitCode {
    let command = match cli::parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => print(cli::USAGE),
        Command::Version => print(&format!("k8s-workload-registrar {}", env!("CARGO_PKG_VERSION"))),
        Command::Validate(args) => match load(&args) {
            Ok(cfg) => print(&cfg.to_json()),
            Err(code) => code,
        },
        Command::Plan(args, output) => {
            let cfg = match load(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match plan(cfg, args.kubeconfig) {
                Ok(p) => {
                    let text = match output {
                        cli::Output::Text => k8s_workload_registrar::plan::render_text(&p),
                        cli::Output::Json => k8s_workload_registrar::plan::render_json(&p).to_string(),
                    };
                    match print(text.trim_end()) {
                        code if code != ExitCode::SUCCESS => code,
                        _ if p.is_empty() => ExitCode::SUCCESS,
                        _ => ExitCode::from(cli::PLAN_CHANGES_PENDING),
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            let cfg = match load(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match run(cfg, args.kubeconfig) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "Registrar stopped with an error.");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The configuration `args` name; its errors printed, as the failing exit status.
fn load(args: &cli::Args) -> Result<Config, ExitCode> {
    config::load_with(&args.config, args.expand_env).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

/// Writes `text` and a newline to stdout. A reader that closed the pipe early (`--help | head -1`)
/// had what it wanted: that is success, not a panic.
fn print(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `plan`: logs (warnings only, to stderr) and TLS as for `run`; nothing is written anywhere.
#[tokio::main]
async fn plan(
    cfg: Config,
    kubeconfig: Option<PathBuf>,
) -> anyhow::Result<k8s_workload_registrar::plan::Plan> {
    k8s_workload_registrar::telemetry::init("warn", false, None)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube_config = kube_config(kubeconfig).await?;
    Ok(app::plan::run(&cfg, kube_config).await?)
}

#[tokio::main]
async fn run(cfg: Config, kubeconfig: Option<PathBuf>) -> anyhow::Result<()> {
    k8s_workload_registrar::telemetry::init(
        cfg.log_level.as_filter(),
        cfg.log_format == LogFormat::Json,
        cfg.log_path.as_deref(),
    )?;
    // One TLS crypto provider for the whole process: ring (see Cargo.toml).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube_config = kube_config(kubeconfig).await?;
    app::run(&cfg, kube_config, shutdown_signal()).await.context("registrar")
}

/// With `-kubeconfig`, the client configuration of that file (its current context); else
/// `None` (then `KUBECONFIG` or in-cluster).
async fn kube_config(path: Option<PathBuf>) -> anyhow::Result<Option<kube::Config>> {
    let Some(path) = path else { return Ok(None) };
    let read = async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
        anyhow::Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?)
    };
    Ok(Some(read.await.with_context(|| format!("-kubeconfig {}", path.display()))?))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "No SIGTERM handler; only Ctrl-C stops the registrar.");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
