//! `halite-agent run`: the link, the beacons and the job runner, wired.
//!
//! Start: the outbox is opened (what an earlier run left is sent first),
//! then the start-up check compares every managed file with its desired
//! state and reports drift (`halite/agent/<id>/drift`) through the outbox.
//! With `enforce_offline` on, the agent restores kept files itself
//! ([`offline`]) at start, when a session is lost, and on a managed file's
//! drift event while no master has welcomed it.
//! Stop (SIGTERM): beacons stop, the job runner finishes what it has (its
//! results go to the outbox), the outbox is flushed to the master while
//! it is connected, and the socket is closed, all within [`SHUTDOWN_GRACE`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use halite_proto::{AgentMessage, Event, Hello, MasterMessage, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::beacons::{self, Beacons};
use crate::config::AgentConfig;
use crate::link::{self, LinkEvent, LinkSettings};
use crate::managed::ManagedFiles;
use crate::offline::{self, OfflineStore};
use crate::outbox::{self, Outbox};
use crate::{facts, jobs};

/// Beacon events waiting for the link. When full, beacons wait.
pub const EVENT_QUEUE: usize = 1024;
/// How long a stopping agent gives its job runner and the outbox flush.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(config: AgentConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let id = config.agent_id();
    // Before its key, pin and outbox are trusted or touched; held until this
    // function returns.
    let dir = config.data_dir.clone();
    let _lock = tokio::task::spawn_blocking(move || halite_fs::lock::DirLock::claim(&dir, "agent")).await??;
    let (keypair, created) = halite_link::Keypair::load_or_create(&config.key_path())?;
    if created {
        tracing::info!(fingerprint = %keypair.public, "Made this agent's key; an operator accepts it on the master.");
    }
    let managed = ManagedFiles::open(&config.data_dir.join("managed.json"));
    let receipts = outbox::Receipts::default();
    let outbox = Outbox::open(&config.data_dir.join("outbox"), &id, outbox::CAPACITY)?
        .with_fsync(config.outbox_fsync)
        .with_receipts(receipts.clone());
    let offline = match config.enforce_offline {
        true => Some(OfflineStore::open(&config.data_dir.join("offline"))?),
        false => None,
    };
    let mut facts = facts::gather(&id);
    if !config.grains.is_empty() {
        let grains = config
            .grains
            .iter()
            .fold(halite_proto::Value::map(), |map, (k, v)| map.with(k, halite_proto::Value::from_json(v)));
        facts = facts.with("grains", grains);
    }
    if let Some(path) = &config.enrol_token_file {
        let text = tokio::fs::read_to_string(path)
            .await
            .with_context(|| format!("cannot read the enrolment token {} (`enrol_token_file`)", path.display()))?;
        facts = facts.with(halite_proto::message::ENROL_TOKEN_FACT, text.lines().next().unwrap_or("").trim());
    }
    let hello = Hello { agent: id.clone(), version: env!("CARGO_PKG_VERSION").into(), facts };
    let settings = LinkSettings {
        return_probe: config.return_probe(),
        ..LinkSettings::with_masters(config.master_links(), hello, keypair.clone())
    };
    let stop_link = CancellationToken::new();
    let link = link::spawn(settings, outbox, stop_link.clone());
    let (outbound, mut link_events, mut status) = (link.outbound, link.events, link.status);
    let apply_env = halite_state::ApplyEnv {
        backup_dir: Some(config.data_dir.join("backup")),
        backup_max_bytes: config.backup_max_bytes,
        ..halite_state::ApplyEnv::default()
    };
    let healing = Healing { root: config.root.clone(), apply: apply_env.clone() };
    let job_queue = jobs::spawn(managed.clone(), config.root.clone(), apply_env, outbound.clone());
    let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
    let local_beacons =
        config.local_beacons().map_err(|(beacon, message, _)| anyhow::anyhow!("local beacon `{beacon}`: {message}"))?;
    let mut beacons = Beacons::new(beacons::Context {
        name: String::new(),
        agent: id.clone(),
        events: events_tx,
        managed: managed.clone(),
        root: config.root.clone(),
        receipts,
    });
    tracing::info!(agent = %id, masters = %config.master_addresses(), offline_healing = config.enforce_offline, "Agent starting.");
    if let Some(drift) = start_up_check(&id, &managed, &config.root).await
        && outbound.send(AgentMessage::Event(drift)).await.is_err()
    {
        anyhow::bail!("the link stopped before the agent started");
    }
    // The master is not reached yet, and beacons start only when it is:
    // heal what drifted while the agent was down now.
    if let Some(store) = &offline {
        for healed in heal_drifted(&id, store, &managed, &healing).await {
            if outbound.send(AgentMessage::Event(healed)).await.is_err() {
                anyhow::bail!("the link stopped before the agent started");
            }
        }
    }
    let mut announced = false;
    // The beacon set in force, for the inventory (`inventory.rs`).
    let mut current: Vec<halite_proto::BeaconSpec> = Vec::new();
    // Welcomed by the master in the current session: offline healing waits
    // for this to be false.
    let mut online = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            event = link_events.recv() => match event {
                None => break,
                Some(LinkEvent::Up) => {
                    if !announced {
                        announced = true;
                        let mut stdout = std::io::stdout().lock();
                        writeln!(stdout, "ready id={id}").and_then(|()| stdout.flush()).context("cannot write to stdout")?;
                    }
                }
                Some(LinkEvent::Down(_)) => {
                    online = false;
                    // Drift that came just before the loss was sent, not
                    // healed: look at every kept file once.
                    if let Some(store) = &offline {
                        for healed in heal_drifted(&id, store, &managed, &healing).await {
                            if outbound.send(AgentMessage::Event(healed)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                Some(LinkEvent::Message(MasterMessage::Welcome(welcome))) => {
                    tracing::info!(beacons = welcome.beacons.len(), "The master accepted this agent.");
                    online = true;
                    current = beacons::merge(&welcome.beacons, &local_beacons);
                    beacons = replace_beacons(beacons, current.clone()).await?;
                    send_inventory(&outbound, &current, &config.root, None).await;
                }
                Some(LinkEvent::Message(MasterMessage::NotAccepted { status })) if status == "replaced" => {
                    tracing::error!(agent = %id, fingerprint = %keypair.public, "The master accepted another key for this agent id and retired this one; the session is cut and nothing this agent sends is taken. If this is the real `{id}`, an operator must accept this key again (`halite-master keys accept {}`) and reject the other.", keypair.public);
                    online = false;
                    current.clear();
                    beacons = replace_beacons(beacons, Vec::new()).await?;
                }
                Some(LinkEvent::Message(MasterMessage::NotAccepted { status })) => {
                    tracing::warn!(%status, fingerprint = %keypair.public, "This agent's key is not accepted on the master; waiting for an operator (`halite-master keys accept {id}`).");
                    online = false;
                    current.clear();
                    beacons = replace_beacons(beacons, Vec::new()).await?;
                }
                Some(LinkEvent::Message(MasterMessage::Job(job))) => {
                    tracing::info!(job = %job.id, states = job.states.len(), test = job.test, "Job received.");
                    halite_fs::hops::mark("agent.job.loop", job.id.0);
                    if let Some(store) = &offline {
                        let (store, job, root) = (store.clone(), job.clone(), config.root.clone());
                        match tokio::task::spawn_blocking(move || store.record(&job, &root)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => tracing::warn!(%error, "Cannot keep desired contents for offline healing."),
                            Err(error) => tracing::warn!(%error, "Keeping desired contents failed."),
                        }
                    }
                    if job_queue.send(job).await.is_err() {
                        break;
                    }
                }
                Some(LinkEvent::Message(MasterMessage::Secrets(values))) => {
                    // Before the job that may hold them (secrets.rs).
                    if crate::secrets::learn(&values) && let Some(store) = &offline {
                        let store = store.clone();
                        match tokio::task::spawn_blocking(move || store.keep_secrets()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => tracing::warn!(%error, "Cannot keep the secret values for offline healing."),
                            Err(error) => tracing::warn!(%error, "Keeping the secret values failed."),
                        }
                    }
                }
                Some(LinkEvent::Message(MasterMessage::Beacons(specs))) => {
                    tracing::info!(beacons = specs.len(), "The master sent a new beacon set.");
                    let merged = beacons::merge(&specs, &local_beacons);
                    beacons = replace_beacons(beacons, merged.clone()).await?;
                    send_inventory(&outbound, &merged, &config.root, None).await;
                    current = merged;
                }
                Some(LinkEvent::Message(MasterMessage::Inventory { content_of })) => {
                    send_inventory(&outbound, &current, &config.root, content_of).await;
                }
                Some(LinkEvent::Message(other)) => tracing::debug!(ignored = ?other, "Ignoring a message from the master."),
            },
            Some(event) = events.recv() => {
                halite_fs::hops::mark("agent.loop", event.id.0);
                let heal = match (&offline, online) {
                    (Some(store), false) => drifted_path(&event, &config.root).map(|p| (store.clone(), p)),
                    _ => None,
                };
                if outbound.send(AgentMessage::Event(event)).await.is_err() {
                    break;
                }
                if let Some((store, path)) = heal
                    && let Some(healed) = heal_offline(&id, store, path, &managed, &healing).await
                    && outbound.send(AgentMessage::Event(healed)).await.is_err()
                {
                    break;
                }
            }
        }
    }
    tracing::info!(agent = %id, "Agent stopping: finishing jobs and flushing the outbox.");
    drop(beacons);
    // Events the beacons raised before they stopped still go out.
    while let Ok(event) = events.try_recv() {
        let _ = outbound.try_send(AgentMessage::Event(event));
    }
    // The job runner ends after the jobs it holds; its results close the
    // outbound channel behind them, which the outbox writer reports.
    drop(job_queue);
    drop(outbound);
    let flushed = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let drained = status.wait_for(|s| s.writer_done && (s.pending == 0 || !s.connected));
        tokio::pin!(drained);
        loop {
            tokio::select! {
                _ = &mut drained => return,
                // The link must not wait on us while it flushes.
                Some(event) = link_events.recv() => {
                    if let LinkEvent::Message(MasterMessage::Job(job)) = event {
                        tracing::warn!(job = %job.id, "A job arrived while stopping; it is not run (the master reports it unanswered).");
                    }
                }
            }
        }
    })
    .await;
    let left = *status.borrow();
    match flushed {
        Ok(_) if left.pending == 0 => tracing::info!("Outbox flushed."),
        Ok(_) => tracing::info!(
            pending = left.pending,
            "The master is away; the outbox keeps what is pending for the next start."
        ),
        Err(_) => {
            tracing::warn!(pending = left.pending, jobs_done = left.writer_done, grace = ?SHUTDOWN_GRACE, "Grace period over; stopping with messages pending (they are sent at the next start).")
        }
    }
    stop_link.cancel();
    let _ = link.task.await;
    tracing::info!(agent = %id, "Agent stopped.");
    Ok(())
}

