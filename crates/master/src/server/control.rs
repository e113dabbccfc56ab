//! The control socket: how operator commands (`halite-master keys …`) talk
//! to the running master. A Unix socket in the data dir, owner-only; one
//! JSON request per line, one JSON answer per line. `events` is the
//! exception: after its answer the connection carries the event stream
//! (`events.rs`) until the command goes away.
//!
//! Who asks: the peer's uid (the socket is owner-only, so the master's
//! user or root) runs as the built-in `admin`; after an `auth` request
//! with an API token (`--token`, `HALITE_TOKEN`), as that token's role,
//! decided by the same rule as the API (`access.rs`, `guard`). Changes
//! and refusals go to the audit log either way.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use anyhow::Context;
use halite_link::PublicKey;
use halite_proto::event::tag;
use halite_proto::{Event, MasterMessage, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::config::Verb;
use crate::protocol::{AgentRow, ApplyLine, CmdLine, Request, Response, socket_path};
use crate::server::access::{Principal, Refusal};
use crate::server::audit::Entry;
use crate::server::context::Master;
use crate::server::keys::{KeyEntry, KeyStatus};

/// How long the control socket waits after a failed accept before trying
/// again.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(250);

/// Serves the control socket until `cancel`; the task returned ends once
/// the socket is removed, so the daemon removes it while it still holds
/// the data dir's lock (a master started next must not lose its socket to
/// this one's cleanup).
pub async fn serve(
    master: Arc<Master>,
    data_dir: &Path,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(data_dir);
    // A socket left by a master that crashed; the data dir is ours alone.
    let _ = tokio::fs::remove_file(&path).await;
    let listener =
        UnixListener::bind(&path).with_context(|| format!("cannot create the control socket {}", path.display()))?;
    tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).await?;
    Ok(tokio::spawn(async move {
        // Set while accepts fail, so a failure is logged once, not per try.
        let mut failing = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("Control socket accepting again.");
                        }
                        tokio::spawn(connection(master.clone(), stream));
                    }
                    Err(error) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(%error, path = %path.display(), "Control socket accept failed; retrying every {ACCEPT_BACKOFF:?} until it succeeds.");
                        }
                        // Out of descriptors (EMFILE) every accept fails at
                        // once until one frees up: wait instead of spinning.
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                }
            }
        }
        let _ = tokio::fs::remove_file(&path).await;
    }))
}

