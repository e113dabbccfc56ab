//! Trust boundaries (issue 14, items 8, 9, 14, 15): what an accepted agent
//! claims about itself, what it makes the operator's terminal print, who
//! may write the daemons' data dirs, and who gets in at first contact.
//! Each test performs the attack on real processes and asserts the fix.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, ensure};
use halite_e2e::raw::RawAgent;
use halite_e2e::{CommandOutput, Fleet, binaries, process, wait_until};
use halite_link::Keypair;
use halite_proto::{AgentMessage, Event, Job, JobResult, MasterMessage, Outcome, StateResult, Value};

/// A tree whose vars give the db tier a secret, by the `hostname` fact.
pub(crate) const FACTS_TREE: &[(&str, &str)] = &[
    ("top.yaml", "'*': [secret]\n"),
    ("vars.yaml", "'*': {db_password: none}\n'G@hostname:db*': {db_password: hunter2-db-tier}\n"),
    (
        "secret.yaml",
        "app-conf:\n  file.managed:\n    path: /etc/app.conf\n    contents: \"pw={{ vars.db_password }}\\n\"\n    template: jinja\n",
    ),
];
pub(crate) const DB_SECRET: &str = "hunter2-db-tier";

pub(crate) fn facts(hostname: &str) -> Value {
    Value::map().with("id", hostname).with("hostname", hostname)
}

/// Everything a job would write, as text.
pub(crate) fn contents(job: &Job) -> String {
    job.states.iter().map(|s| s.args.to_json().to_string()).collect()
}

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Item 8: an accepted agent reconnects claiming `hostname: db-x`; the
/// master keeps the facts frozen at acceptance, so the job it sends holds
/// no db-tier secret, and the claim waits for an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_agent_claiming_a_db_hostname_does_not_get_the_db_tiers_vars() {
    let mut fleet = Fleet::start_custom(&[], &["*"], FACTS_TREE).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        // The control: a host that is in the db tier gets the secret, so
        // its absence below means something.
        let mut db = RawAgent::connect(&listen, "db01", facts("db01")).await?;
        let job = db.next_job().await?;
        ensure!(contents(&job).contains(DB_SECRET), "the db host's job lacks the secret: {}", contents(&job));

        let keypair = Keypair::generate()?;
        let mut web = RawAgent::connect_with_key(&listen, "web07", facts("web07"), &keypair).await?;
        let job = web.next_job().await?;
        ensure!(contents(&job).contains("pw=none"), "{}", contents(&job));
        web.send(&AgentMessage::JobResult(JobResult { job: job.id, results: Vec::new() })).await?;
        web.barrier().await?;
        drop(web);

        // The same key comes back and lies about its host name.
        let mut liar = RawAgent::connect_with_key(&listen, "web07", facts("db-x"), &keypair).await?;
        let job = liar.next_job().await?;
        ensure!(!contents(&job).contains(DB_SECRET), "the lie was believed: {}", contents(&job));
        ensure!(contents(&job).contains("pw=none"), "{}", contents(&job));
        fleet.wait_for("the held facts", |e| e.tag == "halite/key/web07/facts-held").await?;
        let shown = fleet.keys(&["facts", "web07"])?;
        ensure!(shown.contains("db-x") && shown.contains("--accept"), "{shown}");

        // `check` warns about a secret given by a fact.
        let mut check = process(&fleet.binaries.master);
        check.arg("check").arg("--states").arg(&fleet.states);
        let out = CommandOutput::of(check).await?;
        ensure!(out.stdout.contains("warning") && out.stdout.contains("db_password"), "{out:?}");

        // Only the operator makes the claim count.
        fleet.keys(&["facts", "web07", "--accept"])?;
        let rows: serde_json::Value = serde_json::from_str(&fleet.keys(&["facts", "web07", "--json"])?)?;
        ensure!(rows[0]["frozen"]["hostname"] == "db-x" && rows[0]["held"].is_null(), "{rows}");
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

