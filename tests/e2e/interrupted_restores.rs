//! Restores of a large file interrupted by SIGKILL (issue 15, item 5): the
//! temporary files they leave beside the managed file are removed by the
//! next restore of that file and at the agent's start, so none remain.

use std::path::Path;

use halite_e2e::{Fleet, wait_until};

/// 4 MiB of desired content.
fn desired() -> String {
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(65_536)
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(".halite-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_during_large_restores_leave_no_temporary_files() {
    let desired = desired();
    let tree: &[(&str, &str)] = &[
        ("files/big.dat", &desired),
        ("big.yaml", "big:\n  file.managed:\n    path: /srv/big.dat\n    source: files/big.dat\n    watch: true\n"),
        ("top.yaml", "'*': [big]\n"),
    ];
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], tree).await.unwrap();
    let result = async {
        let path = fleet.agent("web01").path("/srv/big.dat");
        let dir = path.parent().unwrap().to_path_buf();
        let compliant = |path: &Path| std::fs::read(path).is_ok_and(|now| now == desired.as_bytes());
        assert!(compliant(&path));
        let mut killed_mid_write = 0;
        for round in 0..16 {
            std::fs::write(&path, "drift\n")?;
            // Kill as soon as the restore's temporary file is there (or the
            // restore is done: then the kill interrupts nothing).
            wait_until("a restore under way or done", || !temp_files(&dir).is_empty() || compliant(&path)).await?;
            fleet.kill_agent("web01").await;
            if !temp_files(&dir).is_empty() {
                killed_mid_write += 1;
            }
            if round == 0 {
                // What a kill in the middle leaves, for certain at least once.
                std::fs::write(dir.join(".halite-0123456789abcdef.big.dat"), "half a restore")?;
            }
            fleet.add_agent("web01").await?;
            while !compliant(&path) {
                fleet.wait_for(&format!("round {round}: a job result"), |e| e.tag.ends_with("/ret/web01")).await?;
            }
            // Removed by the restart's clean-up or the next restore; a file
            // that stays makes this time out, naming the round.
            wait_until(&format!("round {round}: no temporary file beside the file"), || temp_files(&dir).is_empty())
                .await?;
        }
        eprintln!("{killed_mid_write} of 16 kills left a temporary file behind, all removed");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
