//! The drift → restore loop.

use halite_e2e::{Fleet, example_file, mode_of};
use halite_master::fleet::DRIFTS;

/// Each drift is restored byte for byte with the right mode, by exactly one
/// job, and the agent's own restore raises no further event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_drift_is_restored_once_and_the_restore_raises_nothing() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    if let Err(error) = drifts(&mut fleet).await {
        fleet.fail(&error);
    }
}

async fn drifts(fleet: &mut Fleet) -> anyhow::Result<()> {
    let conf = fleet.agent("web01").path("/etc/nginx/nginx.conf");
    let desired = example_file("files/nginx.conf");
    assert_eq!(std::fs::read_to_string(&conf)?, desired, "the start-up apply wrote the file");
    let start = fleet.seen.len();
    let mut drift_events = Vec::new();
    for drift in DRIFTS {
        let what = drift.name;
        (drift.act)(&conf)?;
        let event = fleet.wait_for(what, |e| e.tag == "halite/beacon/web01/nginx-conf").await?;
        let ret = fleet.wait_for_restore_of(&event).await?;
        assert_eq!(ret.data()["failed"], false, "{what}: {}", ret.data());
        assert_eq!(std::fs::read_to_string(&conf)?, desired, "{what}: restored byte for byte");
        assert_eq!(mode_of(&conf), 0o644, "{what}: mode restored");
        drift_events.push(event.id().to_owned());
    }
    // A last drift on another file: the agent reports events in order, so
    // anything its own restores had raised would arrive before this one.
    let motd = fleet.agent("web01").path("/etc/motd");
    std::fs::write(&motd, "sentinel\n")?;
    let sentinel = fleet.wait_for("the sentinel drift", |e| e.tag == "halite/beacon/web01/motd").await?;
    fleet.wait_for_restore_of(&sentinel).await?;
    drift_events.push(sentinel.id().to_owned());

    let seen = &fleet.seen[start..];
    let beacon_events: Vec<&str> =
        seen.iter().filter(|e| e.tag.starts_with("halite/beacon/")).map(|e| e.id()).collect();
    assert_eq!(beacon_events, drift_events, "one event per drift, nothing from the restores");
    for cause in &drift_events {
        let jobs = seen.iter().filter(|e| e.tag.ends_with("/new") && e.data()["cause"] == cause.as_str()).count();
        assert_eq!(jobs, 1, "exactly one restore job for drift event {cause}");
    }
    let all_jobs = seen.iter().filter(|e| e.tag.starts_with("halite/job/") && e.tag.ends_with("/new")).count();
    assert_eq!(all_jobs, drift_events.len(), "no other job ran");
    Ok(())
}

/// A write that leaves the file as desired is not drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_desired_content_raises_no_event() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let conf = fleet.agent("web01").path("/etc/nginx/nginx.conf");
        std::fs::write(&conf, example_file("files/nginx.conf"))?;
        let motd = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&motd, "sentinel\n")?;
        let event = fleet.wait_for("the sentinel drift", |e| e.tag.starts_with("halite/beacon/")).await?;
        assert_eq!(event.tag, "halite/beacon/web01/motd", "the same-content write raised an event");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