const ERASE: &str = "\x1b[1A\x1b[2K";

/// Item 9: a job result whose error and diff carry `ESC[1A ESC[2K` prints
/// escaped from `jobs <id>`; an event whose tag carries them is refused on
/// arrival.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_escapes_from_an_agent_print_escaped_and_such_tags_are_refused() {
    let mut fleet = Fleet::start(&[]).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        let mut raw = RawAgent::connect(&listen, "evil01", facts("evil01")).await?;
        let job = raw.next_job().await?;
        let state = StateResult {
            id: "motd".into(),
            kind: "file.managed".into(),
            outcome: Outcome::Failed { error: format!("{ERASE}all is well") },
            diff: Some(format!("--- a\n+++ b\n+{ERASE}hidden\n")),
            duration_us: 1,
        };
        raw.send(&AgentMessage::JobResult(JobResult { job: job.id, results: vec![state] })).await?;
        let ret = fleet.wait_for("the result", |e| e.tag.contains("/ret/evil01") && e.data()["failed"] == true).await?;
        let jid = ret.job().context("job id")?.to_owned();

        let bad = Event::new(format!("halite/beacon/evil01/x{ERASE}"), "evil01", Value::map());
        raw.send(&AgentMessage::Event(bad)).await?;
        let long = Event::new(format!("halite/beacon/evil01/{}", "x".repeat(300)), "evil01", Value::map());
        raw.send(&AgentMessage::Event(long)).await?;
        raw.raise("after", Value::map()).await?;
        // One connection's messages are handled in order: once `after` is
        // published, the two before it were refused or published.
        fleet.wait_for("the event after", |e| e.tag == "halite/beacon/evil01/after").await?;
        ensure!(!fleet.seen.iter().any(|e| e.tag.contains('\x1b') || e.tag.len() > 256), "a refused tag was published");

        let mut shown = String::new();
        wait_until("the result in halite.db", || {
            shown = fleet.cli(&["jobs", &jid]).unwrap_or_default();
            shown.contains("all is well")
        })
        .await?;
        ensure!(!shown.contains("\x1b[1A") && !shown.contains("\x1b[2K"), "raw escapes printed: {shown:?}");
        ensure!(shown.contains("\\x1b[1A\\x1b[2Kall is well"), "{shown:?}");
        ensure!(shown.contains("\\x1b[1A\\x1b[2Khidden"), "the diff: {shown:?}");
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// Item 14: a data dir others can write is refused by the master (before
/// it makes or reads a key), by the agent, and by the operator's CLI,
/// which does not talk to a socket planted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_others_can_write_is_refused_by_master_agent_and_cli() {
    let dir = tempfile::Builder::new().prefix("halite-e2e-").tempdir().unwrap();
    let binaries = binaries();
    let states = dir.path().join("states");
    halite_master::example::write(&states).unwrap();

    let data = dir.path().join("master-data");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o777).unwrap();
    let config = dir.path().join("master.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: tcp://127.0.0.1:0\npublish: tcp://127.0.0.1:0\nstates: {}\ndata_dir: {}\n",
            states.display(),
            data.display()
        ),
    )
    .unwrap();
    let mut master = process(&binaries.master);
    master.arg("run").arg("--config").arg(&config);
    let out = CommandOutput::of(master).await.unwrap();
    assert_ne!(out.code, 0, "the master started: {out:?}");
    assert!(out.stderr.contains(&data.display().to_string()) && out.stderr.contains("chmod go-w"), "{out:?}");
    assert!(!data.join("master.key").exists(), "the master made a key in a dir others can write");

    // A fake control socket planted by another user: the CLI refuses the
    // data dir and never connects.
    let planted = std::os::unix::net::UnixListener::bind(data.join("control.sock")).unwrap();
    planted.set_nonblocking(true).unwrap();
    let mut keys = process(&binaries.master);
    keys.args(["keys", "list", "--data-dir"]).arg(&data);
    let out = CommandOutput::of(keys).await.unwrap();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("refusing to trust") && out.stderr.contains(&data.display().to_string()), "{out:?}");
    assert!(
        matches!(planted.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the CLI talked to the planted socket"
    );

    let agent_data = dir.path().join("agent-data");
    std::fs::create_dir(&agent_data).unwrap();
    chmod(&agent_data, 0o757).unwrap();
    let agent_config = dir.path().join("agent.yaml");
    std::fs::write(
        &agent_config,
        format!(
            "id: victim\nmaster: tcp://127.0.0.1:9\ntofu: true\ndata_dir: {}\nroot: {}\n",
            agent_data.display(),
            dir.path().join("root").display()
        ),
    )
    .unwrap();
    let mut agent = process(&binaries.agent);
    agent.arg("run").arg("--config").arg(&agent_config);
    let out = CommandOutput::of(agent).await.unwrap();
    assert_ne!(out.code, 0, "the agent started: {out:?}");
    assert!(out.stderr.contains(&agent_data.display().to_string()) && out.stderr.contains("everyone"), "{out:?}");
    assert!(!agent_data.join("agent.key").exists());
}

