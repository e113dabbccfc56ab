//! The daemon, `halite-master run`: load the tree, bind the link and the
//! publisher, serve until stopped.
//!
//! # Layout
//! - [`context`] — [`Master`], the parts every server module shares.
//! - [`link`] — the ROUTER side of the agent link, within [`limits`];
//!   [`sessions`]: which peer is which agent; [`keys`]: every agent key and
//!   its status.
//! - [`store`] — jobs, results and keys in SQLite (`halite.db`).
//! - [`bus`] — the outside publisher and the in-process tail; [`ledger`]:
//!   what the bus said about each agent.
//! - [`jobs`] — sending states to agents and waiting for results.
//! - [`reactor`] — compiling reactors, the per-agent engine, one file per
//!   action in `reactor/actions/`.
//! - [`reload`] — hot reload of the tree (a watcher and SIGHUP).
//! - [`control`] — the control socket operator commands talk to;
//!   [`apply`] and [`events`] answer its streamed requests.
//! - [`notify`] — telling systemd the master is ready (`Type=notify`).

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub mod apply;
pub mod bus;
pub mod context;
pub mod control;
pub mod events;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod link;
pub mod notify;
pub mod reactor;
pub mod reload;
pub mod sessions;
pub mod store;

pub use context::Master;

use crate::config::MasterConfig;
use crate::server::bus::Bus;
use crate::server::jobs::Jobs;
use crate::server::reactor::engine::Engine;
use crate::server::reactor::engine::JOB_TIMEOUT;
use crate::server::sessions::Sessions;
use crate::tree::Tree;

pub async fn run(config: MasterConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let (tree, diagnostics) = Tree::load(&config.states);
    if diagnostics.iter().any(|d| d.is_error()) {
        for diagnostic in &diagnostics {
            eprintln!("{diagnostic}");
        }
        anyhow::bail!(
            "the state tree {} has {} errors; fix them (`halite-master check --states {}` lists them) and start again",
            config.states.display(),
            diagnostics.len(),
            config.states.display()
        );
    }
    tracing::info!(states = %config.states.display(), "Loaded {}.", tree.summary());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;

    let (keypair, created) = halite_link::Keypair::load_or_create(&config.data_dir.join("master.key"))?;
    if created {
        tracing::info!(fingerprint = %keypair.public, "Made the master's key; agents pin it as `master_key`.");
    }
    // One descriptor per agent: the soft limit (often 1024) would cap the
    // fleet long before the hard one (the packaged unit sets 65536).
    match halite_link::transport::raise_open_files() {
        Ok(limit) => tracing::info!(limit, "Open-file limit raised to the hard limit."),
        Err(error) => tracing::warn!(%error, "Cannot raise the open-file limit; connections beyond it are refused."),
    }
    let (bus, publish) = Bus::bind(&config.publish_endpoint(), config.handshake_timeout).await?;
    let (mut router, listen) = crate::server::link::bind(&config.listen, config.handshake_timeout).await?;
    let monitor = crate::server::link::monitor(&mut router);
    let (send, recv) = router.split();
    let sessions = Sessions::new(send);
    let seen_ids = config.data_dir.join("seen-ids");
    let remembered = sessions
        .remember_in(&seen_ids)
        .with_context(|| format!("cannot keep the ids seen in {}", seen_ids.display()))?;
    tracing::debug!(remembered, "Loaded the ids seen from agents.");
    let store_path = crate::server::store::path(&config.data_dir);
    let store = tokio::task::spawn_blocking(move || crate::server::store::Store::open(&store_path)).await??;
    let keys = crate::server::keys::KeyStore::open(&store, &config.data_dir, &config.auto_accept).await?;
    let jobs = Jobs::new(sessions.clone(), bus.clone(), JOB_TIMEOUT).with_store(store.clone());
    let tree = Arc::new(RwLock::new(Arc::new(tree)));
    let engine = Engine::new(tree.clone(), jobs.clone(), bus.clone());
    let fingerprint = keypair.public;
    let limits = crate::server::limits::Limits {
        max_event_bytes: config.max_event_bytes,
        handshakes_per_source: config.handshakes_per_source,
    };
    let master = Arc::new(Master { keypair, keys, tree, sessions, jobs, engine, bus, limits });
    crate::server::control::serve(master.clone(), &config.data_dir, cancel.clone()).await?;
    crate::server::reload::spawn(master.clone(), config.states.clone(), cancel.clone())
        .with_context(|| format!("cannot watch the state tree {}", config.states.display()))?;

    let ready = format!("ready listen={listen} publish={publish} key={fingerprint}");
    std::fs::write(config.data_dir.join("endpoints"), format!("{ready}\n"))
        .with_context(|| format!("cannot write {}", config.data_dir.join("endpoints").display()))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}").and_then(|()| stdout.flush()).context("cannot write to stdout")?;
    }
    tracing::info!(%listen, %publish, "Master ready.");
    crate::server::notify::ready();
    crate::server::link::serve(recv, monitor, master.clone(), cancel).await;
    for (agent, depth) in master.engine.queue_depths() {
        if depth > 0 {
            tracing::warn!(agent = %agent, depth, "Stopping with reactions not run; the agent's next session applies its states.");
        }
    }
    // Jobs answered before the stop are on disk before the process ends.
    store.flush().await;
    tracing::info!("Master stopped.");
    Ok(())
}
