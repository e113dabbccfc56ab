//! The daemon, `halite-master run`: load the tree, bind the link and the
//! publisher, serve until stopped.
//!
//! # Layout
//! - [`context`] — [`Master`], the parts every server module shares.
//! - [`link`] — the ROUTER side of the agent link, within [`limits`];
//!   [`sessions`]: which peer is which agent; [`keys`]: every agent key and
//!   its status.
//! - [`acks`] — an agent's events acknowledged once handed to the publisher
//!   and recorded as seen.
//! - [`store`] — jobs, results and keys in SQLite (`halite.db`): held
//!   through a full disk, checked at start, retained, backed up; or the
//!   records (and every agent event) in PostgreSQL, spooled locally while
//!   it is unreachable (`store/postgres.rs`, `store/spool.rs`).
//! - [`cluster`] — with PostgreSQL, the control plane between masters:
//!   shared keys (LISTEN/NOTIFY), the singletons' lease, session epochs,
//!   each master's tree version.
//! - [`bus`] — the outside publisher and the in-process tail; [`ledger`]:
//!   what the bus said about each agent.
//! - [`jobs`] — sending states to agents and waiting for results.
//! - [`reactor`] — compiling reactors, the per-agent engine, one file per
//!   action in `reactor/actions/`.
//! - [`reload`] — hot reload of the tree (a watcher and SIGHUP), and
//!   re-applying the agents an edit concerns; [`schedule`]: scheduled
//!   enforcement.
//! - [`control`] — the control socket operator commands talk to;
//!   [`apply`], [`cmd`] and [`events`] answer its streamed requests;
//!   [`facts`] answers `facts`, [`coverage`] `inventory` and `adopt`.
//!   [`routed`] runs the `apply` and `cmd` jobs other masters route here
//!   for this master's agents (`cluster/route.rs`).
//! - [`notify`] — telling systemd the master is ready (`Type=notify`).
//! - [`access`] — roles, API tokens and the principal a request runs as;
//!   [`audit`]: the hash-chained audit log. The HTTPS API that uses them
//!   lives in `crate::http`, started here when `api:` is configured.
//! - [`receipts`] — what each job changed and why (corrective or
//!   intentional), with drift→restore latency; [`compliance`]: each
//!   agent's state from what the bus said.
//! - [`inventory`] — what each agent's file beacons watch, by coverage;
//!   `adopt`'s fetch of a file.
//! - [`metrics`] — Prometheus counters (atomics the hot paths bump) and the
//!   optional `/metrics` listener.