/// Item 15: `auto_accept` globs with nothing to check but the id are a
/// start-up refusal that names the file and the way out, not a warning in
/// a log; written down (`trust_id_alone`), they start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_accept_trusting_ids_alone_must_be_written_down() {
    let dir = tempfile::Builder::new().prefix("halite-e2e-").tempdir().unwrap();
    let binaries = binaries();
    let states = dir.path().join("states");
    halite_master::example::write(&states).unwrap();
    let config = dir.path().join("master.yaml");
    let base = format!(
        "listen: tcp://127.0.0.1:0\npublish: tcp://127.0.0.1:0\nstates: {}\ndata_dir: {}\nauto_accept: ['web*']\n",
        states.display(),
        dir.path().join("data").display()
    );
    std::fs::write(&config, &base).unwrap();
    let mut master = process(&binaries.master);
    master.arg("run").arg("--config").arg(&config);
    let out = CommandOutput::of(master).await.unwrap();
    assert_ne!(out.code, 0, "the master started: {out:?}");
    assert!(
        out.stderr.contains(&config.display().to_string())
            && out.stderr.contains("enrolment.token_file")
            && out.stderr.contains("trust_id_alone"),
        "{out:?}"
    );
    assert!(!dir.path().join("data").join("master.key").exists(), "the refusal came after the master made its key");

    std::fs::write(&config, format!("{base}enrolment:\n  trust_id_alone: true\n")).unwrap();
    let mut check = process(&binaries.master);
    check.arg("check").arg("--config").arg(&config);
    let out = CommandOutput::of(check).await.unwrap();
    assert_eq!(out.code, 0, "{out:?}");
}

