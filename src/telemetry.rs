//! Logging set-up: `tracing` with the level from the config (`RUST_LOG`, when set, overrides
//! it), text or JSON lines, to stderr or appended to `log_path`.

use std::{fs::OpenOptions, path::Path, sync::Mutex};

use tracing_subscriber::{EnvFilter, fmt};

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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let result = match (log_path, json) {
        (Some(path), json) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::LogPath { path: path.display().to_string(), source })?;
            let b = builder.with_ansi(false).with_writer(Mutex::new(file));
            if json { b.json().try_init() } else { b.try_init() }
        }
        (None, true) => builder.json().with_writer(std::io::stderr).try_init(),
        (None, false) => builder.with_writer(std::io::stderr).try_init(),
    };
    result.map_err(|_| Error::AlreadySet)
}
