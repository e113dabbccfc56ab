//! The operator's commands do no harm unasked, and say how each one failed:
//! the data dir lock, `keys accept` that would retire an accepted key,
//! `halite-agent fingerprint` and `apply --local`, the exit codes, the log
//! formats, `check --config`, `init --dir`, and `keys list` with the master
//! stopped.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use halite_e2e::{CommandOutput, Fleet, WAIT, process, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs `binary ARGS` to its end, with `env` set.
async fn run(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<CommandOutput> {
    let mut command = process(binary);
    command.args(args).env_remove("HALITE_CONFIG").env_remove("HALITE_DATA_DIR").envs(env.iter().copied());
    CommandOutput::of(command).await
}

/// Starts a daemon (`run …`) with its stderr in `log`; returns it with its
/// ready line.
async fn start(binary: &Path, args: &[&str], log: &Path) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut child = process(binary)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("ready ") {
                return anyhow::Ok(line);
            }
        }
        anyhow::bail!("exited before it was ready: {}", std::fs::read_to_string(log).unwrap_or_default())
    })
    .await
    .context("no ready line")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, line))
}

/// A second master or agent on a data dir in use is refused with exit code
/// 6, names the one running, and touches nothing: the first master keeps
/// its endpoints file and control socket, so it can still be managed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_data_dir_in_use_is_refused_and_touches_nothing() {
    let fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let data = fleet.master_data_dir();
        let endpoints = std::fs::read_to_string(data.join("endpoints"))?;
        let config = fleet.master().dir.join("master.yaml");
        let second = run(&fleet.binaries.master, &["run", "--config", &config.to_string_lossy()], &[]).await?;
        assert_eq!(second.code, 6, "{second:?}");
        let pid = fleet.master().pid().context("pid")?;
        let says = format!("another master (pid {pid}) uses {}", data.display());
        assert!(second.stderr.contains(&says), "{says} in {second:?}");
        assert!(second.stdout.is_empty(), "no ready line: {second:?}");
        assert_eq!(std::fs::read_to_string(data.join("endpoints"))?, endpoints, "endpoints untouched");
        assert!(data.join("control.sock").exists(), "the control socket stays");
        let keys = fleet.cli(&["keys", "list"])?;
        assert!(keys.contains("web01"), "the first master still answers: {keys}");

        let agent = fleet.agent("web01");
        let config = agent.dir.join("agent.yaml");
        let second = run(&fleet.binaries.agent, &["run", "--config", &config.to_string_lossy()], &[]).await?;
        assert_eq!(second.code, 6, "{second:?}");
        let says =
            format!("another agent (pid {}) uses {}", agent.pid().context("pid")?, agent.dir.join("data").display());
        assert!(second.stderr.contains(&says), "{says} in {second:?}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// `keys accept web01`, when web01 already has an accepted key, is refused
/// naming both keys; naming the new key (or `--replace`) accepts it, and
/// the retired key's session is cut at once and its agent says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_a_key_that_would_retire_an_accepted_one_needs_the_key_named() {
    let mut fleet = Fleet::start_with(&["web01"], &["web*"]).await.unwrap();
    let result = async {
        let real = fleet.agent("web01");
        let real_log = real.log.clone();
        let real_key = run(
            &fleet.binaries.agent,
            &["fingerprint", "--config", &real.dir.join("agent.yaml").to_string_lossy()],
            &[],
        )
        .await?;
        assert_eq!(real_key.code, 0, "{real_key:?}");
        let real_key = real_key.stdout.trim().to_owned();

        // A second host claims the id web01: its key is pending.
        let (listen, key) = (fleet.master().listen.clone(), fleet.master().key.clone());
        let impostor = halite_master::fleet::start_agent(
            &fleet.binaries,
            &fleet.dir.path().join("impostor"),
            "web01",
            &listen,
            &key,
        )
        .await?;
        let pending = fleet.wait_for("the second key", |e| e.tag == "halite/key/web01/pending").await?;
        let new_key = pending.data()["fingerprint"].as_str().unwrap_or_default().to_owned();
        fleet.agents.push(impostor);

        let refused = fleet.master_command(&["keys", "accept", "web01"]).await?;
        assert_eq!(refused.code, 6, "{refused:?}");
        assert!(
            refused.stderr.contains(&real_key) && refused.stderr.contains(&new_key),
            "both keys named: {refused:?}"
        );
        assert!(refused.stderr.contains("--replace"), "{refused:?}");
        let keys = fleet.cli(&["keys", "list"])?;
        assert!(keys.lines().any(|l| l.contains(&real_key) && l.contains("accepted")), "nothing changed: {keys}");

        // Named by its fingerprint, the new key is accepted; the real
        // agent's session ends now, and it logs why.
        let accepted = fleet.master_command(&["keys", "accept", &new_key]).await?;
        assert_eq!(accepted.code, 0, "{accepted:?}");
        let cut = fleet.wait_for("the retired session cut", |e| e.tag == "halite/agent/web01/disconnected").await?;
        assert_eq!(cut.data()["reason"], "replaced", "{cut:?}");
        wait_until("the real agent to log why", || {
            std::fs::read_to_string(&real_log).is_ok_and(|log| log.contains("accepted another key for this agent id"))
        })
        .await?;

        // The real host comes back pending; --replace takes the id back.
        fleet
            .wait_for("the real key, pending again", |e| {
                e.tag == "halite/key/web01/pending" && e.data()["fingerprint"] == real_key.as_str()
            })
            .await?;
        let again = fleet.master_command(&["keys", "accept", "web01"]).await?;
        assert_eq!(again.code, 6, "{again:?}");
        let replaced = fleet.master_command(&["keys", "accept", "web01", "--replace"]).await?;
        assert_eq!(replaced.code, 0, "{replaced:?}");
        let cut = fleet.wait_for("the impostor cut", |e| e.tag == "halite/agent/web01/disconnected").await?;
        assert_eq!(cut.data()["reason"], "replaced", "{cut:?}");
        let keys = fleet.cli(&["keys", "list"])?;
        assert!(keys.lines().any(|l| l.contains(&real_key) && l.contains("accepted")), "{keys}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// Exit codes 4 and 5, and `keys list` read from the store, sorted, with
/// the master stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_say_nothing_matched_and_list_with_the_master_stopped() {
    let mut fleet = Fleet::start(&["web02", "db01", "web01"]).await.unwrap();
    let result = async {
        for args in [&["keys", "reject", "nosuch*"][..], &["keys", "delete", "nosuch"], &["keys", "accept", "nosuch"]] {
            let output = fleet.master_command(args).await?;
            assert_eq!(output.code, 4, "{args:?}: {output:?}");
            assert!(output.stderr.contains("no key matched `nosuch"), "{output:?}");
        }
        // Accepting what is accepted already is not "nothing matched".
        let again = fleet.master_command(&["keys", "accept", "web01"]).await?;
        assert_eq!(again.code, 0, "{again:?}");
        assert!(again.stdout.contains("web01"), "{again:?}");

        fleet.master.take().context("master")?.stop().await;
        let listed = fleet.master_command(&["keys", "list"]).await?;
        assert_eq!(listed.code, 0, "{listed:?}");
        assert!(listed.stderr.contains("the master is not running"), "{listed:?}");
        let ids: Vec<&str> = listed.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
        assert_eq!(ids, ["db01", "web01", "web02"], "sorted: {listed:?}");
        let json = fleet.master_command(&["keys", "list", "--json"]).await?.json()?;
        assert_eq!(json.as_array().map(Vec::len), Some(3), "{json}");

        let unreachable = fleet.master_command(&["keys", "accept", "web01"]).await?;
        assert_eq!(unreachable.code, 5, "{unreachable:?}");
        assert!(unreachable.stderr.contains("is `halite-master run` running"), "{unreachable:?}");
        let agents = fleet.master_command(&["agents"]).await?;
        assert_eq!(agents.code, 5, "{agents:?}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// `halite-agent fingerprint` reads the running agent's key through its
/// configuration, and never makes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fingerprint_is_the_running_agents_and_never_made() {
    let fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        let agent = fleet.agent("web01");
        let config = agent.dir.join("agent.yaml");
        let printed = run(&fleet.binaries.agent, &["fingerprint", "--config", &config.to_string_lossy()], &[]).await?;
        assert_eq!(printed.code, 0, "{printed:?}");
        let keys = fleet.cli(&["keys", "list"])?;
        let line = keys.lines().find(|l| l.starts_with("web01 ")).context("web01 listed")?;
        assert!(line.ends_with(printed.stdout.trim()), "{line} vs {printed:?}");
        let env = run(&fleet.binaries.agent, &["fingerprint"], &[("HALITE_CONFIG", &config.to_string_lossy())]).await?;
        assert_eq!(env.stdout, printed.stdout, "HALITE_CONFIG works too: {env:?}");

        let empty = fleet.dir.path().join("no-agent-here");
        std::fs::create_dir_all(&empty)?;
        let missing = run(&fleet.binaries.agent, &["fingerprint", "--data-dir", &empty.to_string_lossy()], &[]).await?;
        assert_eq!(missing.code, 1, "{missing:?}");
        let key = empty.join("agent.key");
        assert!(missing.stderr.contains(&format!("no agent key at {}", key.display())), "{missing:?}");
        assert!(!key.exists(), "fingerprint made no key");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// `apply --local` without a root and without agent.yaml refuses (exit
/// code 2) and writes nothing; with `--root` it backs up what it replaces
/// as the daemon does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_local_needs_a_root_and_keeps_backups() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("states");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("top.yaml"), "'*': [motd]\n").unwrap();
    let motd = |text: &str| format!("motd:\n  file.managed:\n    path: /etc/motd\n    contents: \"{text}\"\n");
    std::fs::write(tree.join("motd.yaml"), motd("first")).unwrap();
    let binaries = halite_e2e::binaries();
    let tree_arg = tree.to_string_lossy().into_owned();
    let no_config = ["--config", "/nonexistent/agent.yaml"];

    let mut args = vec!["apply", "--local", &tree_arg];
    args.extend(no_config);
    let refused = run(&binaries.agent, &args, &[]).await.unwrap();
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("--root /"), "says how: {refused:?}");
    assert!(refused.stdout.is_empty(), "nothing applied: {refused:?}");

    // An agent.yaml that sets no root (as the packaged one) does not stand
    // for `--root /` either.
    let agent_yaml = dir.path().join("agent.yaml");
    std::fs::write(&agent_yaml, format!("id: web01\ntofu: true\ndata_dir: {}\n", dir.path().join("data").display()))
        .unwrap();
    let configured = agent_yaml.to_string_lossy().into_owned();
    let unrooted = run(&binaries.agent, &["apply", "--local", &tree_arg, "--config", &configured], &[]).await.unwrap();
    assert_eq!(unrooted.code, 2, "{unrooted:?}");
    assert!(unrooted.stderr.contains("sets no `root`"), "{unrooted:?}");

    let root = dir.path().join("root");
    let root_arg = root.to_string_lossy().into_owned();
    args.extend(["--root", &root_arg]);
    let first = run(&binaries.agent, &args, &[]).await.unwrap();
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(std::fs::read_to_string(root.join("etc/motd")).unwrap(), "first");
    std::fs::write(tree.join("motd.yaml"), motd("second")).unwrap();
    let second = run(&binaries.agent, &args, &[]).await.unwrap();
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(std::fs::read_to_string(root.join("etc/motd")).unwrap(), "second");
    let backups = root.join("var/lib/halite/agent/backup");
    let kept: Vec<String> =
        std::fs::read_dir(&backups).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert_eq!(kept, ["first"], "the replaced content is backed up in {}", backups.display());

    // With agent.yaml's root: that root, and its data dir's backups.
    let yaml_root = dir.path().join("yaml-root");
    let text = std::fs::read_to_string(&agent_yaml).unwrap();
    std::fs::write(&agent_yaml, format!("{text}root: {}\n", yaml_root.display())).unwrap();
    std::fs::create_dir_all(yaml_root.join("etc")).unwrap();
    std::fs::write(yaml_root.join("etc/motd"), "before").unwrap();
    let rooted = run(&binaries.agent, &["apply", "--local", &tree_arg, "--config", &configured], &[]).await.unwrap();
    assert_eq!(rooted.code, 0, "{rooted:?}");
    assert_eq!(std::fs::read_to_string(yaml_root.join("etc/motd")).unwrap(), "second");
    let kept: Vec<String> = std::fs::read_dir(dir.path().join("data/backup"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(kept, ["before"], "backed up in agent.yaml's data dir");
}

/// Each failure mode that needs no fleet has its own code: 2 only for a
/// bad command line (a Salt habit gets a hint), 1 for a broken tree, 5 for
/// a master that is not running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_failures_apart() {
    let dir = tempfile::tempdir().unwrap();
    let binaries = halite_e2e::binaries();
    let data = dir.path().join("data").to_string_lossy().into_owned();

    let usage = run(&binaries.master, &["apply"], &[]).await.unwrap();
    assert_eq!(usage.code, 2, "{usage:?}");
    let salt = run(&binaries.master, &["apply", "*", "test=True", "--data-dir", &data], &[]).await.unwrap();
    assert_eq!(salt.code, 2, "{salt:?}");
    assert!(
        salt.stderr.contains("`test=True` looks like a Salt argument") && salt.stderr.contains("--test"),
        "{salt:?}"
    );

    let down = run(&binaries.master, &["apply", "*", "--data-dir", &data], &[]).await.unwrap();
    assert_eq!(down.code, 5, "{down:?}");
    let down = run(&binaries.master, &["events", "--data-dir", &data], &[]).await.unwrap();
    assert_eq!(down.code, 5, "{down:?}");

    let tree = dir.path().join("states");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("motd.yaml"), "motd:\n  file.manged: {}\n").unwrap();
    let broken = run(&binaries.master, &["check", "--states", &tree.to_string_lossy()], &[]).await.unwrap();
    assert_eq!(broken.code, 1, "{broken:?}");
    let agent_usage = run(&binaries.agent, &["fingerprint", "--bogus"], &[]).await.unwrap();
    assert_eq!(agent_usage.code, 2, "{agent_usage:?}");
    let help = run(&binaries.master, &["apply", "--help"], &[]).await.unwrap();
    assert!(help.stdout.contains("Examples:\n  halite-master apply"), "{help:?}");
    let help = run(&binaries.master, &["--help"], &[]).await.unwrap();
    assert!(help.stdout.contains("5 the master is not running"), "the table is in --help: {help:?}");
}

/// `check` finds the tree through the configuration (`--config` or
/// `HALITE_CONFIG`), as every other command finds the data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_the_tree_named_by_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let binaries = halite_e2e::binaries();
    let init = run(&binaries.master, &["init", "--dir", &dir.path().to_string_lossy()], &[]).await.unwrap();
    assert_eq!(init.code, 0, "{init:?}");
    let config = dir.path().join("master.yaml").to_string_lossy().into_owned();
    let states = dir.path().join("states");
    // Run from elsewhere: no ./states to fall back on.
    let mut command = process(&binaries.master);
    command.current_dir("/").args(["check", "--config", &config]);
    let by_flag = CommandOutput::of(command).await.unwrap();
    assert_eq!(by_flag.code, 0, "{by_flag:?}");
    assert!(by_flag.stdout.starts_with(&format!("ok: {}", states.display())), "{by_flag:?}");
    let mut command = process(&binaries.master);
    command.current_dir("/").arg("check").env("HALITE_CONFIG", &config).env_remove("HALITE_STATES");
    let by_env = CommandOutput::of(command).await.unwrap();
    assert_eq!(by_env.stdout, by_flag.stdout, "{by_env:?}");
}

/// Logs written to a file carry no escape codes and no Rust debug
/// formatting; `log_format: json` makes one JSON object per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_plain_in_files_and_json_when_asked() {
    let mut fleet = Fleet::start_with_master_config(&[], "log_format: json\n").await.unwrap();
    let result = async {
        fleet.add_agent("web01").await?;
        let master_log = std::fs::read_to_string(&fleet.master().log)?;
        let lines: Vec<serde_json::Value> =
            master_log.lines().map(serde_json::from_str).collect::<Result<_, _>>().context("every line is JSON")?;
        assert!(
            lines.iter().any(|l| l["fields"]["message"] == "Agent connected." && l["fields"]["agent"] == "web01"),
            "{master_log}"
        );
        let agent_log = std::fs::read_to_string(&fleet.agent("web01").log)?;
        assert!(!agent_log.contains('\u{1b}'), "no escape codes in a file: {agent_log}");
        assert!(agent_log.contains("Agent starting. agent=web01"), "{agent_log}");
        for debug in ["Some(", "None", "agent=\"web01\""] {
            assert!(!agent_log.contains(debug), "no `{debug}` in {agent_log}");
        }
        // The agent's `log_format` likewise.
        fleet.add_agent_with("web02", "log_format: json\n").await?;
        let agent_log = std::fs::read_to_string(&fleet.agent("web02").log)?;
        let lines: Vec<serde_json::Value> =
            agent_log.lines().map(serde_json::from_str).collect::<Result<_, _>>().context("every line is JSON")?;
        assert!(
            lines.iter().any(|l| l["fields"]["message"] == "Agent starting." && l["fields"]["agent"] == "web02"),
            "{agent_log}"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// `init --dir` writes an agent.yaml that runs as it is (given the real
/// port) and prints commands that work; `agents` shows the version of an
/// agent accepted by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_dir_makes_an_agent_and_its_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let binaries = halite_e2e::binaries();
    let init =
        run(&binaries.master, &["init", "--dir", &dir.path().to_string_lossy(), "--listen", "tcp://127.0.0.1:0"], &[])
            .await
            .unwrap();
    assert_eq!(init.code, 0, "{init:?}");
    let config = dir.path().join("master.yaml");
    let config_arg = config.to_string_lossy().into_owned();
    for command in ["agents", "events", "jobs", "apply '*' --test"] {
        assert!(init.stdout.contains(&format!("halite-master {command} --config {config_arg}")), "{init:?}");
    }
    // The fixed publish port of a fresh master.yaml could be taken here.
    let text = std::fs::read_to_string(&config).unwrap().replace("tcp://127.0.0.1:4511", "tcp://127.0.0.1:0");
    std::fs::write(&config, text).unwrap();
    let (_master, ready) =
        start(&binaries.master, &["run", "--config", &config_arg], &dir.path().join("master.log")).await.unwrap();
    let listen = ready.split_whitespace().find_map(|f| f.strip_prefix("listen=")).unwrap().to_owned();
    let agent_yaml = dir.path().join("agent.yaml").to_string_lossy().into_owned();
    let (_agent, _) =
        start(&binaries.agent, &["run", "--config", &agent_yaml, "--master", &listen], &dir.path().join("agent.log"))
            .await
            .unwrap();

    let accept = run(&binaries.master, &["keys", "accept", "web01", "--config", &config_arg], &[]).await.unwrap();
    assert_eq!(accept.code, 0, "{accept:?}");
    let motd = dir.path().join("agent/root/etc/motd");
    wait_until("the start-up apply under the agent's root", || motd.exists()).await.unwrap();
    let agents = run(&binaries.master, &["agents", "--json", "--config", &config_arg], &[]).await.unwrap();
    let rows = agents.json().unwrap();
    assert_eq!(rows[0]["id"], "web01", "{rows}");
    assert_eq!(rows[0]["version"], env!("CARGO_PKG_VERSION"), "the version of an agent accepted by hand: {rows}");
    let test = run(&binaries.master, &["apply", "*", "--test", "--config", &config_arg], &[]).await.unwrap();
    assert_eq!(test.code, 0, "{test:?}");
    let jobs = run(&binaries.master, &["jobs", "--config", &config_arg], &[]).await.unwrap();
    assert_eq!(jobs.code, 0, "{jobs:?}");
    assert!(jobs.stdout.contains("web01"), "{jobs:?}");
}

/// `demo --keep` prints commands that work on the fleet it leaves running,
/// and no figure it did not measure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keep_prints_commands_that_work() {
    let binaries = halite_e2e::binaries();
    let mut demo = process(&binaries.master)
        .args(["demo", "--keep"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    tokio::time::timeout(WAIT * 4, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("Press Ctrl-C");
            printed.push(line);
            if done {
                break;
            }
        }
    })
    .await
    .expect("the demo printed its commands");
    let text = printed.join("\n");
    assert!(!text.contains("Salt"), "no figure the demo did not measure: {text}");
    let agents = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("halite-master agents --config "))
        .unwrap_or_else(|| panic!("an `agents` command in {text}"));
    for command in ["events", "jobs", "apply '*' --test"] {
        assert!(text.contains(&format!("halite-master {command} --config {agents}")), "{command} in {text}");
    }
    let table = run(&binaries.master, &["agents", "--config", agents], &[]).await.unwrap();
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains("web01") && table.stdout.contains("db01"), "{table:?}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(demo.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(WAIT, demo.wait()).await.expect("the demo stops").unwrap();
    assert!(status.success(), "{status:?}");
    // The demo keeps its directory after --keep, for the operator.
    if let Some(kept) = text.split("the directory stays: ").nth(1).and_then(|rest| rest.strip_suffix(").")) {
        let _ = std::fs::remove_dir_all(kept);
    }
}
