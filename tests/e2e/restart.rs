//! The master crashes and comes back; agents reconnect on their own.

use halite_e2e::{Fleet, example_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_the_master_is_killed() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        fleet.kill_master().await;
        fleet.restart_master(&listen).await?;
        let conf = fleet.agent("web01").path("/etc/nginx/nginx.conf");
        std::fs::write(&conf, "drift after the restart\n")?;
        // The drift is restored by its reaction or by the start-up apply of
        // the new session, whichever comes first; wait until it is.
        while std::fs::read_to_string(&conf).ok().as_deref() != Some(example_file("files/nginx.conf")) {
            fleet
                .wait_for("a job result from web01", |e| {
                    e.tag.starts_with("halite/job/") && e.tag.ends_with("/ret/web01")
                })
                .await?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
