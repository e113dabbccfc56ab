//! Hot reload: the master watches its state tree and loads it again when it
//! changes (or on SIGHUP).
//!
//! Changes are debounced ([`QUIET`] without a change), so an editor's
//! save (write a temporary file, rename it over the old one) or a
//! `git pull` of many files is one reload. The tree loads off the runtime
//! threads. A tree without errors replaces the live one: each connected,
//! accepted agent whose beacon set changed is sent its new set (agents
//! keep their unchanged beacons running), reactions that start from then
//! on use the new reactors, and `halite/master/tree/reloaded` is
//! published. A tree with errors changes nothing: every diagnostic is
//! logged and `halite/master/tree/failed` carries them (file, line,
//! column, message, help), while the last good tree stays live.
//!
//! Edits reach the agents: after a good reload the master renders each
//! connected, accepted agent's highstate with the old tree and the new one;
//! where they differ the agent is `stale` (`halite/agent/<id>/stale`, shown
//! by `halite-master agents`) until a job returns for it, and, unless
//! `enforce_on_reload: false`, it is re-applied: its highstate from the live
//! tree, recorded with cause `reload`, at most `reload_rate` agents a second
//! across the fleet ([`Enforcer`]). An agent stale from an earlier reload
//! and not yet re-applied stays queued; one that went away meanwhile is
//! skipped (its next session's start-up apply uses the live tree).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use halite_proto::event::tag;
use halite_proto::{Event, Id, Job, MasterMessage, StateCall, Value};
use halite_state::RenderContext;
use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::server::context::Master;
use crate::server::jobs::Origin;
use crate::tree::Tree;

/// How long the tree must stay unchanged before it is loaded.
pub const QUIET: Duration = Duration::from_millis(200);

/// What a reload does for the agents whose rendered states it changed
/// (master.yaml's `enforce_on_reload` and `reload_rate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Enforce {
    /// Re-apply them; when false they stay `stale` until a job returns.
    pub enabled: bool,
    /// At most this many re-applies start a second, across the fleet.
    pub per_second: u32,
}

impl Enforce {
    pub fn of(config: &crate::config::MasterConfig) -> Enforce {
        Enforce { enabled: config.enforce_on_reload, per_second: config.reload_rate }
    }
}

/// The agents waiting to be re-applied after reloads, and the task that
/// re-applies them at a bounded rate. The set holds each agent once, so it
/// is bounded by the fleet; a reload adds to it while the task drains it.
#[derive(Debug, Default)]
struct Enforcer {
    waiting: Mutex<BTreeSet<String>>,
    /// One stored permit: agents added while the task works are taken in
    /// the same pass or the next.
    wake: Notify,
}

impl Enforcer {
    fn add(&self, agents: Vec<String>) {
        if agents.is_empty() {
            return;
        }
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).extend(agents);
        self.wake.notify_one();
    }

    fn next(&self) -> Option<String> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).pop_first()
    }

    /// Re-applies waiting agents, one start per `1 / per_second`, until
    /// `cancel` fires.
    async fn run(self: Arc<Self>, master: Arc<Master>, per_second: u32, cancel: CancellationToken) {
        let mut pace = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.wake.notified() => {}
            }
            while let Some(agent) = self.next() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = pace.tick() => {}
                }
                let master = master.clone();
                tokio::spawn(async move { reapply(&master, &agent).await });
            }
        }
    }
}

/// Applies `agent`'s highstate from the live tree, recorded with cause
/// `reload`.
async fn reapply(master: &Master, agent: &str) {
    if !master.sessions.accepted_agents().iter().any(|a| a == agent) {
        tracing::debug!(agent, "Gone before its re-apply; its next session applies the live tree.");
        return;
    }
    let facts = master.sessions.facts(agent);
    let calls = match rendered(&master.tree(), agent, &facts) {
        Ok(calls) => calls,
        Err(diagnostics) => {
            tracing::error!(agent, error = %diagnostics.join("; "), "The reloaded tree does not render for this agent; it stays stale.");
            return;
        }
    };
    let job = Job { id: Id::new(), cause_event: None, test: false, states: calls };
    let origin = Origin { cause: "reload".into(), reactor: None, target: agent.to_owned() };
    match master.jobs.run_with(agent, job, origin, master.jobs.timeout()).await {
        Ok(result) => {
            let failed = result.results.iter().filter(|r| r.outcome.is_failed()).count();
            tracing::info!(agent, job = %result.job, failed, "Re-applied after a reload.");
        }
        Err(error) => tracing::warn!(agent, %error, "Re-applying after a reload got no answer."),
    }
}

