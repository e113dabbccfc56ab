//! The operator's fleet commands against real processes: `cmd` runs a
//! program on the agents a target matches, `facts` shows what they said
//! about themselves.

use halite_e2e::{CommandOutput, Fleet, process};

/// `halite-master cmd ARGS… --data-dir <the master's> -- ARGV…`.
async fn cmd(fleet: &Fleet, args: &[&str], argv: &[&str]) -> anyhow::Result<CommandOutput> {
    let mut command = process(&fleet.binaries.master);
    command.arg("cmd").args(args).arg("--data-dir").arg(fleet.master_data_dir()).arg("--").args(argv);
    CommandOutput::of(command).await
}

/// Every matching agent runs the program; each one's exit code and output
/// come back; the runs are jobs in the history; a command's failure says
/// nothing about compliance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmd_runs_on_every_matching_agent_and_reports_each_exit_code() {
    let fleet = Fleet::start(&["web01", "web02", "db01"]).await.unwrap();
    let result = async {
        let script = "echo out; echo err >&2; exit 3";
        let out = cmd(&fleet, &["web*", "--json"], &["sh", "-c", script]).await?;
        assert_eq!(out.code, 1, "a non-zero exit is exit code 1: {out:?}");
        let mut lines: Vec<serde_json::Value> =
            out.stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        lines.sort_by(|a, b| a["agent"].as_str().cmp(&b["agent"].as_str()));
        assert_eq!(lines.len(), 2, "{out:?}");
        for (line, agent) in lines.iter().zip(["web01", "web02"]) {
            assert_eq!(line["agent"], agent, "{line}");
            assert_eq!(line["answered"], true, "{line}");
            assert_eq!(line["code"], 3, "{line}");
            assert_eq!(line["stdout"], "out\n", "{line}");
            assert_eq!(line["stderr"], "err\n", "{line}");
        }
        let jobs = fleet.cli(&["jobs", "--json"])?;
        let jobs: serde_json::Value = serde_json::from_str(&jobs)?;
        let recorded: Vec<&serde_json::Value> = jobs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| j["cause"].as_str().is_some_and(|c| c.starts_with("operator:halite-master cmd")))
            .collect();
        assert_eq!(recorded.len(), 2, "one job per agent: {jobs}");
        assert!(recorded.iter().all(|j| j["target"] == "web*" && j["failed"] == 1), "{jobs}");
        let agents: serde_json::Value = serde_json::from_str(&fleet.cli(&["agents", "--json"])?)?;
        for row in agents.as_array().into_iter().flatten() {
            assert_eq!(row["compliance"]["state"], "compliant", "a command is not enforcement: {row}");
        }

        // Text: each agent's exit code and output, then a summary.
        let out = cmd(&fleet, &["L@db01"], &["echo", "hello", "world"]).await?;
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(
            out.stdout,
            "db01: exit 0\n  hello world\n1 agents: 1 exited 0, 0 did not (exit code, timeout or signal), 0 did not answer\n"
        );

        // The timeout kills the program; the agent still answers.
        let out = cmd(&fleet, &["db01", "--timeout", "300ms", "--json"], &["sleep", "30"]).await?;
        assert_eq!(out.code, 1, "{out:?}");
        let line: serde_json::Value = serde_json::from_str(out.stdout.trim())?;
        assert_eq!((line["answered"].clone(), line["code"].clone()), (true.into(), serde_json::Value::Null), "{line}");
        assert!(line["error"].as_str().unwrap_or_default().contains("timed out"), "{line}");

        // No agent matched: exit code 4, nothing run.
        let out = cmd(&fleet, &["nothing*"], &["true"]).await?;
        assert_eq!(out.code, 4, "{out:?}");
        assert!(out.stderr.contains("matches no connected agent"), "{out:?}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// With `--batch 1` no agent's job is sent before the previous one has
/// returned: on the bus, each job's `new` follows the last one's `ret`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmd_batch_runs_one_agent_at_a_time() {
    let mut fleet = Fleet::start(&["web01", "web02", "web03"]).await.unwrap();
    let result = async {
        let out = cmd(&fleet, &["web*", "--batch", "1"], &["sleep", "0.2"]).await?;
        assert_eq!(out.code, 0, "{out:?}");
        // Our three jobs, as the bus saw them, in order.
        let mut order = Vec::new();
        while order.iter().filter(|(_, ret)| *ret).count() < 3 {
            let event = fleet
                .wait_for("the commands' jobs", |e| {
                    e.tag.starts_with("halite/job/")
                        && (e.data()["states"] == serde_json::json!(["halite-cmd"])
                            || e.data()["results"][0]["id"] == "halite-cmd")
                })
                .await?;
            order.push((event.job().unwrap_or_default().to_owned(), event.tag.contains("/ret/")));
        }
        for pair in order.chunks(2) {
            assert!(
                matches!(pair, [(new, false), (ret, true)] if new == ret),
                "each job returns before the next is sent: {order:?}"
            );
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// `facts` shows the facts named, for the agents the target matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_shows_the_named_facts_of_matching_agents() {
    let fleet = Fleet::start(&["web01", "db01"]).await.unwrap();
    let result = async {
        let out = fleet.master_command(&["facts", "web*", "id", "cpus", "no_such_fact", "--json"]).await?;
        assert_eq!(out.code, 0, "{out:?}");
        let facts = out.json()?;
        let cpus = facts["web01"]["cpus"].as_i64().unwrap_or_default();
        assert!(cpus >= 1, "{facts}");
        assert_eq!(facts, serde_json::json!({"web01": {"id": "web01", "cpus": cpus, "no_such_fact": null}}));
        let out = fleet.master_command(&["facts", "L@db01,web01", "id"]).await?;
        assert_eq!(out.stdout, "db01:\n  id: db01\nweb01:\n  id: web01\n", "{out:?}");
        let all = fleet.master_command(&["facts", "db01", "--json"]).await?.json()?;
        for name in ["id", "hostname", "os", "kernel", "cpus", "memory_bytes", "ips"] {
            assert!(all["db01"].get(name).is_some(), "{name} missing: {all}");
        }
        let out = fleet.master_command(&["facts", "nothing*"]).await?;
        assert_eq!(out.code, 4, "{out:?}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
