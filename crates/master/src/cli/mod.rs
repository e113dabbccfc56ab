//! The client side of each operator command, one file per command; each
//! talks to the running master through the control socket
//! ([`crate::protocol`]), or reads the data dir itself where it must work
//! with the master stopped (`jobs`, `keys list`). `exit.rs` holds the
//! exit codes every command shares.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::config::MasterConfig;
use crate::protocol::{Request, Response, socket_path};

pub mod adopt;
pub mod agents;
pub mod apply;
pub mod audit;
pub mod backup;
pub mod check;
pub mod cmd;
pub mod demo;
pub mod events;
pub mod exit;
pub mod facts;
pub mod init;
pub mod inventory;
pub mod jobs;
pub mod keys;
pub mod receipts;
pub mod run;
pub mod tokens;

/// The API token the operator's commands present (`--token`,
/// `HALITE_TOKEN`), set once by `main`; none: the local `admin`.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every control socket connection of this process present `token`.
pub fn use_token(token: String) {
    let _ = TOKEN.set(token);
}

/// The data dir an operator command talks to: `--data-dir`, or the
/// configuration's, or the default.
pub fn operator_data_dir(config: &Path, data_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match data_dir {
        Some(dir) => dir,
        None if config.exists() => MasterConfig::load(config)?.data_dir,
        None => MasterConfig::default().data_dir,
    })
}

/// Where the records of the master configured in `config` are: its
/// `store:` (PostgreSQL or halite.db), the default when there is no such
/// file.
pub fn operator_store(config: &Path) -> anyhow::Result<crate::config::StoreConfig> {
    Ok(if config.exists() { MasterConfig::load(config)?.store } else { crate::config::StoreConfig::default() })
}

/// Refuses to read halite.db for records the master in `data_dir` keeps in
/// PostgreSQL: without `--config` naming its master.yaml, `jobs`,
/// `receipts` and `audit` would show an old or empty halite.db as if it
/// were the whole story. The keys' import marker says the data dir has met
/// PostgreSQL.
pub fn records_are_here(data_dir: &Path, store: &crate::config::StoreConfig) -> anyhow::Result<()> {
    let marker = data_dir.join(crate::server::cluster::keys::IMPORTED_MARKER);
    if store.url.is_none() && marker.exists() {
        anyhow::bail!(
            "the master in {} records into PostgreSQL ({} says so), not into its halite.db: pass --config naming its master.yaml (with its `store:`)",
            data_dir.display(),
            marker.display()
        );
    }
    Ok(())
}

/// A connection to the control socket of the master whose data dir is
/// `data_dir`.
pub async fn connect(data_dir: &Path) -> anyhow::Result<UnixStream> {
    // A socket another local user planted would answer in the master's
    // name (StrictModes; the daemon's user and root are trusted).
    trusted_data_dir(data_dir)?;
    let socket = socket_path(data_dir);
    let mut stream =
        UnixStream::connect(&socket).await.map_err(|source| exit::CommandError::NotRunning { socket, source })?;
    if let Some(token) = TOKEN.get() {
        let mut line = serde_json::to_string(&Request::Auth { token: token.clone() })?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await?;
        // The master says nothing more until the next request: reading
        // one line here leaves nothing behind in the buffer.
        let mut answer = String::new();
        BufReader::new(&mut stream).read_line(&mut answer).await?;
        let response: Response = serde_json::from_str(&answer).context("the master did not answer the token")?;
        if let Some(error) = response.error {
            anyhow::bail!("the master refused the token (--token / HALITE_TOKEN): {error}");
        }
    }
    Ok(stream)
}

/// Refuses a data dir that someone other than its owner or root could have
/// written (`connect`, and `jobs`, which reads halite.db itself).
pub fn trusted_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    match halite_fs::strict::check_data_dir(data_dir, halite_fs::strict::Owner::DirOwner) {
        // A missing data dir is reported by what tries to use it.
        Err(halite_fs::strict::StrictError::Inspect { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        result => result.context("refusing to trust this data dir"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_that_met_postgres_is_not_read_as_its_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let local = crate::config::StoreConfig::default();
        records_are_here(dir.path(), &local).unwrap();
        std::fs::write(dir.path().join(crate::server::cluster::keys::IMPORTED_MARKER), "").unwrap();
        let error = records_are_here(dir.path(), &local).unwrap_err().to_string();
        assert!(error.contains("records into PostgreSQL") && error.contains("--config"), "{error}");
        let shared = crate::config::StoreConfig { url: Some("postgres://db/halite".into()), ..Default::default() };
        records_are_here(dir.path(), &shared).unwrap();
    }
}
