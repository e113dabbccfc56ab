//! `halite-agent run`: the link, the beacons and the job runner, wired.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;

use anyhow::Context as _;
use halite_proto::{AgentMessage, Event, Hello, MasterMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::beacons::{self, Beacons};
use crate::config::AgentConfig;
use crate::link::{self, LinkEvent, LinkSettings};
use crate::managed::ManagedFiles;
use crate::{facts, jobs};

/// Beacon events waiting for the link. When full, beacons wait.
pub const EVENT_QUEUE: usize = 1024;

pub async fn run(config: AgentConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let id = config.agent_id();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    let (keypair, created) = halite_link::Keypair::load_or_create(&config.key_path())?;
    if created {
        tracing::info!(fingerprint = %keypair.public, "Made this agent's key; an operator accepts it on the master.");
    }
    let managed = ManagedFiles::open(&config.data_dir.join("managed.json"));
    let hello = Hello { agent: id.clone(), version: env!("CARGO_PKG_VERSION").into(), facts: facts::gather(&id) };
    let settings = LinkSettings::new(config.master.clone(), hello, keypair.clone(), config.trust());
    let (outbound, mut link_events, link_task) = link::spawn(settings, cancel.clone());
    let apply_env = halite_state::ApplyEnv {
        backup_dir: Some(config.data_dir.join("backup")),
        ..halite_state::ApplyEnv::default()
    };
    let job_queue = jobs::spawn(managed.clone(), config.root.clone(), apply_env, outbound.clone());
    let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
    let local_beacons =
        config.local_beacons().map_err(|(beacon, message, _)| anyhow::anyhow!("local beacon `{beacon}`: {message}"))?;
    let mut beacons = Beacons::new(beacons::Context {
        name: String::new(),
        agent: id.clone(),
        events: events_tx,
        managed,
        root: config.root.clone(),
    });
    tracing::info!(agent = %id, master = %config.master, "Agent starting.");
    let mut announced = false;
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
                Some(LinkEvent::Down(_)) => {}
                Some(LinkEvent::Message(MasterMessage::Welcome(welcome))) => {
                    tracing::info!(beacons = welcome.beacons.len(), "The master accepted this agent.");
                    beacons = replace_beacons(beacons, beacons::merge(&welcome.beacons, &local_beacons)).await?;
                }
                Some(LinkEvent::Message(MasterMessage::NotAccepted { status })) => {
                    tracing::warn!(%status, fingerprint = %keypair.public, "This agent's key is not accepted on the master; waiting for an operator (`halite-master keys accept {id}`).");
                    beacons = replace_beacons(beacons, Vec::new()).await?;
                }
                Some(LinkEvent::Message(MasterMessage::Job(job))) => {
                    tracing::info!(job = %job.id, states = job.states.len(), test = job.test, "Job received.");
                    if job_queue.send(job).await.is_err() {
                        break;
                    }
                }
                Some(LinkEvent::Message(MasterMessage::Beacons(specs))) => {
                    tracing::info!(beacons = specs.len(), "The master sent a new beacon set.");
                    beacons = replace_beacons(beacons, beacons::merge(&specs, &local_beacons)).await?;
                }
                Some(LinkEvent::Message(other)) => tracing::debug!(message = ?other, "Ignoring a message."),
            },
            Some(event) = events.recv() => {
                if outbound.send(AgentMessage::Event(event)).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(beacons);
    cancel.cancel();
    let _ = link_task.await;
    tracing::info!(agent = %id, "Agent stopped.");
    Ok(())
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
