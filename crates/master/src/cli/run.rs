//! `halite-master run`: the daemon in the foreground, from master.yaml
//! and the command line's overrides, until SIGTERM or SIGINT.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::{DEFAULT_CONFIG, MasterConfig};

/// Loads the configuration (the defaults when the default file is absent),
/// applies the overrides and serves until a signal.
pub fn run(config: &Path, data_dir: Option<PathBuf>, states: Option<PathBuf>) -> anyhow::Result<()> {
    let mut master = if config.exists() || config.as_os_str() != DEFAULT_CONFIG {
        MasterConfig::load(config).context("cannot load the master configuration (see `halite-master run --help`)")?
    } else {
        MasterConfig::default()
    };
    if let Some(data_dir) = data_dir {
        master.data_dir = data_dir;
    }
    if let Some(states) = states {
        master.states = states;
    }
    super::runtime()?.block_on(async {
        let cancel = CancellationToken::new();
        tokio::spawn(halite_state::signal::stop_on_signal(cancel.clone(), "master"));
        crate::server::run(master, cancel).await
    })
}