async fn connection(master: Arc<Master>, stream: UnixStream) {
    let uid = stream.peer_cred().ok().map(|credentials| credentials.uid());
    let mut principal = Principal::local(uid);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let request = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Auth { token }) => {
                let response = match master.access.authenticate_current(&token).await {
                    Ok(token_principal) => {
                        principal = token_principal;
                        Response { ok: true, ..Response::default() }
                    }
                    Err(error) => Response { ok: false, error: Some(error.to_string()), ..Response::default() },
                };
                if send_line(&mut write, &response).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(request) => request,
            Err(error) => {
                let response =
                    Response { ok: false, error: Some(format!("bad request: {error}")), ..Response::default() };
                if send_line(&mut write, &response).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let (request, planned) = match guard(&master, &principal, request).await {
            Ok(allowed) => allowed,
            Err(refusal) => {
                let error = Some(refusal.to_string());
                let sent = match refusal.request {
                    Request::Apply(_) => {
                        send_line(&mut write, &ApplyLine::Error { error: refusal.to_string(), no_agent: false }).await
                    }
                    Request::Cmd(_) => {
                        send_line(&mut write, &CmdLine::Error { error: refusal.to_string(), no_agent: false }).await
                    }
                    _ => send_line(&mut write, &Response { ok: false, error, ..Response::default() }).await,
                };
                if sent.is_err() {
                    return;
                }
                continue;
            }
        };
        let response = match request {
            Request::Apply(apply) => {
                // Exactly the jobs `guard` checked: an agent connecting
                // meanwhile is not reached unchecked.
                match planned.unwrap_or_else(|| crate::server::apply::plan(&master, &apply)) {
                    Ok(jobs) => {
                        crate::server::apply::serve_planned(&master, apply, jobs, &principal.who, &mut write).await;
                    }
                    Err(line) => {
                        let _ = send_line(&mut write, &line).await;
                    }
                }
                continue;
            }
            Request::Cmd(cmd) => {
                crate::server::cmd::serve(&master, cmd, &principal.who, &mut write).await;
                continue;
            }
            Request::Facts { target, names } => crate::server::facts::answer(&master, &target, &names),
            Request::Events { tag } => {
                let reach = principal.clone();
                let facts_of = master.clone();
                let reaches = move |event: &Event| {
                    event.agent.is_empty() || reach.sees(&event.agent, &facts_of.sessions.facts(&event.agent))
                };
                return crate::server::events::stream_filtered(&master, tag, write, reaches).await;
            }
            Request::Agents => {
                let agents = agent_rows(&master)
                    .into_iter()
                    .filter(|row| principal.sees(&row.id, &Value::from_json(&row.facts)))
                    .collect();
                Response { ok: true, agents, ..Response::default() }
            }
            Request::KeysList => {
                let rows = agent_rows(&master);
                let keys = master
                    .keys
                    .list()
                    .into_iter()
                    .filter(|key| principal.sees(&key.id, &facts_in(&rows, &key.id)))
                    .collect();
                Response { ok: true, keys, ..Response::default() }
            }
            Request::Backup { to } => {
                let response = backup(&master, to.clone()).await;
                record(&master, &principal, "backup", &to.display().to_string(), &response).await;
                response
            }
            Request::TokensList => Response { ok: true, tokens: master.access.list_tokens(), ..Response::default() },
            Request::TokensCreate { name, role } => {
                let response = match master.access.create_token(&name, &role).await {
                    Ok(token) => Response { ok: true, token: Some(token), ..Response::default() },
                    Err(error) => Response { ok: false, error: Some(error.to_string()), ..Response::default() },
                };
                record(&master, &principal, &format!("tokens create --role {role}"), &name, &response).await;
                response
            }
            Request::TokensRevoke { name } => {
                let response = match master.access.revoke(&name).await {
                    Ok(true) => Response { ok: true, ..Response::default() },
                    Ok(false) => Response {
                        ok: false,
                        error: Some(format!("no token named `{name}` (`halite-master tokens list` shows them)")),
                        ..Response::default()
                    },
                    Err(error) => Response { ok: false, error: Some(error.to_string()), ..Response::default() },
                };
                record(&master, &principal, "tokens revoke", &name, &response).await;
                response
            }
            request @ (Request::KeysAccept { .. } | Request::KeysReject { .. } | Request::KeysDelete { .. }) => {
                let (what, target) = match &request {
                    Request::KeysAccept { target, .. } => ("keys accept", target.clone()),
                    Request::KeysReject { target } => ("keys reject", target.clone()),
                    _ => ("keys delete", request_target(&request)),
                };
                let response = execute(&master, request).await;
                record(&master, &principal, what, &target, &response).await;
                response
            }
            request @ Request::KeysFacts { accept: true, .. } => {
                let target = request_target(&request);
                let response = execute(&master, request).await;
                record(&master, &principal, "keys facts --accept", &target, &response).await;
                response
            }
            Request::Inventory { target } => crate::server::coverage::inventory(&master, &target).await,
            Request::Adopt { agent, path } => {
                let response = crate::server::coverage::adopt(&master, &agent, &path).await;
                record(&master, &principal, "adopt", &format!("{agent}:{path}"), &response).await;
                response
            }
            request => execute(&master, request).await,
        };
        let mut text = serde_json::to_string(&response).unwrap_or_default();
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Why a control request failed; goes back to the command as the
/// response's `error` text.
#[derive(Debug, thiserror::Error)]
enum ControlError {
    /// The key store's error names the selector or the store.
    #[error(transparent)]
    Keys(#[from] crate::server::keys::KeyStoreError),
    /// A request the connection serves itself reached `execute`.
    #[error("{request} is served by the connection, not here")]
    Misrouted { request: &'static str },
}

/// Carries out a request that is answered by one [`Response`] (keys);
/// the API calls it too, after its own authorization.
pub async fn execute(master: &Master, request: Request) -> Response {
    let result = match request {
        Request::KeysList => Ok(master.keys.list()),
        Request::KeysAccept { target, replace } => {
            if !replace && let Err(error) = master.keys.check_no_replacement(&target) {
                return Response { ok: false, error: Some(error.to_string()), refused: true, ..Response::default() };
            }
            accept(master, &target).await
        }
        Request::KeysReject { target } => {
            let changed = master.keys.set_status(&target, KeyStatus::Rejected);
            cut_off(master, changed, "rejected").await.and_then(|c| already(master, &target, c, KeyStatus::Rejected))
        }
        Request::KeysDelete { target } => {
            let deleted = master.keys.delete(&target);
            cut_off(master, deleted, "deleted").await
        }
        Request::KeysFacts { target, accept } => {
            return match key_facts(master, &target, accept).await {
                Ok(key_facts) => Response { ok: true, key_facts, ..Response::default() },
                Err(error) => Response { ok: false, error: Some(error.to_string()), ..Response::default() },
            };
        }
        Request::Apply(_) => Err(ControlError::Misrouted { request: "apply" }),
        Request::Agents => Err(ControlError::Misrouted { request: "agents" }),
        Request::Events { .. } => Err(ControlError::Misrouted { request: "events" }),
        Request::Facts { .. } => Err(ControlError::Misrouted { request: "facts" }),
        Request::Cmd(_) => Err(ControlError::Misrouted { request: "cmd" }),
        Request::Backup { .. } => Err(ControlError::Misrouted { request: "backup" }),
        Request::Inventory { .. } => Err(ControlError::Misrouted { request: "inventory" }),
        Request::Adopt { .. } => Err(ControlError::Misrouted { request: "adopt" }),
        Request::Auth { .. } => Err(ControlError::Misrouted { request: "auth" }),
        Request::TokensCreate { .. } | Request::TokensList | Request::TokensRevoke { .. } => {
            Err(ControlError::Misrouted { request: "tokens" })
        }
    };
    match result {
        Ok(keys) => Response { ok: true, keys, ..Response::default() },
        Err(error) => Response { ok: false, error: Some(error.to_string()), ..Response::default() },
    }
}

/// `halite-master backup`: SQLite's online backup of the store, off the
/// runtime's threads, while the writer goes on.
async fn backup(master: &Master, to: std::path::PathBuf) -> Response {
    let Some(store) = master.jobs.store().cloned() else {
        return Response { ok: false, error: Some("this master has no store".into()), ..Response::default() };
    };
    if !to.is_absolute() {
        return Response {
            ok: false,
            error: Some(format!("{} is not an absolute path", to.display())),
            ..Response::default()
        };
    }
    match tokio::task::spawn_blocking(move || store.backup(&to)).await {
        Ok(Ok(())) => Response { ok: true, ..Response::default() },
        Ok(Err(error)) => Response { ok: false, error: Some(error.to_string()), ..Response::default() },
        Err(error) => {
            Response { ok: false, error: Some(format!("the backup stopped: {error}")), ..Response::default() }
        }
    }
}

/// Accepts in memory, commits to disk, then welcomes the live sessions of
/// the keys accepted. A failed commit is reported, and the acceptance is
/// in effect anyway (memory decides for the running master).
async fn accept(master: &Master, target: &str) -> Result<Vec<KeyEntry>, ControlError> {
    let before = master.keys.list();
    let changed = master.keys.set_status(target, KeyStatus::Accepted)?;
    // Accepting retired the ids' other keys: their sessions end now, not
    // at their next reconnect, and their agents are told why.
    let after = master.keys.list();
    let retired: Vec<&KeyEntry> = before
        .iter()
        .filter(|old| changed.iter().any(|new| new.id == old.id && new.key != old.key))
        .filter(|old| !after.iter().any(|e| e.id == old.id && e.key == old.key))
        .collect();
    for old in retired {
        retire(master, old, changed.iter().find(|new| new.id == old.id).map_or("", |new| new.key.as_str())).await;
    }
    let saved = master.keys.commit().await;
    share(master, changed.iter().map(|e| e.id.clone()).collect()).await;
    for entry in &changed {
        tracing::info!(agent = %entry.id, fingerprint = %entry.key, "Key accepted.");
        master.bus.publish(Event::new(
            tag::key(&entry.id, "accepted"),
            entry.id.as_str(),
            Value::map().with("fingerprint", entry.key.as_str()),
        ));
        let Ok(key) = entry.key.parse::<PublicKey>() else { continue };
        // A pending session holds no facts: it ends, and the agent,
        // reconnecting at once, is welcomed with the facts of its new hello.
        master.sessions.reconnect_pending(&entry.id, &key);
    }
    saved?;
    already(master, target, changed, KeyStatus::Accepted)
}

/// `old`'s key was retired by accepting `new` for its id: its sessions end
/// at once, and its agent is told (`NotAccepted { status: "replaced" }`),
/// so it logs why instead of sending events the master drops.
async fn retire(master: &Master, old: &KeyEntry, new: &str) {
    tracing::warn!(agent = %old.id, fingerprint = %old.key, replaced_by = new, "Key retired: another key was accepted for this agent id; its session is cut.");
    master.bus.publish(Event::new(
        tag::key(&old.id, "deleted"),
        old.id.as_str(),
        Value::map().with("fingerprint", old.key.as_str()).with("replaced_by", new),
    ));
    let Ok(key) = old.key.parse::<PublicKey>() else { return };
    for peer in master.sessions.peers_of(&old.id, &key) {
        let _ = master.sessions.send_to_peer(peer, &MasterMessage::NotAccepted { status: "replaced".to_owned() }).await;
    }
    if !master.sessions.drop_key(&old.id, &key).is_empty() {
        master.bus.publish(Event::new(
            tag::agent(&old.id, "disconnected"),
            old.id.as_str(),
            Value::map().with("reason", "replaced"),
        ));
    }
}

/// When nothing changed, the keys `target` names that already have
/// `status`: an accept or reject repeated is not "no key matched".
fn already(
    master: &Master,
    target: &str,
    changed: Vec<KeyEntry>,
    status: KeyStatus,
) -> Result<Vec<KeyEntry>, ControlError> {
    if !changed.is_empty() {
        return Ok(changed);
    }
    let matching = master.keys.matching(target)?;
    Ok(matching.into_iter().filter(|e| e.status == status).collect())
}

/// Shows, or with `accept` trusts, the facts of the keys `target` names.
/// Accepted facts take effect for the live session at once (targeting,
/// templates); its beacon set follows at its next connection.
async fn key_facts(
    master: &Master,
    target: &str,
    accept: bool,
) -> Result<Vec<crate::server::keys::FactsRow>, ControlError> {
    if !accept {
        return Ok(master.keys.facts(target)?);
    }
    let changed = master.keys.accept_facts(target)?;
    for row in &changed {
        tracing::info!(agent = %row.id, fingerprint = %row.key, "Facts accepted.");
        if master.sessions.accepted_with_facts().iter().any(|(agent, _)| *agent == row.id) {
            master.sessions.set_facts(&row.id, Value::from_json(&row.frozen));
        }
        master.bus.publish(Event::new(
            tag::key(&row.id, "facts-accepted"),
            row.id.as_str(),
            Value::map().with("fingerprint", row.key.as_str()),
        ));
    }
    master.keys.commit().await?;
    // The accepted facts replace the shared ones (every master's).
    share(master, changed.iter().map(|row| row.id.clone()).collect()).await;
    Ok(changed)
}

/// Ends the live sessions of keys that are no longer accepted, at once,
/// then commits the change; both happen before the command returns.
async fn cut_off(
    master: &Master,
    entries: Result<Vec<KeyEntry>, crate::server::keys::KeyStoreError>,
    what: &str,
) -> Result<Vec<KeyEntry>, ControlError> {
    let entries = entries?;
    for entry in &entries {
        tracing::info!(agent = %entry.id, fingerprint = %entry.key, "Key {what}.");
        master.bus.publish(Event::new(
            tag::key(&entry.id, what),
            entry.id.as_str(),
            Value::map().with("fingerprint", entry.key.as_str()),
        ));
        let Ok(key) = entry.key.parse::<PublicKey>() else { continue };
        for peer in master.sessions.peers_of(&entry.id, &key) {
            let _ = master.sessions.send_to_peer(peer, &MasterMessage::NotAccepted { status: what.to_owned() }).await;
        }
        if !master.sessions.drop_key(&entry.id, &key).is_empty() {
            master.bus.publish(Event::new(
                tag::agent(&entry.id, "disconnected"),
                entry.id.as_str(),
                Value::map().with("reason", what),
            ));
        }
    }
    master.keys.commit().await?;
    share(master, entries.iter().map(|e| e.id.clone()).collect()).await;
    Ok(entries)
}

/// With several masters, writes an operator's decision about the keys of
/// `ids` to PostgreSQL, which tells every other master
/// (`cluster/keys.rs`). Unreachable, it is in effect here and written
/// when PostgreSQL answers.
async fn share(master: &Master, mut ids: Vec<String>) {
    ids.sort();
    ids.dedup();
    if !master.keys.share(ids.clone()).await {
        tracing::error!(agents = ?ids, "The key decision is in effect on this master only until PostgreSQL answers; it is written then.");
    }
}

/// A request refused: the principal's role does not allow it.
#[derive(Debug, thiserror::Error)]
#[error("{refusal}")]
struct Refused {
    refusal: Refusal,
    /// What was asked, to answer in its own kind of line.
    request: Request,
}

/// An apply's plan, made once by [`guard`] and run as checked.
type Planned = Option<Result<Vec<(String, crate::server::apply::Dispatch)>, ApplyLine>>;

/// Decides whether `principal` may make `request`, the one rule of
/// `access.rs`; a refusal is audited. A `cmd` a scoped role may run comes
/// back with its target narrowed to the agents checked, so one connecting
/// meanwhile is not reached unchecked (an apply runs exactly the jobs it
/// planned).
async fn guard(master: &Master, principal: &Principal, request: Request) -> Result<(Request, Planned), Refused> {
    let rows = agent_rows(master);
    let reached = |agents: Vec<String>| -> Vec<(String, Value)> {
        agents
            .into_iter()
            .map(|agent| {
                let facts = facts_in(&rows, &agent);
                (agent, facts)
            })
            .collect()
    };
    let keys_named = |selector: &str| {
        reached(master.keys.matching(selector).unwrap_or_default().into_iter().map(|k| k.id).collect())
    };
    let matching = |target: &str| match halite_state::Target::parse(target) {
        Ok(target) => reached(master.jobs.agents_matching(&target)),
        Err(_) => Vec::new(),
    };
    let mut planned: Planned = None;
    let (verb, agents, what): (Verb, Vec<(String, Value)>, String) = match &request {
        Request::KeysList | Request::Agents | Request::Events { .. } | Request::KeysFacts { accept: false, .. } => {
            (Verb::Read, Vec::new(), String::new())
        }
        Request::Facts { target, .. } => (Verb::Read, matching(target), String::new()),
        Request::KeysAccept { target, .. } => (Verb::Keys, keys_named(target), "keys accept".into()),
        Request::KeysReject { target } => (Verb::Keys, keys_named(target), "keys reject".into()),
        Request::KeysDelete { target } => (Verb::Keys, keys_named(target), "keys delete".into()),
        Request::KeysFacts { target, accept: true } => (Verb::Keys, keys_named(target), "keys facts --accept".into()),
        Request::Apply(apply) => {
            let plan = crate::server::apply::plan(master, apply);
            let agents =
                plan.as_ref().map(|jobs| jobs.iter().map(|(agent, _)| agent.clone()).collect()).unwrap_or_default();
            planned = Some(plan);
            (Verb::Apply, reached(agents), if apply.test { "apply --test" } else { "apply" }.into())
        }
        // Agents on other masters too: a routed job is authorized here.
        Request::Cmd(cmd) => {
            let agents = halite_state::Target::parse(&cmd.target)
                .map(|target| crate::server::cmd::reached(master, &target).into_iter().map(|(a, _)| a).collect())
                .unwrap_or_default();
            (Verb::Cmd, reached(agents), "cmd".into())
        }
        Request::Backup { .. } | Request::TokensCreate { .. } | Request::TokensList | Request::TokensRevoke { .. } => {
            (Verb::Admin, Vec::new(), String::new())
        }
        Request::Auth { .. } => (Verb::Read, Vec::new(), String::new()),
        Request::Inventory { target } => (Verb::Read, matching(target), String::new()),
        // It reads any file an agent's beacons watch, for the tree.
        Request::Adopt { agent, .. } => (Verb::Admin, reached(vec![agent.clone()]), "adopt".into()),
    };
    let decided = principal.allows(verb, agents.iter().map(|(a, f)| (a.as_str(), f)));
    if let Err(refusal) = decided {
        let what = if what.is_empty() { verb.as_str().to_owned() } else { what };
        master
            .access
            .record(Entry {
                who: principal.who.clone(),
                what,
                target: request_target(&request),
                cause: request_cause(&request),
                result: format!("refused: {refusal}"),
            })
            .await;
        return Err(Refused { refusal, request });
    }
    let request = match request {
        // `admin` reaches every agent: its target stays as typed (and is
        // recorded so).
        Request::Cmd(mut cmd) if !agents.is_empty() && !principal.role.can(Verb::Admin) => {
            cmd.target = format!("L@{}", agents.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>().join(","));
            Request::Cmd(cmd)
        }
        request => request,
    };
    // Operator applies and commands are audited as they start (their
    // results are in the job history); the rest when they are answered.
    match &request {
        Request::Apply(_) | Request::Cmd(_) => {
            let what = if let Request::Cmd(cmd) = &request {
                format!("cmd {}", shlex::try_join(cmd.argv.iter().map(String::as_str)).unwrap_or_default())
            } else {
                what
            };
            let sent: Vec<&str> = agents.iter().map(|(a, _)| a.as_str()).collect();
            master
                .access
                .record(Entry {
                    who: principal.who.clone(),
                    what,
                    target: request_target(&request),
                    cause: request_cause(&request),
                    result: if sent.is_empty() {
                        "ok: no agent matched".into()
                    } else {
                        format!("ok: sent to {}", sent.join(", "))
                    },
                })
                .await;
        }
        _ => {}
    }
    Ok((request, planned))
}

/// What a request acts on, for the audit log.
fn request_target(request: &Request) -> String {
    match request {
        Request::KeysAccept { target, .. }
        | Request::KeysReject { target }
        | Request::KeysDelete { target }
        | Request::KeysFacts { target, .. }
        | Request::Facts { target, .. }
        | Request::Inventory { target } => target.clone(),
        Request::Adopt { agent, path } => format!("{agent}:{path}"),
        Request::Apply(apply) => apply.target.clone(),
        Request::Cmd(cmd) => cmd.target.clone(),
        Request::Backup { to } => to.display().to_string(),
        Request::TokensCreate { name, .. } | Request::TokensRevoke { name } => name.clone(),
        Request::Events { tag } => tag.clone().unwrap_or_default(),
        Request::KeysList | Request::Agents | Request::TokensList | Request::Auth { .. } => String::new(),
    }
}

/// Why a request was made, for the audit log: the command line where the
/// request carries it.
fn request_cause(request: &Request) -> String {
    match request {
        Request::Apply(apply) => apply.command_line.clone(),
        Request::Cmd(cmd) => cmd.command_line.clone(),
        _ => "control socket".into(),
    }
}

/// Audits a change answered by `response`.
async fn record(master: &Master, principal: &Principal, what: &str, target: &str, response: &Response) {
    let result = match &response.error {
        None => "ok".to_owned(),
        Some(error) => format!("failed: {error}"),
    };
    master
        .access
        .record(Entry {
            who: principal.who.clone(),
            what: what.to_owned(),
            target: target.to_owned(),
            cause: "control socket".into(),
            result,
        })
        .await;
}

/// An agent's facts among `rows` (none known: empty).
fn facts_in(rows: &[AgentRow], agent: &str) -> Value {
    rows.iter().find(|row| row.id == agent).map_or_else(Value::map, |row| Value::from_json(&row.facts))
}

/// Writes one JSON line; an error says the command has gone away.
async fn send_line(write: &mut (impl AsyncWriteExt + Unpin), line: &impl serde::Serialize) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Every known agent, by id.
pub fn agent_rows(master: &Master) -> Vec<AgentRow> {
    let mut rows: BTreeMap<String, AgentRow> = BTreeMap::new();
    for entry in master.keys.list() {
        let row = rows.entry(entry.id.clone()).or_insert_with(|| AgentRow::unknown(&entry.id));
        // An id with two keys (an impostor pending beside the real one):
        // the accepted key speaks for it.
        if row.key != "accepted" {
            row.key = entry.status.as_str().to_owned();
        }
    }
    for session in master.sessions.list() {
        let row = rows.entry(session.agent.clone()).or_insert_with(|| AgentRow::unknown(&session.agent));
        if row.connected && !session.accepted {
            continue;
        }
        row.connected = true;
        row.address = session.address;
        row.facts = session.facts.to_json();
        row.connected_since_us =
            session.since.duration_since(UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_micros()).ok());
    }
    let ledger = master.bus.ledger();
    for (id, row) in &mut rows {
        let Some(seen) = ledger.seen(id) else { continue };
        row.version.clone_from(&seen.version);
        row.last_event_us = seen.last_event_us;
        row.last_receipt = master.jobs.receipts().last(id);
        if let Some(compliance) = &seen.compliance {
            row.compliance = compliance.clone();
        }
        if row.facts.is_null()
            && let Some(facts) = &seen.facts
        {
            row.facts = facts.clone();
        }
    }
    for (agent, depth) in master.engine.queue_depths() {
        if let Some(row) = rows.get_mut(&agent) {
            row.queued = depth;
        }
    }
    if let Some(view) = &master.cluster {
        for row in rows.values_mut() {
            (row.master, row.tree) = view.locate(&row.id, row.connected);
        }
    }
    rows.into_values().collect()
}
