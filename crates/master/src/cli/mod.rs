//! The client side of each operator command, one file per command; each
//! talks to the running master through the control socket
//! ([`crate::protocol`]), or reads the data dir itself where it must work
//! with the master stopped (`jobs`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::config::MasterConfig;
use crate::protocol::{Request, Response, socket_path};

pub mod agents;
pub mod apply;
pub mod backup;
pub mod check;
pub mod demo;
pub mod events;
pub mod init;
pub mod jobs;
pub mod keys;
pub mod run;

/// The data dir an operator command talks to: `--data-dir`, or the
/// configuration's, or the default.
pub fn operator_data_dir(config: &Path, data_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match data_dir {
        Some(dir) => dir,
        None if config.exists() => MasterConfig::load(config)?.data_dir,
        None => MasterConfig::default().data_dir,
    })
}

/// A connection to the control socket of the master whose data dir is
/// `data_dir`.
pub async fn connect(data_dir: &Path) -> anyhow::Result<UnixStream> {
    let path = socket_path(data_dir);
    UnixStream::connect(&path).await.with_context(|| {
        format!(
            "cannot reach the master's control socket {} (is `halite-master run` running with this data dir?)",
            path.display()
        )
    })
}

/// A multi-threaded runtime for the commands that talk to the master.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Sends a request whose answer is a stream of lines (`apply`); returns
/// the lines as they come.
pub async fn stream(
    data_dir: &Path,
    request: &Request,
) -> anyhow::Result<tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>> {
    let stream = connect(data_dir).await?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    // Dropping the write half shuts it down; the master reads the next
    // request only after it has answered this one in full.
    drop(write);
    Ok(BufReader::new(read).lines())
}

/// Sends one request to the running master.
pub async fn request(data_dir: &Path, request: &Request) -> anyhow::Result<Response> {
    let stream = connect(data_dir).await?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let answer = BufReader::new(read).lines().next_line().await?.context("the master closed the control socket")?;
    Ok(serde_json::from_str(&answer)?)
}