/// The states the tree renders for an agent's highstate (top.yaml), or
/// why they do not render.
fn rendered(tree: &Tree, agent: &str, facts: &Value) -> Result<Vec<StateCall>, Vec<String>> {
    let names = tree.states.states_for(agent, facts);
    tree.states
        .calls_for(&names, &RenderContext::new(agent, facts))
        .map_err(|diagnostics| diagnostics.iter().map(ToString::to_string).collect())
}

/// The agents whose highstate renders differently with `new` than with
/// `old` (including where one of them fails to render).
fn changed_agents(old: &Tree, new: &Tree, agents: &[(String, Value)]) -> Vec<String> {
    agents
        .iter()
        .filter(|(agent, facts)| rendered(old, agent, facts) != rendered(new, agent, facts))
        .map(|(agent, _)| agent.clone())
        .collect()
}

/// Starts watching `states`; reloads into `master` until `cancel` fires.
pub fn spawn(master: Arc<Master>, states: PathBuf, enforce: Enforce, cancel: CancellationToken) -> anyhow::Result<()> {
    let enforcer = Arc::new(Enforcer::default());
    if enforce.enabled {
        tokio::spawn(enforcer.clone().run(master.clone(), enforce.per_second, cancel.clone()));
    }
    // One stored permit, not a queue: any number of changes before the
    // reload task wakes are one reload.
    let changed = Arc::new(Notify::new());
    let signal = changed.clone();
    let root = states.clone();
    let on_event = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if !relevant(&root, &event) => {}
        // An error (e.g. a queue overflow) may hide a change: reload.
        _ => signal.notify_one(),
    };
    // Only changes: the master reading its own tree to compile it must not
    // wake the watcher once per file opened.
    let changes = notify::Config::default().with_event_kinds(notify::event::EventKindMask::CORE);
    let mut watcher = notify::RecommendedWatcher::new(on_event, changes)?;
    let mut watched = arm(&mut watcher, &states, None);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = changed.notified() => tracing::debug!("The state tree changed."),
                Some(()) = hangup.recv() => tracing::info!("SIGHUP: reloading the state tree."),
            }
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(QUIET) => break,
                    () = changed.notified() => {}
                }
            }
            let stale = reload(&master, &states).await;
            if enforce.enabled {
                enforcer.add(stale);
            }
            // The tree's directory itself may have been replaced.
            watched = arm(&mut watcher, &states, watched);
        }
    });
    Ok(())
}

/// Watches the tree's directory (again, if it is a new one); returns the
/// inode watched.
fn arm(watcher: &mut notify::RecommendedWatcher, states: &Path, watched: Option<u64>) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(states).ok().map(|m| m.ino());
    if inode == watched {
        return watched;
    }
    let _ = watcher.unwatch(states);
    match watcher.watch(states, RecursiveMode::Recursive) {
        Ok(()) => inode,
        Err(error) => {
            tracing::warn!(path = %states.display(), %error, "Cannot watch the state tree; reload with SIGHUP.");
            None
        }
    }
}

/// Whether a notification may change the tree: not a read (loading the
/// tree reads every file), not a hidden file (an editor's swap file, .git).
fn relevant(root: &Path, event: &notify::Event) -> bool {
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|path| {
        let relative = path.strip_prefix(root).unwrap_or(path);
        !relative.iter().any(|name| name.to_string_lossy().starts_with('.'))
    })
}