/// Sends what the beacons of `specs` watch (`inventory.rs`), listed off the
/// runtime threads, through the outbox.
async fn send_inventory(
    outbound: &mpsc::Sender<AgentMessage>,
    specs: &[halite_proto::BeaconSpec],
    root: &Path,
    content_of: Option<String>,
) {
    let (specs, root) = (specs.to_vec(), root.to_path_buf());
    match tokio::task::spawn_blocking(move || crate::inventory::collect(&specs, &root, content_of.as_deref())).await {
        Ok(inventory) => {
            let _ = outbound.send(AgentMessage::Inventory(inventory)).await;
        }
        Err(error) => tracing::warn!(%error, "Listing what the beacons watch failed."),
    }
}

/// Replaces the beacon set off the runtime threads (a file beacon's first
/// look hashes files), and before the next message from the master is
/// handled: what a job does after a new set is seen by it.
async fn replace_beacons(mut beacons: Beacons, specs: Vec<halite_proto::BeaconSpec>) -> anyhow::Result<Beacons> {
    tokio::task::spawn_blocking(move || {
        beacons.replace(&specs);
        beacons
    })
    .await
    .context("the beacon set could not be replaced")
}

/// The start-up check: a `halite/agent/<id>/drift` event naming every
/// managed file that is not as desired, or `None` when all are. First,
/// the temporary files of restores a kill interrupted are removed from
/// beside every managed file (nothing writes yet, so none is in flight).
async fn start_up_check(id: &str, managed: &ManagedFiles, root: &Path) -> Option<Event> {
    let managed = managed.clone();
    let drifted = tokio::task::spawn_blocking(move || {
        for path in managed.paths() {
            if let Ok(removed @ 1..) = halite_fs::remove_stale_temps(&path) {
                tracing::info!(path = %path.display(), removed, "Removed the temporary files of interrupted restores.");
            }
        }
        managed.drifted()
    })
    .await
    .unwrap_or_default();
    if drifted.is_empty() {
        return None;
    }
    for (path, why) in &drifted {
        tracing::warn!(path = %path.display(), drift = why, "A managed file drifted while the agent was not running.");
    }
    let files: Vec<Value> =
        drifted.iter().map(|(path, why)| Value::map().with("path", authored(root, path)).with("drift", *why)).collect();
    Some(Event::new(format!("halite/agent/{id}/drift"), id, Value::map().with("files", Value::List(files))))
}

