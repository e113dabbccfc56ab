//! `watch: true` and hot reload: the master's tree changes on disk and its
//! behaviour follows, without a restart; a broken edit changes nothing.

use halite_e2e::{Fleet, example_file};
use halite_master::client::BusEvent;

const MOTD: &str = "This host is managed by halite. Local edits are restored.\n";

fn is(tag: &'static str) -> impl Fn(&BusEvent) -> bool {
    move |e| e.tag == tag
}

/// With no beacons.yaml and no reactors.yaml at all, a `watch: true` file
/// is restored after drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_true_restores_a_file_with_no_beacons_or_reactors() {
    let app = "app-conf:\n  file.managed:\n    path: /etc/app.conf\n    contents: \"good\\n\"\n    mode: \"0644\"\n    watch: true\n";
    let mut fleet = Fleet::start_tree(
        &["web01"],
        &["*"],
        &[("top.yaml", "'*': [app]\n"), ("app.yaml", app)],
        &["beacons.yaml", "reactors.yaml"],
    )
    .await
    .unwrap();
    let result = async {
        let path = fleet.agent("web01").path("/etc/app.conf");
        assert_eq!(std::fs::read_to_string(&path)?, "good\n", "the start-up apply wrote it");
        std::fs::write(&path, "bad\n")?;
        let drift = fleet.wait_for("the drift", is("halite/beacon/web01/watch:app:app-conf")).await?;
        assert_eq!(drift.data()["path"], "/etc/app.conf", "{}", drift.data());
        let ret = fleet.wait_for_restore_of(&drift).await?;
        assert_eq!(ret.data()["failed"], false, "{}", ret.data());
        assert_eq!(std::fs::read_to_string(&path)?, "good\n");
        fleet.wait_for("the reactor", is("halite/reactor/watch:app:app-conf/fired")).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A beacon added to beacons.yaml on a running master starts on the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_beacons_yaml_starts_a_new_beacon_without_a_restart() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        // A process nobody runs: the beacon reports `absent` when it starts.
        let name = format!("halite-reload-{}", std::process::id());
        let beacons = example_file("beacons.yaml").replacen(
            "'*':\n",
            &format!("'*':\n  worker:\n    process:\n      name: {name}\n"),
            1,
        );
        assert!(beacons.contains("worker"), "the example's beacons.yaml has a '*' entry");
        fleet.edit_tree("beacons.yaml", &beacons)?;
        let started = fleet.wait_for("the new beacon's first event", is("halite/beacon/web01/worker")).await?;
        assert_eq!(started.data()["state"], "absent", "{}", started.data());
        let reloaded = is("halite/master/tree/reloaded");
        if !fleet.seen.iter().any(&reloaded) {
            fleet.wait_for("the reload", reloaded).await?;
        }
        let reload = fleet.seen.iter().find(|e| e.tag == "halite/master/tree/reloaded").cloned();
        assert_eq!(reload.map(|e| e.data()["agents_updated"].clone()), Some(serde_json::json!(1)));
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

fn fired(e: &BusEvent) -> bool {
    e.tag.starts_with("halite/reactor/") && e.tag.ends_with("/fired")
}

/// A reactor renamed and rewritten in reactors.yaml is the one that reacts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_reactors_yaml_changes_the_reaction() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        fleet.edit_tree("reactors.yaml", "- name: motd-v2\n  on: halite/beacon/*/motd\n  apply: [motd]\n")?;
        fleet.wait_for("the reload", is("halite/master/tree/reloaded")).await?;
        let path = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&path, "defaced\n")?;
        let reaction = fleet.wait_for("a reaction", fired).await?;
        assert_eq!(reaction.tag, "halite/reactor/motd-v2/fired");
        assert_eq!(std::fs::read_to_string(&path)?, MOTD);
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A broken reactors.yaml is reported on the bus with its position, and the
/// reactors loaded before keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_is_reported_and_the_old_reactors_keep_working() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        fleet.edit_tree(
            "reactors.yaml",
            "- name: restore-motd\n  on: halite/beacon/*/motd\n  when: 'data.kind =='\n  apply: [motd]\n",
        )?;
        let failed = fleet.wait_for("the failed reload", is("halite/master/tree/failed")).await?;
        let first = &failed.data()["diagnostics"][0];
        assert!(first["file"].as_str().unwrap_or_default().ends_with("reactors.yaml"), "{}", failed.data());
        assert_eq!(first["line"], 3, "{}", failed.data());
        assert!(first["message"].as_str().unwrap_or_default().contains("bad `when` expression"), "{}", failed.data());
        let path = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&path, "defaced\n")?;
        let reaction = fleet.wait_for("a reaction", fired).await?;
        assert_eq!(reaction.tag, "halite/reactor/restore-motd/fired");
        assert_eq!(std::fs::read_to_string(&path)?, MOTD);
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// SIGHUP reloads the tree, e.g. after a deploy that swapped a symlink the
/// watcher cannot see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tree() {
    let mut fleet = Fleet::start(&[]).await.unwrap();
    let result = async {
        let pid = fleet.master().pid().ok_or_else(|| anyhow::anyhow!("the master is not running"))?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
        let reloaded = fleet.wait_for("the reload", is("halite/master/tree/reloaded")).await?;
        assert_eq!(reloaded.data()["agents_updated"], 0, "{}", reloaded.data());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// An edit to a file a state reads reaches the agents it renders
/// differently for: they are `stale`, re-applied (a job with cause
/// `reload`), and compliant again; agents it does not concern are left
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_edit_reaches_the_agents_whose_states_it_changes() {
    let mut fleet = Fleet::start(&["web01", "db01"]).await.unwrap();
    let result = async {
        let conf = "events {}\nhttp { server_tokens off; }\n";
        std::fs::write(fleet.states.join("files/nginx.conf"), conf)?;
        let stale = fleet.wait_for("web01 made stale", |e| e.tag.ends_with("/stale")).await?;
        assert_eq!(stale.tag, "halite/agent/web01/stale", "db01 applies no nginx state");
        let reloaded = fleet.wait_for("the reload", is("halite/master/tree/reloaded")).await?;
        assert_eq!(reloaded.data()["agents_stale"], 1, "{}", reloaded.data());
        fleet.wait_for("the re-apply", |e| e.tag.starts_with("halite/job/") && e.tag.ends_with("/ret/web01")).await?;
        let path = fleet.agent("web01").path("/etc/nginx/nginx.conf");
        assert_eq!(std::fs::read_to_string(&path)?, conf);
        let jobs: serde_json::Value = serde_json::from_str(&fleet.cli(&["jobs", "--json"])?)?;
        let reload_jobs: Vec<&serde_json::Value> =
            jobs.as_array().into_iter().flatten().filter(|j| j["cause"] == "reload").collect();
        assert_eq!(reload_jobs.len(), 1, "{jobs}");
        assert_eq!(reload_jobs[0]["agents"], serde_json::json!(["web01"]), "{jobs}");
        let agents: serde_json::Value = serde_json::from_str(&fleet.cli(&["agents", "--json"])?)?;
        for row in agents.as_array().into_iter().flatten() {
            assert_eq!(row["compliance"]["state"], "compliant", "{row}");
        }
        assert!(!fleet.seen.iter().any(|e| e.tag == "halite/agent/db01/stale"));
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// With `enforce_on_reload: false` an edited state is not applied: `agents`
/// shows the agent `stale` until an apply returns, and then `compliant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_enforce_on_reload_an_agent_stays_stale_until_applied() {
    let mut fleet = Fleet::start_with_master_config(&["web01"], "enforce_on_reload: false\n").await.unwrap();
    let result = async {
        let motd = example_file("motd.yaml").replace("Local edits are restored.", "Edited on the master.");
        fleet.edit_tree("motd.yaml", &motd)?;
        fleet.wait_for("web01 made stale", is("halite/agent/web01/stale")).await?;
        fleet.wait_for("the reload", is("halite/master/tree/reloaded")).await?;
        let compliance = |fleet: &Fleet| -> anyhow::Result<serde_json::Value> {
            let agents: serde_json::Value = serde_json::from_str(&fleet.cli(&["agents", "--json"])?)?;
            Ok(agents[0]["compliance"]["state"].clone())
        };
        assert_eq!(compliance(&fleet)?, "stale");
        let jobs: serde_json::Value = serde_json::from_str(&fleet.cli(&["jobs", "--json"])?)?;
        assert!(jobs.as_array().into_iter().flatten().all(|j| j["cause"] != "reload"), "{jobs}");
        let path = fleet.agent("web01").path("/etc/motd");
        assert_eq!(std::fs::read_to_string(&path)?, MOTD, "nothing was sent");
        fleet.cli(&["apply", "web01"])?;
        assert_eq!(compliance(&fleet)?, "compliant");
        assert_eq!(std::fs::read_to_string(&path)?, "This host is managed by halite. Edited on the master.\n");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