use std::io::Write;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub mod access;
pub mod acks;
pub mod apply;
pub mod audit;
pub mod bus;
pub mod cluster;
pub mod cmd;
pub mod compliance;
pub mod context;
pub mod control;
pub mod coverage;
pub mod decode;
pub mod events;
pub mod facts;
pub mod fetch;
pub mod inventory;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod link;
pub mod log_budget;
pub mod metrics;
pub mod notify;
pub mod reactor;
pub mod receipts;
pub mod reload;
pub mod routed;
pub mod schedule;
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
            diagnostics.iter().filter(|d| d.is_error()).count(),
            config.states.display()
        );
    }
    tracing::info!(states = %config.states.display(), "Loaded {}.", tree.summary());
    // Before anything in the data dir is trusted or touched: a key, key
    // store or socket another local user planted is refused (StrictModes),
    // and a second master on it would overwrite `endpoints` and, stopping,
    // remove the first one's control socket. Held until this function
    // returns.
    let dir = config.data_dir.clone();
    let _lock = tokio::task::spawn_blocking(move || halite_fs::lock::DirLock::claim(&dir, "master")).await??;
    crate::server::reactor::actions::exec::allow_env(config.exec_env.clone());

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
    let store = open_store(&config).await?;
    let keys = crate::server::keys::KeyStore::open(&store, &config.data_dir, &config.auto_accept)
        .await?
        .with_enrolment(&config.enrolment)?;
    // With PostgreSQL, keys, session epochs, the singletons and the
    // schedule's ticks are shared with the other masters on it.
    let share = store.postgres().map(|_| tokio::sync::mpsc::channel(crate::server::keys::SHARE_QUEUE));
    let keys = match &share {
        Some((tx, _)) => keys.with_sharing(tx.clone()),
        None => keys,
    };
    let fetcher = crate::server::fetch::Fetcher::new(&config.fetch, &config.data_dir)?;
    let jobs = Jobs::new(sessions.clone(), bus.clone(), JOB_TIMEOUT).with_store(store.clone()).with_fetcher(fetcher);
    expect_unanswered(&jobs, &config).await;
    let retention = crate::server::store::Retention {
        max_age: std::time::Duration::from_secs(u64::from(config.store.retention_days) * 86_400),
        max_bytes: config.store.max_bytes,
    };
    spawn_store_upkeep(&store, &bus, retention, cancel.clone());
    let tree = Arc::new(RwLock::new(Arc::new(tree)));
    let engine = Engine::new(tree.clone(), jobs.clone(), bus.clone());
    let cluster = match (store.postgres().cloned(), share) {
        (Some(target), Some(share)) => {
            let parts =
                crate::server::cluster::Parts { keys: keys.clone(), sessions: sessions.clone(), bus: bus.clone() };
            let work = crate::server::cluster::singletons::Work {
                schedule: config.schedule.clone(),
                retention,
                pending_expire: config.enrolment.pending_expire,
            };
            let name = listen.to_string();
            store.name_master(&name);
            let tree = (config.states.clone(), tree.clone());
            Some(crate::server::cluster::start(
                target,
                name,
                &config.data_dir,
                tree,
                parts,
                share,
                work,
                cancel.clone(),
            ))
        }
        _ => None,
    };
    let fingerprint = keypair.public;
    let limits = crate::server::limits::Limits {
        max_event_bytes: config.max_event_bytes,
        handshakes_per_source: config.handshakes_per_source,
    };
    let (access_path, roles) = (store.file().to_path_buf(), config.roles.clone());
    let access =
        tokio::task::spawn_blocking(move || crate::server::access::Access::open(&access_path, &roles)).await??;
    let access = access.with_certificates(&config.access.certificates);
    // Tokens and the audit log shared by every master on the database.
    let access = match store.postgres() {
        Some(target) => access.with_postgres(target.clone(), &config.data_dir, cancel.clone()).await?,
        None => access,
    };
    let inventory = crate::server::inventory::Inventories::default();
    let cluster_view = cluster.as_ref().map(|c| c.view.clone());
    let fleet = cluster.as_ref().map(|c| c.tail.clone());
    let route = cluster.as_ref().map(|c| c.route.clone());
    let master = Arc::new(Master {
        keypair,
        keys,
        tree,
        sessions,
        jobs,
        engine,
        bus,
        limits,
        inventory,
        access,
        cluster: cluster_view,
        fleet,
        route: route.clone(),
    });
    if let Some(router) = route
        && let Some(inbox) = router.take_inbox()
    {
        tokio::spawn(crate::server::routed::serve(master.clone(), router, inbox, cancel.clone()));
    }
    let control = crate::server::control::serve(master.clone(), &config.data_dir, cancel.clone()).await?;
    // The API, the dashboard and /metrics run on a thread of their own at
    // a lower priority, so their clients never take turns with the link
    // loop (`http/runtime.rs`).
    let http_side = match config.api.is_some() || config.metrics.is_some() {
        true => Some(crate::http::runtime::HttpRuntime::start()?),
        false => None,
    };
    let api = match (&config.api, &http_side) {
        (Some(api), Some(http_side)) => {
            let (master, api, data_dir, cancel) =
                (master.clone(), api.clone(), config.data_dir.clone(), cancel.clone());
            Some(http_side.run(async move { crate::http::start(master, &api, &data_dir, cancel).await }).await?)
        }
        _ => None,
    };
    let enforce = crate::server::reload::Enforce::of(&config);
    crate::server::reload::spawn(master.clone(), config.states.clone(), enforce, cancel.clone())
        .with_context(|| format!("cannot watch the state tree {}", config.states.display()))?;
    match &cluster {
        // The singletons' leader ticks; every master applies to its agents.
        Some(cluster) => crate::server::schedule::spawn_on_ticks(
            master.clone(),
            config.schedule.clone(),
            &cluster.ticks,
            cancel.clone(),
        ),
        None => crate::server::schedule::spawn(master.clone(), config.schedule.clone(), cancel.clone()),
    }

    let mut ready = format!("ready listen={listen} publish={publish} key={fingerprint}");
    if let Some((url, _)) = &api {
        ready.push_str(&format!(" api={url}"));
        tracing::info!(api = %url, "API ready.");
    }
    if let (Some(metrics), Some(http_side)) = (&config.metrics, &http_side) {
        let store = Some(crate::server::store::path(&config.data_dir));
        let (master, listen, cancel) = (master.clone(), metrics.listen, cancel.clone());
        let bound = http_side
            .run(async move { crate::server::metrics::listener::serve(master, listen, store, cancel).await })
            .await?;
        tracing::info!(%bound, "Serving /metrics.");
        ready.push_str(&format!(" metrics={bound}"));
    }
    tokio::fs::write(config.data_dir.join("endpoints"), format!("{ready}\n"))
        .await
        .with_context(|| format!("cannot write {}", config.data_dir.join("endpoints").display()))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}").and_then(|()| stdout.flush()).context("cannot write to stdout")?;
    }
    tracing::info!(%listen, %publish, "Master ready.");
    crate::server::notify::ready();
    crate::server::link::serve(recv, monitor, master.clone(), cancel.clone()).await;
    for (agent, depth) in master.engine.queue_depths() {
        if depth > 0 {
            tracing::warn!(agent = %agent, depth, "Stopping with reactions not run; the agent's next session applies its states.");
        }
    }
    // The API's streams end with the cancel; its connections drain first.
    cancel.cancel();
    if let Some((_, task)) = api {
        let _ = task.await;
    }
    // What is left there (a stream's task, the metrics listener) stops.
    drop(http_side);
    // Our own connection to halite.db goes before the writer's, so the
    // writer's clean stop can checkpoint and remove the WAL.
    master.access.close();
    // Jobs answered before the stop are on disk before the process ends,
    // and halite.db is one self-contained file (the WAL checkpointed).
    store.close().await;
    // The control socket is gone before the lock is let go (the link may
    // also have stopped on its own: stop the rest with it).
    cancel.cancel();
    let _ = control.await;
    tracing::info!("Master stopped.");
    Ok(())
}

