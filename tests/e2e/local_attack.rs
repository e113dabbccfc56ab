//! A local user against the root agent (issue 14, item 11): the user
//! controls the directory of a managed file and swaps the file for a link
//! to a root-only file, again and again, while halite restores the drift.
//! Through `halite_fs` the agent never follows that link: the root-only
//! file's mode and content never change, and its content reaches neither
//! the master's store (as a diff) nor the agent's backups.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use halite_e2e::{Fleet, mode_of};

const SECRET: &str = "root-only secret 7f3a9c\n";
const DESIRED: &str = "managed = yes\n";

/// `/srv/user/app.conf`, kept enforced (`watch: true`), mode 0644.
const TREE: &[(&str, &str)] = &[
    (
        "user.yaml",
        "app-conf:\n  file.managed:\n    path: /srv/user/app.conf\n    contents: \"managed = yes\\n\"\n    mode: \"0644\"\n    watch: true\n",
    ),
    ("top.yaml", "'*': [user]\n"),
];

/// Every file under `dir` that holds `needle` (raw bytes: SQLite keeps
/// text as it is, in the database or its WAL).
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() => {
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        found.push(path);
                    }
                }
                _ => {}
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_swapping_a_managed_file_for_a_link_never_reaches_a_root_only_file() {
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], TREE).await.unwrap();
    let result = async {
        let agent = fleet.agent("web01");
        let (path, data) = (agent.path("/srv/user/app.conf"), agent.dir.join("data"));
        assert_eq!(std::fs::read_to_string(&path)?, DESIRED);
        // The root-only file, outside the user's directory.
        let secret = agent.root.join("etc/shadow");
        std::fs::create_dir_all(secret.parent().unwrap())?;
        std::fs::write(&secret, SECRET)?;
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;

        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let racer = {
            let (stop, swaps, path, secret) = (stop.clone(), swaps.clone(), path.clone(), secret.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let (plain, link) = (path.with_extension("plain"), path.with_extension("link"));
                while !stop.load(Ordering::Relaxed) {
                    // A drift (content, or mode only), then the link in its place.
                    let round = swaps.fetch_add(1, Ordering::Relaxed);
                    std::fs::write(&plain, if round.is_multiple_of(2) { "drift\n" } else { DESIRED })?;
                    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                    std::fs::rename(&plain, &path)?;
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(&secret, &link)?;
                    std::fs::rename(&link, &path)?;
                }
                Ok(())
            })
        };
        // Restores (or refusals) of the drifts, each checked as it comes.
        for round in 0..40 {
            fleet.wait_for(&format!("job result {round}"), |e| e.tag.ends_with("/ret/web01")).await?;
            assert_eq!(std::fs::read_to_string(&secret)?, SECRET, "round {round}: the root-only file changed");
            assert_eq!(mode_of(&secret), 0o600, "round {round}: the root-only file's mode changed");
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().expect("the racer panicked")?;
        eprintln!("{} swaps raced 40 restores", swaps.load(Ordering::Relaxed));
        assert_eq!(std::fs::read_to_string(&secret)?, SECRET);
        assert_eq!(mode_of(&secret), 0o600);
        let marker = "7f3a9c";
        let leaked: Vec<PathBuf> =
            [fleet.master_data_dir(), data].iter().flat_map(|dir| files_holding(dir, marker)).collect();
        assert!(leaked.is_empty(), "the root-only content reached {leaked:?}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