/// Item 14: two bytes that are not UTF-8 in `master.pub` once made the
/// agent pin the next master it met. Now it refuses, names the file, and
/// the master never even sees its hello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_pin_is_a_refusal_not_a_re_pin() {
    let fleet = Fleet::start(&[]).await.unwrap();
    let result = async {
        let dir = fleet.dir.path().join("victim");
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        chmod(&data, 0o700)?;
        let pin = data.join("master.pub");
        std::fs::write(&pin, b"\xff\xfe")?;
        chmod(&pin, 0o600)?;
        let config = dir.join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "id: victim\nmaster: {}\ntofu: true\ndata_dir: {}\nroot: {}\n",
                fleet.master().listen,
                data.display(),
                dir.join("root").display()
            ),
        )?;
        let log = dir.join("agent.log");
        let mut agent = process(&fleet.binaries.agent);
        agent
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        let mut child = agent.spawn()?;
        let shown = pin.display().to_string();
        wait_until("the refusal in the agent's log", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("Refusing to talk to this master") && text.contains(&shown) && text.contains("not text")
        })
        .await?;
        ensure!(std::fs::read(&pin)? == b"\xff\xfe", "the pin was rewritten");
        ensure!(fleet.keys(&["list"])?.contains("no keys yet"), "the master saw the agent's hello");
        child.kill().await?;
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// Item 15: with an enrolment token, a squatter that claims `web05` first
/// without it stays pending, the real `web05` with it is accepted (the
/// squatter's key retired), and pending keys stop at `pending_max`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatter_without_the_token_stays_pending_and_pending_keys_are_capped() {
    let secrets = tempfile::Builder::new().prefix("halite-e2e-").tempdir().unwrap();
    let token = secrets.path().join("enrol.token");
    std::fs::write(&token, "a3f1c9e07b5d4e2a8c6f\n").unwrap();
    chmod(&token, 0o600).unwrap();
    let yaml = format!("enrolment:\n  token_file: {}\n  pending_max: 3\n", token.display());
    let mut fleet = Fleet::start_with_master_config(&[], &yaml).await.unwrap();
    let result = async {
        let listen = fleet.master().listen.clone();
        let mut squatter = RawAgent::connect(&listen, "web05", facts("web05")).await?;
        let answers = squatter.barrier().await?;
        ensure!(
            answers.iter().any(|m| matches!(m, MasterMessage::NotAccepted { .. })),
            "the squatter was let in: {answers:?}"
        );
        fleet.add_agent_with("web05", &format!("enrol_token_file: {}\n", token.display())).await?;
        let keys: serde_json::Value = serde_json::from_str(&fleet.keys(&["list", "--json"])?)?;
        let web05: Vec<&serde_json::Value> =
            keys.as_array().context("a list")?.iter().filter(|k| k["id"] == "web05").collect();
        ensure!(web05.len() == 1 && web05[0]["status"] == "accepted", "{keys}");

        // Six new ids without the token: three are kept pending, three refused.
        let mut squatters = Vec::new();
        for i in 0..6 {
            squatters.push(RawAgent::connect(&listen, &format!("squat{i}"), facts("squat")).await?);
        }
        let log = fleet.master().log.clone();
        wait_until("three refusals", || {
            std::fs::read_to_string(&log).unwrap_or_default().matches("enrolment.pending_max").count() >= 3
        })
        .await?;
        let keys: serde_json::Value = serde_json::from_str(&fleet.keys(&["list", "--json"])?)?;
        let pending = keys.as_array().context("a list")?.iter().filter(|k| k["status"] == "pending").count();
        ensure!(pending == 3, "{keys}");
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// Item 10: a black-holed webhook (a host that takes the connection and
/// never answers) and a targeted agent that never answers its job do not
/// delay web01's restore. Both slow reactors come first in the file and
/// fire on the same drift; the restore's result arrives while both are
/// still pending (neither has fired or failed: the webhook cannot end
/// before its 30 s × 3 tries, the job before its 60 s timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_webhook_and_a_silent_target_do_not_delay_a_restore() {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    let (taken, mut took) = tokio::sync::mpsc::channel(4);
    let black_hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hole.accept().await {
            held.push(stream);
            let _ = taken.try_send(());
        }
    });
    let reactors = format!(
        "- name: page\n  on: halite/beacon/*/motd\n  webhook:\n    url: https://127.0.0.1:{port}/hook\n    timeout: 30s\n    retries: 3\n\
         - name: fan-out\n  on: halite/beacon/web01/motd\n  target: L@ghost01\n  apply: [motd]\n\
         - name: restore-motd\n  on: halite/beacon/*/motd\n  apply: [motd]\n"
    );
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], &[("reactors.yaml", &reactors)]).await.unwrap();
    let result = async {
        let mut ghost = RawAgent::connect(&fleet.master().listen, "ghost01", facts("ghost01")).await?;
        // Its start-up apply, never answered.
        ghost.next_job().await?;
        let motd = fleet.agent("web01").path("/etc/motd");
        let desired = std::fs::read_to_string(&motd)?;
        std::fs::write(&motd, "drifted\n")?;
        let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        let ret = fleet.wait_for("web01's restore", |e| e.tag.contains("/ret/web01")).await?;
        ensure!(ret.data()["failed"] == false, "{}", ret.data());
        ensure!(std::fs::read_to_string(&motd)? == desired, "not restored");
        // Both slow actions are in flight: the webhook's connection is
        // held by the black hole, the ghost holds its fan-out job.
        tokio::time::timeout(halite_e2e::WAIT, took.recv()).await?.context("the webhook never connected")?;
        let cause = drift.id().to_owned();
        loop {
            let job = ghost.next_job().await?;
            if job.cause_event.map(|id| id.to_string()) == Some(cause.clone()) {
                break;
            }
        }
        let finished: Vec<&str> = fleet
            .seen
            .iter()
            .filter(|e| e.tag.starts_with("halite/reactor/page/") || e.tag.starts_with("halite/reactor/fan-out/"))
            .map(|e| e.tag.as_str())
            .collect();
        ensure!(finished.is_empty(), "a slow reaction ended before the restore: {finished:?}");
        Ok(())
    }
    .await;
    black_hole.abort();
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// Item 16: a FIFO named as a `source` once hung `check` (and the reload
/// that read it); a hard link to a file outside the tree loaded its
/// content. Both are refused, each naming the source; `check` ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_hard_link_out_of_the_tree_as_a_source_is_refused_without_hanging() {
    let dir = tempfile::Builder::new().prefix("halite-e2e-").tempdir().unwrap();
    let states = dir.path().join("states");
    halite_master::example::write(&states).unwrap();
    std::fs::create_dir_all(states.join("files")).unwrap();
    nix::unistd::mkfifo(&states.join("files/fifo.conf"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let outside = dir.path().join("shadow");
    std::fs::write(&outside, "root-only secret\n").unwrap();
    std::fs::hard_link(&outside, states.join("files/linked.conf")).unwrap();
    std::fs::write(
        states.join("sources.yaml"),
        "from-fifo:\n  file.managed:\n    path: /etc/a.conf\n    source: files/fifo.conf\n\
         from-link:\n  file.managed:\n    path: /etc/b.conf\n    source: files/linked.conf\n",
    )
    .unwrap();
    std::fs::write(states.join("top.yaml"), "'*': [motd, sources]\n").unwrap();
    let mut check = process(&binaries().master);
    check.arg("check").arg("--states").arg(&states);
    // CommandOutput::of bounds the wait: a hang is a failure, not a stall.
    let out = CommandOutput::of(check).await.unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("files/fifo.conf") && text.contains("FIFO"), "{text}");
    assert!(text.contains("files/linked.conf") && text.contains("hard links"), "{text}");
    assert!(!text.contains("root-only secret"), "{text}");
}

/// Item 16, on a running master: a reload that meets a FIFO source fails
/// (and says so) instead of hanging, and the master keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_meeting_a_fifo_source_fails_and_the_master_serves_on() {
    let mut fleet = Fleet::start(&["web01"]).await.unwrap();
    let result = async {
        std::fs::create_dir_all(fleet.states.join("files"))?;
        nix::unistd::mkfifo(&fleet.states.join("files/fifo.conf"), nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        fleet.edit_tree(
            "fifo.yaml",
            "from-fifo:\n  file.managed:\n    path: /etc/a.conf\n    source: files/fifo.conf\n",
        )?;
        fleet.edit_tree("top.yaml", "'*': [motd, fifo]\n")?;
        let failed = fleet.wait_for("the failed reload", |e| e.tag == "halite/master/tree/failed").await?;
        ensure!(failed.data().to_string().contains("FIFO"), "{}", failed.data());
        let motd = fleet.agent("web01").path("/etc/motd");
        std::fs::write(&motd, "drifted after the reload\n")?;
        let event = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/motd").await?;
        let ret = fleet.wait_for_restore_of(&event).await?;
        ensure!(ret.data()["failed"] == false, "{}", ret.data());
        Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