/// halite.db in the data dir; with `store: postgres://…`, the records go
/// to PostgreSQL (spooled in the data dir while it is unreachable) and
/// halite.db keeps the keys.
async fn open_store(config: &MasterConfig) -> anyhow::Result<crate::server::store::Store> {
    use crate::server::store::{Store, postgres::PgTarget};
    let path = crate::server::store::path(&config.data_dir);
    let spool = crate::server::store::spool::path(&config.data_dir);
    let store = config.store.clone();
    let store = tokio::task::spawn_blocking(move || match &store.url {
        Some(url) => {
            let target = PgTarget::from_config(&store, url)?;
            tracing::info!(store = %target, "Recording jobs, results and events in PostgreSQL.");
            Store::open_postgres(&path, target, &spool)
        }
        None => Store::open(&path),
    })
    .await??;
    Ok(store)
}

/// Results the master takes after a restart: jobs sent before it and not
/// answered (the agents may still hold their results).
async fn expect_unanswered(jobs: &Jobs, config: &MasterConfig) {
    let (store, data_dir) = (config.store.clone(), config.data_dir.clone());
    let rows = tokio::task::spawn_blocking(move || {
        crate::server::store::records::open(&store, &data_dir).and_then(|records| records.unanswered())
    })
    .await;
    match rows {
        Ok(Ok(rows)) => {
            for (agent, jid) in rows {
                if let Ok(job) = jid.parse() {
                    jobs.expect(&agent, job);
                }
            }
        }
        Ok(Err(error)) => tracing::warn!(%error, "Cannot read the jobs left unanswered; their results are refused."),
        Err(error) => tracing::warn!(%error, "Cannot read the jobs left unanswered; their results are refused."),
    }
}

/// The store's retention, now and every `RETENTION_INTERVAL`, and its
/// state on the bus: `halite/master/store/unwritable` once when the disk
/// refuses its writes, `halite/master/store/writable` once it takes them
/// again.
fn spawn_store_upkeep(
    store: &crate::server::store::Store,
    bus: &Bus,
    retention: crate::server::store::Retention,
    cancel: CancellationToken,
) {
    use crate::server::store::Writable;
    // With PostgreSQL: `halite/master/store/postgres/unreachable` once when
    // records start going to the spool, `…/reachable` once it is drained.
    if let (Some(mut state), Some(target)) = (store.postgres_state(), store.postgres().map(ToString::to_string)) {
        let bus = bus.clone();
        tokio::spawn(async move {
            use crate::server::store::postgres::PgState;
            // A start while PostgreSQL is down is said too.
            let mut told = PgState::Reachable;
            loop {
                let now = state.borrow_and_update().clone();
                if now != told {
                    let (tag, data) = match &now {
                        PgState::Reachable => ("store/postgres/reachable", halite_proto::Value::map()),
                        PgState::Unreachable { error } => {
                            ("store/postgres/unreachable", halite_proto::Value::map().with("error", error.as_str()))
                        }
                    };
                    let data = data.with("store", target.as_str());
                    bus.publish(halite_proto::Event::new(halite_proto::event::tag::master(tag), "", data));
                    told = now;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let mut writable = store.writable();
    let (bus, path) = (bus.clone(), store.file().display().to_string());
    tokio::spawn(async move {
        while writable.changed().await.is_ok() {
            let state = writable.borrow_and_update().clone();
            let (tag, data) = match state {
                Writable::Yes => (
                    halite_proto::event::tag::master("store/writable"),
                    halite_proto::Value::map().with("path", path.as_str()),
                ),
                Writable::No { error, held } => (
                    halite_proto::event::tag::master("store/unwritable"),
                    halite_proto::Value::map()
                        .with("path", path.as_str())
                        .with("error", error)
                        .with("held", i64::try_from(held).unwrap_or(i64::MAX)),
                ),
            };
            bus.publish(halite_proto::Event::new(tag, "", data));
        }
    });
    if store.postgres().is_some() {
        // The singletons' leader applies it (`cluster/singletons.rs`).
        return;
    }
    let store = store.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(crate::server::store::RETENTION_INTERVAL);
        loop {
            tokio::select! {
                _ = every.tick() => store.retain(retention),
                () = cancel.cancelled() => return,
            }
        }
    });
}
