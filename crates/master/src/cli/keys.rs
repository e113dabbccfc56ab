//! `halite-master keys`: agents' keys, listed, accepted, rejected or
//! deleted through the running master, or the master's own fingerprint
//! read from its data dir.

use std::path::Path;

use anyhow::Context as _;

use crate::protocol::Request;

/// What `keys` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    List,
    Accept(String),
    Reject(String),
    Delete(String),
    Fingerprint,
    Facts { target: String, accept: bool },
}

pub fn run(action: Action, data_dir: &Path, json: bool) -> anyhow::Result<bool> {
    let request = match action {
        Action::Fingerprint => {
            let path = data_dir.join("master.key");
            let keypair = halite_link::Keypair::load(&path).with_context(|| {
                format!("no master key in {} (start the master once, or pass --data-dir)", data_dir.display())
            })?;
            println!("{}", keypair.public);
            return Ok(true);
        }
        Action::List => Request::KeysList,
        Action::Accept(target) => Request::KeysAccept { target },
        Action::Reject(target) => Request::KeysReject { target },
        Action::Delete(target) => Request::KeysDelete { target },
        Action::Facts { target, accept } => return facts(data_dir, Request::KeysFacts { target, accept }, json),
    };
    let listing = matches!(request, Request::KeysList);
    let response = super::runtime()?.block_on(super::request(data_dir, &request))?;
    if let Some(error) = response.error {
        anyhow::bail!(error);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&response.keys)?);
    } else if response.keys.is_empty() {
        println!("{}", if listing { "no keys yet" } else { "no key matched" });
    } else {
        let width = response.keys.iter().map(|k| k.id.len()).max().unwrap_or(2).max(2);
        println!("{:<width$}  {:<8}  FINGERPRINT", "ID", "STATUS");
        for key in &response.keys {
            let line = format!("{:<width$}  {:<8}  {}", key.id, key.status.as_str(), key.key);
            println!("{}", halite_proto::text::escape(&line));
        }
    }
    Ok(true)
}

/// `keys facts`: per key, the frozen facts and any held ones, as JSON
/// (escaped on a terminal: the facts come from agents).
fn facts(data_dir: &Path, request: Request, json: bool) -> anyhow::Result<bool> {
    let response = super::runtime()?.block_on(super::request(data_dir, &request))?;
    if let Some(error) = response.error {
        anyhow::bail!(error);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&response.facts)?);
        return Ok(true);
    }
    if response.facts.is_empty() {
        println!("no accepted key with facts matched");
    }
    for row in &response.facts {
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