/// Loads the tree and, if it has no errors, makes it the live one; returns
/// the agents it made stale (announced on the bus).
pub async fn reload(master: &Master, states: &Path) -> Vec<String> {
    let root = states.to_path_buf();
    let (tree, diagnostics) = match tokio::task::spawn_blocking(move || Tree::load(&root)).await {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::error!(%error, "Loading the state tree failed.");
            return Vec::new();
        }
    };
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        for d in &diagnostics {
            tracing::error!(
                path = %d.file.display(), line = d.line, column = d.column, error = %d.message,
                help = d.help.as_deref().unwrap_or(""),
                "The edited state tree has a problem; the last good tree stays live."
            );
        }
        let list: Vec<Value> = diagnostics
            .iter()
            .map(|d| {
                let entry = Value::map()
                    .with("file", d.file.display().to_string())
                    .with("line", i64::try_from(d.line).unwrap_or(i64::MAX))
                    .with("column", i64::try_from(d.column).unwrap_or(i64::MAX))
                    .with("message", d.message.as_str());
                match &d.help {
                    Some(help) => entry.with("help", help.as_str()),
                    None => entry,
                }
            })
            .collect();
        let data = Value::map()
            .with("states", states.display().to_string())
            .with("errors", i64::try_from(errors).unwrap_or(i64::MAX))
            .with("diagnostics", Value::List(list));
        master.bus.publish(Event::new(tag::master("tree/failed"), "", data));
        return Vec::new();
    }
    for d in &diagnostics {
        tracing::warn!(path = %d.file.display(), line = d.line, error = %d.message, "State tree warning.");
    }
    let summary = tree.summary();
    let new = Arc::new(tree);
    let old = std::mem::replace(&mut *master.tree.write().unwrap_or_else(|p| p.into_inner()), new.clone());
    let mut updated = 0_i64;
    // Agents welcomed from here on get the new tree; those before, an update.
    for agent in master.sessions.accepted_agents() {
        let facts = master.sessions.facts(&agent);
        let beacons = new.beacons_for(&agent, &facts);
        if beacons == old.beacons_for(&agent, &facts) {
            continue;
        }
        match master.sessions.send(&agent, &MasterMessage::Beacons(beacons)).await {
            Ok(()) => updated += 1,
            Err(error) => tracing::warn!(agent = %agent, %error, "Cannot send the new beacon set."),
        }
    }
    // Rendering a fleet's states twice is CPU work: off the runtime threads.
    let agents = master.sessions.accepted_with_facts();
    let (before, after) = (old.clone(), new.clone());
    let stale =
        tokio::task::spawn_blocking(move || changed_agents(&before, &after, &agents)).await.unwrap_or_else(|error| {
            tracing::error!(%error, "Comparing the agents' states after the reload failed.");
            Vec::new()
        });
    for agent in &stale {
        master.bus.publish(Event::new(
            tag::agent(agent, "stale"),
            agent.as_str(),
            Value::map().with("reason", "the reloaded tree renders other states for this agent"),
        ));
    }
    tracing::info!(states = %states.display(), agents = updated, stale = stale.len(), "Reloaded the state tree: {summary}.");
    let data = Value::map()
        .with("states", states.display().to_string())
        .with("summary", summary)
        .with("agents_updated", updated)
        .with("agents_stale", i64::try_from(stale.len()).unwrap_or(i64::MAX));
    master.bus.publish(Event::new(tag::master("tree/reloaded"), "", data));
    stale
}

/// After welcoming `agent` with `welcomed`'s beacons: if the live tree was
/// replaced meanwhile and gives it other beacons, send those.
pub async fn resend_if_reloaded(master: &Master, peer: Bytes, agent: &str, facts: &Value, welcomed: &Arc<Tree>) {
    let live = master.tree();
    if Arc::ptr_eq(&live, welcomed) {
        return;
    }
    let beacons = live.beacons_for(agent, facts);
    if beacons != welcomed.beacons_for(agent, facts)
        && let Err(error) = master.sessions.send_to_peer(peer, &MasterMessage::Beacons(beacons)).await
    {
        tracing::warn!(agent, %error, "Cannot send the new beacon set.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agents_whose_states_render_differently_are_stale() {
        let load = |edit: &dyn Fn(&Path)| {
            let dir = tempfile::tempdir().unwrap();
            crate::example::write(dir.path()).unwrap();
            edit(dir.path());
            Tree::load(dir.path()).0
        };
        let old = load(&|_| {});
        let agents: Vec<(String, Value)> =
            ["web01", "db01"].iter().map(|a| ((*a).to_owned(), Value::map().with("id", *a))).collect();
        // (an edit of the example tree, the agents it makes stale)
        type Case<'a> = (&'a dyn Fn(&Path), &'a [&'a str]);
        let cases: [Case; 4] = [
            (&|_| {}, &[]),
            (&|root| std::fs::write(root.join("files/nginx.conf"), "events {}\n").unwrap(), &["web01"]),
            (&|root| std::fs::write(root.join("top.yaml"), "'*': [motd, nginx]\n").unwrap(), &["db01"]),
            (&|root| std::fs::write(root.join("reactors.yaml"), "[]\n").unwrap(), &[]),
        ];
        for (i, (edit, stale)) in cases.into_iter().enumerate() {
            assert_eq!(changed_agents(&old, &load(edit), &agents), stale, "case {i}");
        }
    }

    #[test]
    fn reads_and_hidden_files_do_not_reload() {
        use notify::event::{AccessKind, CreateKind, EventKind, ModifyKind, RenameMode};
        let root = Path::new("/srv/states");
        let event = |kind, path: &str| notify::Event::new(kind).add_path(root.join(path));
        let cases = [
            (event(EventKind::Access(AccessKind::Any), "top.yaml"), false),
            (event(EventKind::Create(CreateKind::File), ".reactors.yaml.swp"), false),
            (event(EventKind::Modify(ModifyKind::Any), ".git/index"), false),
            (event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "reactors.yaml"), true),
            (event(EventKind::Create(CreateKind::File), "files/nginx.conf"), true),
        ];
        for (event, expected) in cases {
            assert_eq!(relevant(root, &event), expected, "{event:?}");
        }
    }
}
