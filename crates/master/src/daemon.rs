//! `halite-master run`: load the tree, bind the link and the publisher,
//! serve until stopped.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::config::MasterConfig;
use crate::jobs::Jobs;
use crate::reactor::Engine;
use crate::reactor::engine::JOB_TIMEOUT;
use crate::sessions::Sessions;
use crate::tree::Tree;

/// The running master's shared parts.
#[derive(Debug)]
pub struct Master {
    pub tree: Arc<RwLock<Arc<Tree>>>,
    pub sessions: Sessions,
    pub jobs: Jobs,
    pub engine: Engine,
    pub bus: Bus,
}

impl Master {
    pub fn tree(&self) -> Arc<Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

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

    let (bus, publish) = Bus::bind(&config.publish).await?;
    let (mut router, listen) = crate::link::bind(&config.listen).await?;
    let monitor = crate::link::monitor(&mut router);
    let (send, recv) = router.split();
    let sessions = Sessions::new(send);
    let jobs = Jobs::new(sessions.clone(), bus.clone(), JOB_TIMEOUT);
    let tree = Arc::new(RwLock::new(Arc::new(tree)));
    let engine = Engine::new(tree.clone(), jobs.clone(), bus.clone());
    let master = Arc::new(Master { tree, sessions, jobs, engine, bus });

    let ready = format!("ready listen={listen} publish={publish}");
    std::fs::write(config.data_dir.join("endpoints"), format!("{ready}\n"))
        .with_context(|| format!("cannot write {}", config.data_dir.join("endpoints").display()))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}").and_then(|()| stdout.flush()).context("cannot write to stdout")?;
    }
    tracing::info!(%listen, %publish, "Master ready.");
    crate::link::serve(recv, monitor, master, cancel).await;
    tracing::info!("Master stopped.");
    Ok(())
}
