//! Logging set-up: `tracing` with the level from the config for this crate and `warn` for its
//! dependencies (`RUST_LOG`, when set, replaces both), text or flat JSON lines, to stderr or
//! appended to `log_path`. Colour only on a terminal, and never with `NO_COLOR` set.

use std::{fs::OpenOptions, io::IsTerminal, path::Path, sync::Mutex};

use tracing_subscriber::{EnvFilter, fmt, fmt::writer::BoxMakeWriter};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open log_path {path}: {source}")]
    LogPath { path: String, source: std::io::Error },
    #[error("logging was already initialised")]
    AlreadySet,
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive such as `info`.
pub fn init(level: &str, json: bool, log_path: Option<&Path>) -> Result<(), Error> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(filter_directives(level)),
    };
    let color = log_path.is_none()
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let writer = match log_path {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::LogPath { path: path.display().to_string(), source })?;
            BoxMakeWriter::new(Mutex::new(file))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = fmt().with_env_filter(filter).with_target(false).with_ansi(color).with_writer(writer);
    let result = if json {
        builder
            .json()
            .with_target(true)
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|_| Error::AlreadySet)
}

/// `log_level` applies to this crate (library and binary share the name); everything else logs
/// warnings and errors only, so `debug` does not turn on every HTTP/2 frame of the clients.
fn filter_directives(level: &str) -> String {
    format!("warn,{}={level}", env!("CARGO_CRATE_NAME"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_applies_to_this_crate_and_dependencies_log_warnings() {
        assert_eq!(filter_directives("debug"), "warn,k8s_workload_registrar=debug");
        // The directives parse as a filter.
        let _ = EnvFilter::new(filter_directives("trace"));
    }
}