/// Heals every kept file that is not as desired.
async fn heal_drifted(id: &str, store: &OfflineStore, managed: &ManagedFiles, env: &Healing) -> Vec<Event> {
    let (kept, record) = (store.paths(), managed.clone());
    let drifted = tokio::task::spawn_blocking(move || {
        let drifted: std::collections::HashSet<PathBuf> = record.drifted().into_iter().map(|(p, _)| p).collect();
        kept.into_iter().filter(|p| drifted.contains(p)).collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut healed = Vec::new();
    for path in drifted {
        healed.extend(heal_offline(id, store.clone(), path, managed, env).await);
    }
    healed
}

/// What a local restore needs besides the store: the agent's root (to name
/// paths as the tree does) and the job runner's apply environment.
struct Healing {
    root: PathBuf,
    apply: halite_state::ApplyEnv,
}

/// A real path as the state tree names it (without the agent's root), as
/// beacon events report it.
fn authored(root: &Path, real: &Path) -> String {
    match real.strip_prefix(root) {
        Ok(relative) if root != Path::new("/") => Path::new("/").join(relative).display().to_string(),
        _ => real.display().to_string(),
    }
}

/// The real path of a managed file a beacon event reports as drifted.
fn drifted_path(event: &Event, root: &Path) -> Option<PathBuf> {
    if event.data.get("managed") != Some(&Value::Bool(true)) {
        return None;
    }
    let authored = event.data.get("path")?.as_str()?;
    Some(crate::rooted(root, Path::new(authored)))
}

/// Restores `path` locally; the `halite/agent/<id>/healed` event to send
/// when it did.
async fn heal_offline(
    id: &str,
    store: OfflineStore,
    path: PathBuf,
    managed: &ManagedFiles,
    env: &Healing,
) -> Option<Event> {
    let (managed, apply_env, target) = (managed.clone(), env.apply.clone(), path.clone());
    let outcome = tokio::task::spawn_blocking(move || store.heal(&target, &managed, &apply_env)).await;
    let healed: offline::Healed = match outcome {
        Ok(Ok(Some(healed))) => healed,
        Ok(Ok(None)) => return None,
        Ok(Err(error)) => {
            // A failed restore's text may quote the content (secrets.rs).
            let error = crate::secrets::redact(&error.to_string());
            tracing::warn!(path = %path.display(), %error, "Cannot heal a managed file offline.");
            return None;
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "Offline healing failed.");
            return None;
        }
    };
    let state = crate::secrets::redact(&healed.state);
    tracing::info!(path = %healed.path.display(), %state, "Restored a managed file while the master is away.");
    let changes: Vec<Value> = healed.changes.iter().map(|c| Value::from(crate::secrets::redact(c))).collect();
    Some(Event::new(
        format!("halite/agent/{id}/healed"),
        id,
        Value::map()
            .with("path", authored(&env.root, &healed.path))
            .with("state", state)
            .with("sha256", healed.sha256.to_hex())
            .with("changes", Value::List(changes))
            .with("time_us", halite_proto::event::now_us()),
    ))
}
