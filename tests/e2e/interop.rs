//! Any ZeroMQ client can listen to the bus: a pyzmq (libzmq) subscriber,
//! filtered by tag prefix. `.ci/run` installs pyzmq.

use std::process::Stdio;

use halite_e2e::{Fleet, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pyzmq_subscriber_receives_beacon_events_by_prefix() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/subscribe.py");
        let mut python = halite_e2e::process("python3")
            .arg(&script)
            .args([&fleet.master().publish, "halite/beacon/web01/motd", "2"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run python3 (pyzmq is needed; `.ci/run` installs it): {e}"))?;
        let mut lines = BufReader::new(python.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(WAIT, lines.next_line()).await??;
        anyhow::ensure!(
            ready.as_deref() == Some("ready"),
            "the subscriber did not start (is pyzmq installed?): {ready:?}"
        );
        // A subscription reaches the publisher a moment after `ready`, so
        // drift until the subscriber hears of it; every drift is restored
        // (and raises jobs and other beacons' events it must not see).
        let motd = fleet.agent("web01").path("/etc/motd");
        let conf = fleet.agent("web01").path("/etc/nginx/nginx.conf");
        let mut received = Vec::new();
        let mut attempt = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        while received.len() < 2 {
            std::fs::write(&conf, "other beacon\n")?;
            attempt += 1;
            std::fs::write(&motd, format!("drift {attempt}\n"))?;
            let event = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
            fleet.wait_for_restore_of(&event).await?;
            tokio::select! {
                line = lines.next_line() => {
                    let line = line?.ok_or_else(|| anyhow::anyhow!("the subscriber exited"))?;
                    received.push(serde_json::from_str::<serde_json::Value>(&line)?);
                }
                () = tokio::time::sleep_until(deadline) => anyhow::bail!("the subscriber received nothing"),
                // Not received yet: drift again.
                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
        }
        for event in &received {
            assert_eq!(event["tag"], "halite/beacon/web01/motd", "filtered by prefix: {event}");
            assert_eq!(event["event"]["agent"], "web01");
            assert_eq!(event["event"]["data"]["path"], "/etc/motd");
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
