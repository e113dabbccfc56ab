//! `halite-master tokens create|list|revoke`: API tokens, through the
//! running master (`server/access.rs` keeps them; only their sha256 is
//! stored, so a token is printed once, here, when it is made).

use std::path::Path;

use crate::protocol::Request;

/// What `tokens` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create { name: String, role: String },
    List,
    Revoke(String),
}

pub fn run(action: Action, data_dir: &Path, json: bool) -> anyhow::Result<bool> {
    let request = match &action {
        Action::Create { name, role } => Request::TokensCreate { name: name.clone(), role: role.clone() },
        Action::List => Request::TokensList,
        Action::Revoke(name) => Request::TokensRevoke { name: name.clone() },
    };
    let response = super::runtime()?.block_on(super::request(data_dir, &request))?;
    if let Some(error) = response.error {
        anyhow::bail!(error);
    }
    match action {
        Action::Create { name, role } => {
            let token = response.token.unwrap_or_default();
            if json {
                println!("{}", serde_json::json!({ "name": name, "role": role, "token": token }));
            } else {
                eprintln!("Token `{name}` (role `{role}`), shown this once; the master keeps only its hash:");
                println!("{token}");
            }
        }
        Action::List if json => println!("{}", serde_json::to_string_pretty(&response.tokens)?),
        Action::List => {
            if response.tokens.is_empty() {
                eprintln!("no tokens (make one with `halite-master tokens create NAME --role ROLE`)");
            }
            for token in &response.tokens {
                let made = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_micros(u64::try_from(token.created_us).unwrap_or(0)),
                );
                println!("{:<24} {:<16} made {made}", token.name, token.role);
            }
        }
        Action::Revoke(name) => eprintln!("revoked `{name}`"),
    }
    Ok(true)
}
