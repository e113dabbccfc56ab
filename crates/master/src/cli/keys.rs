//! `halite-master keys`: agents' keys, listed, accepted, rejected or
//! deleted through the running master, or the master's own fingerprint
//! read from its data dir. `list` reads the store itself (read-only) when
//! the master is stopped.

use std::path::Path;

use anyhow::Context as _;

use super::exit::CommandError;
use crate::protocol::Request;
use crate::server::keys::KeyEntry;

/// What `keys` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    List,
    /// Accept what TARGET names; `replace`: even where that retires an
    /// id's accepted key.
    Accept {
        target: String,
        replace: bool,
    },
    Reject(String),
    Delete(String),
    Fingerprint,
    Facts {
        target: String,
        accept: bool,
    },
}

pub fn run(action: Action, data_dir: &Path, json: bool) -> anyhow::Result<bool> {
    let (request, target) = match action {
        Action::Fingerprint => {
            let path = data_dir.join("master.key");
            let keypair = halite_link::Keypair::load(&path).with_context(|| {
                format!("no master key in {} (start the master once, or pass --data-dir)", data_dir.display())
            })?;
            println!("{}", keypair.public);
            return Ok(true);
        }
        Action::List => (Request::KeysList, None),
        Action::Accept { target, replace } => (Request::KeysAccept { target: target.clone(), replace }, Some(target)),
        Action::Reject(target) => (Request::KeysReject { target: target.clone() }, Some(target)),
        Action::Delete(target) => (Request::KeysDelete { target: target.clone() }, Some(target)),
        Action::Facts { target, accept } => return facts(data_dir, Request::KeysFacts { target, accept }, json),
    };
    let answer = super::runtime()?.block_on(super::request(data_dir, &request));
    let mut keys = match answer {
        Ok(response) => {
            if let Some(error) = response.error {
                if response.refused {
                    return Err(CommandError::Refused { message: error }.into());
                }
                anyhow::bail!(error);
            }
            response.keys
        }
        // The store is the truth while the master is stopped.
        Err(error)
            if target.is_none()
                && error
                    .downcast_ref::<CommandError>()
                    .is_some_and(|e| matches!(e, CommandError::NotRunning { .. })) =>
        {
            super::trusted_data_dir(data_dir)?;
            let db = crate::server::store::path(data_dir);
            eprintln!("note: the master is not running; keys as stored in {}", db.display());
            crate::server::keys::read_stored(&db)?
        }
        Err(error) => return Err(error),
    };
    if let Some(target) = &target
        && keys.is_empty()
    {
        return Err(CommandError::NoKeyMatched { target: target.clone() }.into());
    }
    keys.sort_by(|a, b| (&a.id, &a.key).cmp(&(&b.id, &b.key)));
    if json {
        println!("{}", serde_json::to_string_pretty(&keys)?);
    } else if keys.is_empty() {
        println!("no keys yet");
    } else {
        // Ids and fingerprints come from agents.
        print!("{}", halite_proto::text::escape(&table(&keys)));
    }
    Ok(true)
}

/// The table `keys` prints, one key per line.
fn table(keys: &[KeyEntry]) -> String {
    let width = keys.iter().map(|k| k.id.len()).max().unwrap_or(2).max(2);
    let mut text = format!("{:<width$}  {:<8}  FINGERPRINT\n", "ID", "STATUS");
    for key in keys {
        text.push_str(&format!("{:<width$}  {:<8}  {}\n", key.id, key.status.as_str(), key.key));
    }
    text
}

/// `keys facts`: per key, the frozen facts and any held ones, as JSON
/// (escaped on a terminal: the facts come from agents).
fn facts(data_dir: &Path, request: Request, json: bool) -> anyhow::Result<bool> {
    let response = super::runtime()?.block_on(super::request(data_dir, &request))?;
    if let Some(error) = response.error {
        anyhow::bail!(error);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&response.key_facts)?);
        return Ok(true);
    }
    if response.key_facts.is_empty() {
        println!("no accepted key with facts matched");
    }
    for row in &response.key_facts {
        let mut text = format!("{}  {}\n  frozen: {}\n", row.id, row.key, row.frozen);
        match &row.held {
            Some(held) => text.push_str(&format!(
                "  held:   {held}\n  (the agent claims these since; `halite-master keys facts {} --accept` trusts them)\n",
                row.id
            )),
            None => text.push_str("  held:   none\n"),
        }
        print!("{}", halite_proto::text::escape(&text));
    }
    Ok(true)
}
