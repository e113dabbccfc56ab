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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use halite_proto::event::tag;
use halite_proto::{Event, MasterMessage, Value};
use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::server::context::Master;
use crate::tree::Tree;

/// How long the tree must stay unchanged before it is loaded.
pub const QUIET: Duration = Duration::from_millis(200);

/// Starts watching `states`; reloads into `master` until `cancel` fires.
pub fn spawn(master: Arc<Master>, states: PathBuf, cancel: CancellationToken) -> anyhow::Result<()> {
    // One stored permit, not a queue: any number of changes before the
    // reload task wakes are one reload.
    let changed = Arc::new(Notify::new());
    let signal = changed.clone();
    let root = states.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if !relevant(&root, &event) => {}
        // An error (e.g. a queue overflow) may hide a change: reload.
        _ => signal.notify_one(),
    })?;
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
            reload(&master, &states).await;
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

/// Loads the tree and, if it has no errors, makes it the live one.
pub async fn reload(master: &Master, states: &Path) {
    let root = states.to_path_buf();
    let (tree, diagnostics) = match tokio::task::spawn_blocking(move || Tree::load(&root)).await {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::error!(%error, "Loading the state tree failed.");
            return;
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
        return;
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
    tracing::info!(states = %states.display(), agents = updated, "Reloaded the state tree: {summary}.");
    let data = Value::map()
        .with("states", states.display().to_string())
        .with("summary", summary)
        .with("agents_updated", updated);
    master.bus.publish(Event::new(tag::master("tree/reloaded"), "", data));
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
