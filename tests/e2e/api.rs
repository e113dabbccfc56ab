//! The HTTPS API against a real master and real agents, with a real HTTP
//! client (reqwest over rustls, trusting the master's self-signed
//! certificate and nothing else): tokens and roles, the audit log and its
//! chain, keys, apply with batch/canary/max_failures, the SSE stream with
//! `Last-Event-ID`, and schemathesis against the OpenAPI document.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use halite_e2e::{Fleet, WAIT};

/// master.yaml for these tests: the API on a free loopback port, and a
/// role that may read and apply on web* only.
const API_YAML: &str =
    "api:\n  listen: 127.0.0.1:0\nroles:\n  web-ops:\n    verbs: [read, apply]\n    target: 'web*'\n";

/// A client of one master's API.
struct Api {
    client: reqwest::Client,
    url: String,
}

impl Api {
    /// A client that trusts the certificate in the master's data dir.
    fn of(fleet: &Fleet) -> anyhow::Result<Api> {
        let url = fleet.master().api.clone().context("the ready line has no api=")?;
        Ok(Api { client: client(&fleet.master_data_dir())?, url })
    }

    fn get(&self, token: &str, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.url)).bearer_auth(token)
    }

    fn post(&self, token: &str, path: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// A JSON answer and its status.
    async fn json(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let value = if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes)? };
        Ok((status, value))
    }

    /// `POST /api/v1/apply`'s NDJSON stream, read to its end.
    async fn apply(&self, token: &str, body: serde_json::Value) -> anyhow::Result<(u16, Vec<serde_json::Value>)> {
        let response = self.post(token, "/api/v1/apply", body).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        if status != 200 {
            return Ok((status, vec![serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))]));
        }
        let lines = text.lines().map(serde_json::from_str).collect::<Result<Vec<serde_json::Value>, _>>()?;
        Ok((status, lines))
    }
}

fn client(data_dir: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(data_dir.join("api.crt")).context("the master's API certificate")?;
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?)
}

/// `halite-master tokens create NAME --role ROLE`: the token printed.
fn token(fleet: &Fleet, name: &str, role: &str) -> anyhow::Result<String> {
    Ok(fleet.cli(&["tokens", "create", name, "--role", role])?.trim().to_owned())
}

/// The `line` of each line of an apply stream.
fn kinds(lines: &[serde_json::Value]) -> Vec<&str> {
    lines.iter().map(|l| l["line"].as_str().unwrap_or("?")).collect()
}

/// A `web-ops` token sees and applies to web01 only; its apply to db01
/// (or to `*`, which reaches db01) is refused, sends nothing, and is in
/// the audit log, over the API and through the CLI with `HALITE_TOKEN`
/// alike; the log's chain verifies, and an edit made to halite.db behind
/// SQLite's triggers is named by `audit --verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_and_refusals_are_audited() {
    let mut fleet = Fleet::start_with_master_config(&["web01", "db01"], API_YAML).await.unwrap();
    if let Err(error) = roles(&mut fleet).await {
        fleet.fail(&error);
    }
}

async fn roles(fleet: &mut Fleet) -> anyhow::Result<()> {
    let api = Api::of(fleet)?;
    let admin = token(fleet, "root", "admin")?;
    let ops = token(fleet, "ops", "web-ops")?;
    assert!(ops.starts_with("hlt_") && ops != admin);

    let (status, _) = Api::json(api.client.get(format!("{}/api/v1/agents", api.url))).await?;
    assert_eq!(status, 401, "no token");
    let (status, _) = Api::json(api.get("hlt_not-a-token", "/api/v1/agents")).await?;
    assert_eq!(status, 401, "an unknown token");
    let (status, agents) = Api::json(api.get(&ops, "/api/v1/agents")).await?;
    assert_eq!(status, 200);
    let ids: Vec<&str> = agents.as_array().context("a list")?.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["web01"], "web-ops sees web* only");
    let (_, agents) = Api::json(api.get(&admin, "/api/v1/agents")).await?;
    assert_eq!(agents.as_array().map(Vec::len), Some(2), "{agents}");
    assert_eq!(agents[0]["connected"], true);
    assert_eq!(agents[0]["key"], "accepted");

    let jobs_before = fleet.cli(&["jobs", "--json"])?;
    for target in ["db01", "*"] {
        let (status, answer) = api.apply(&ops, serde_json::json!({ "target": target, "states": ["motd"] })).await?;
        assert_eq!(status, 403, "{target}: {answer:?}");
        let error = answer[0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("db01") && error.contains("web*"), "{error}");
    }
    assert_eq!(fleet.cli(&["jobs", "--json"])?, jobs_before, "a refused apply sends nothing");
    let (status, lines) =
        api.apply(&ops, serde_json::json!({ "target": "web01", "states": ["motd"], "test": true })).await?;
    assert_eq!(status, 200);
    assert_eq!(kinds(&lines), ["started", "agent", "done"], "{lines:?}");
    assert_eq!(lines[1]["result"]["agent"], "web01");
    assert_eq!(lines[1]["result"]["status"], "answered");

    // The command line, with the same token, is held to the same role.
    let refused = fleet.master_command(&["--token", &ops, "apply", "db01", "motd"]).await?;
    assert_ne!(refused.code, 0, "the CLI with a web-ops token applied to db01");
    assert!(refused.stderr.contains("web*"), "{}", refused.stderr);
    let (status, _) = Api::json(api.get(&ops, "/api/v1/audit")).await?;
    assert_eq!(status, 403, "web-ops reads no audit log");

    let (status, rows) = Api::json(api.get(&admin, "/api/v1/audit?limit=100")).await?;
    assert_eq!(status, 200);
    let rows = rows.as_array().context("a list")?;
    let refusals: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r["who"] == "token:ops" && r["result"].as_str().is_some_and(|r| r.starts_with("refused")))
        .map(|r| (r["what"].as_str().unwrap_or(""), r["target"].as_str().unwrap_or("")))
        .collect();
    // Newest first: the CLI's, then the API's two.
    assert_eq!(refusals, [("apply", "db01"), ("apply", "*"), ("apply", "db01")], "{rows:#?}");
    assert!(
        rows.iter()
            .any(|r| r["who"] == "token:ops" && r["what"] == "apply --test" && r["result"] == "ok: sent to web01")
    );
    assert!(rows.iter().any(|r| r["what"] == "tokens create --role web-ops" && r["target"] == "ops"));
    let (_, verified) = Api::json(api.get(&admin, "/api/v1/audit/verify")).await?;
    assert_eq!(verified["ok"], true, "{verified}");

    let exported = fleet.cli(&["audit", "--json"])?;
    assert_eq!(exported.lines().count(), rows.len(), "every row exported, one JSON line each");
    assert!(fleet.cli(&["audit", "--verify"])?.starts_with("ok: "));
    let db = fleet.master_data_dir().join("halite.db");
    {
        let connection = rusqlite::Connection::open(&db)?;
        connection.busy_timeout(WAIT)?;
        connection.execute_batch(
            "DROP TRIGGER audit_append_only_update;
             UPDATE audit SET result = 'ok' WHERE seq = 3;",
        )?;
    }
    let tampered = fleet.master_command(&["audit", "--verify"]).await?;
    assert_eq!(tampered.code, 1, "an edited audit row passed --verify: {tampered:?}");
    assert!(tampered.stdout.contains("audit row 3") && tampered.stdout.contains("edited"), "{}", tampered.stdout);

    // Revoked, the token is refused at once.
    fleet.cli(&["tokens", "revoke", "ops"])?;
    let (status, _) = Api::json(api.get(&ops, "/api/v1/agents")).await?;
    assert_eq!(status, 401, "a revoked token");
    Ok(())
}

/// Keys through the API: listed with their fingerprints, rejected (the
/// agent's session ends), accepted again, deleted; a role without `keys`
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_accepted_rejected_and_deleted() {
    let mut fleet = Fleet::start_with_master_config(&["web01"], API_YAML).await.unwrap();
    if let Err(error) = keys(&mut fleet).await {
        fleet.fail(&error);
    }
}

async fn keys(fleet: &mut Fleet) -> anyhow::Result<()> {
    let api = Api::of(fleet)?;
    let admin = token(fleet, "root", "admin")?;
    let ops = token(fleet, "ops", "web-ops")?;
    let (status, keys) = Api::json(api.get(&admin, "/api/v1/keys")).await?;
    assert_eq!(status, 200);
    assert_eq!(keys[0]["id"], "web01");
    assert_eq!(keys[0]["status"], "accepted");
    let fingerprint = keys[0]["fingerprint"].as_str().context("fingerprint")?.to_owned();
    assert_eq!(fingerprint.len(), 64);

    let (status, _) = Api::json(api.post(&ops, "/api/v1/keys/web01/reject", serde_json::json!({}))).await?;
    assert_eq!(status, 403, "web-ops has no `keys`");
    let (status, rejected) = Api::json(api.post(&admin, "/api/v1/keys/web01/reject", serde_json::json!({}))).await?;
    assert_eq!(status, 200, "{rejected}");
    assert_eq!(rejected[0]["status"], "rejected");
    fleet.wait_for("web01's session cut", |e| e.tag == "halite/agent/web01/disconnected").await?;
    let path = format!("/api/v1/keys/{fingerprint}/accept");
    let (status, accepted) = Api::json(api.post(&admin, &path, serde_json::json!({}))).await?;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted[0]["status"], "accepted");
    let (status, _) = Api::json(api.post(&admin, "/api/v1/keys/nobody/accept", serde_json::json!({}))).await?;
    assert_eq!(status, 404, "no key matches");
    let (status, deleted) =
        Api::json(api.client.delete(format!("{}/api/v1/keys/web01", api.url)).bearer_auth(&admin)).await?;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted[0]["fingerprint"], fingerprint.as_str());
    let (_, rows) = Api::json(api.get(&admin, "/api/v1/audit")).await?;
    let whats: Vec<&str> = rows
        .as_array()
        .context("a list")?
        .iter()
        .filter(|r| r["who"] == "token:root")
        .filter_map(|r| r["what"].as_str())
        .collect();
    // Newest first; `nobody` matched no key, changed nothing, and is not logged.
    assert_eq!(whats, ["keys delete", "keys accept", "keys reject"], "{rows:#}");
    Ok(())
}

/// `batch`, `canary` and `max_failures` stop where they should: a state
/// that fails everywhere stops a canary of one after its first agent and
/// `max_failures: 2` (one at a time) after the second; a state that
/// succeeds goes to every agent, one at a time, past the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_rollouts_stop_where_they_should() {
    let files = [("broken.yaml", "broken:\n  cmd.run:\n    name: [\"false\"]\n")];
    let mut fleet =
        Fleet::start_custom_with_master_config(&["web01", "web02", "web03"], &files, API_YAML).await.unwrap();
    if let Err(error) = rollouts(&mut fleet).await {
        fleet.fail(&error);
    }
}

async fn rollouts(fleet: &mut Fleet) -> anyhow::Result<()> {
    let api = Api::of(fleet)?;
    let admin = token(fleet, "root", "admin")?;
    let agents = |lines: &[serde_json::Value]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["line"] == "agent")
            .map(|l| l["result"]["agent"].as_str().unwrap_or("").to_owned())
            .collect()
    };

    let (status, lines) =
        api.apply(&admin, serde_json::json!({ "target": "web*", "states": ["broken"], "canary": 1 })).await?;
    assert_eq!(status, 200);
    assert_eq!(kinds(&lines), ["started", "agent", "stopped", "done"], "{lines:#?}");
    assert_eq!(agents(&lines), ["web01"], "the canary is the first agent by id");
    assert_eq!(lines[1]["result"]["failed"], true);
    assert_eq!(lines[2]["skipped"], serde_json::json!(["web02", "web03"]));
    assert!(lines[2]["reason"].as_str().unwrap_or_default().contains("canary web01 failed"), "{}", lines[2]);

    let body = serde_json::json!({ "target": "web*", "states": ["broken"], "batch": 1, "max_failures": 2 });
    let (_, lines) = api.apply(&admin, body).await?;
    assert_eq!(kinds(&lines), ["started", "agent", "agent", "stopped", "done"], "{lines:#?}");
    assert_eq!(agents(&lines), ["web01", "web02"]);
    assert_eq!(lines[3]["skipped"], serde_json::json!(["web03"]));

    let body = serde_json::json!({ "target": "web*", "states": ["motd"], "batch": 1, "canary": 1, "max_failures": 1 });
    let (_, lines) = api.apply(&admin, body).await?;
    assert_eq!(kinds(&lines), ["started", "agent", "agent", "agent", "done"], "{lines:#?}");
    assert_eq!(agents(&lines), ["web01", "web02", "web03"], "one at a time, in order");

    // The jobs never sent are in no record; those sent are, with their cause.
    let (_, jobs) = Api::json(api.get(&admin, "/api/v1/jobs?state=broken&outcome=failed")).await?;
    let jobs = jobs.as_array().context("a list")?;
    assert_eq!(jobs.len(), 3, "1 canary + 2 before max_failures: {jobs:#?}");
    assert!(jobs.iter().all(|j| j["cause"].as_str().is_some_and(|c| c.contains("POST /api/v1/apply by token:root"))));
    let (status, job) =
        Api::json(api.get(&admin, &format!("/api/v1/jobs/{}", jobs[0]["jid"].as_str().unwrap_or("")))).await?;
    assert_eq!(status, 200);
    assert_eq!(job["agents"][0]["states"][0]["outcome"], "failed", "{job}");
    let (_, web02) = Api::json(api.get(&admin, "/api/v1/agents/web02")).await?;
    assert_eq!(web02["agent"]["id"], "web02");
    assert!(web02["jobs"].as_array().is_some_and(|j| j.len() >= 3), "{web02}");
    Ok(())
}

/// One Server-Sent Event.
#[derive(Debug, Default, Clone)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: serde_json::Value,
}

/// An open `GET /api/v1/events` stream.
struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    async fn open(api: &Api, token: &str, last_event_id: Option<u64>) -> anyhow::Result<SseStream> {
        let mut request = api.get(token, "/api/v1/events?tag=halite/**");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await?;
        anyhow::ensure!(response.status() == 200, "events: {}", response.status());
        Ok(SseStream { response, buffer: String::new() })
    }

    /// The next event (comments, the keep-alives, skipped).
    async fn next(&mut self) -> anyhow::Result<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut sse = Sse::default();
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id:") {
                        sse.id = id.trim().parse().ok();
                    } else if let Some(event) = line.strip_prefix("event:") {
                        sse.event = event.trim().to_owned();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        sse.data = serde_json::from_str(data.trim())?;
                    }
                }
                if !sse.event.is_empty() {
                    return Ok(sse);
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk()).await.context("no SSE event in time")??;
            let chunk = chunk.context("the stream ended")?;
            self.buffer.push_str(std::str::from_utf8(&chunk)?);
        }
    }

    /// Events up to the first `wanted` one, which is returned with them
    /// (keep-alives do not extend the wait).
    async fn until(&mut self, mut wanted: impl FnMut(&Sse) -> bool) -> anyhow::Result<Vec<Sse>> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let sse = self.next().await?;
                let done = wanted(&sse);
                seen.push(sse);
                if done {
                    return anyhow::Ok(());
                }
            }
        })
        .await;
        found.with_context(|| format!("the awaited SSE event did not come; came: {seen:?}"))??;
        Ok(seen)
    }
}

/// A predicate over SSE events: true at the result of the restore job
/// caused by `drift` (its `halite/job/<jid>/new` names the cause, then
/// `halite/job/<jid>/ret/<agent>` is the result).
fn restore_of(drift: &Sse) -> impl FnMut(&Sse) -> bool + use<> {
    let cause = drift.data["id"].as_str().unwrap_or_default().to_owned();
    let mut job: Option<String> = None;
    move |sse: &Sse| {
        let tag = sse.data["tag"].as_str().unwrap_or_default();
        let jid = tag.strip_prefix("halite/job/").and_then(|rest| rest.split('/').next());
        if tag.ends_with("/new") && sse.data["data"]["cause"] == cause.as_str() {
            job = jid.map(str::to_owned);
        }
        job.is_some() && jid == job.as_deref() && tag.contains("/ret/")
    }
}

/// SSE delivers a drift and its restore, numbered; a client that
/// reconnects with `Last-Event-ID` gets exactly what it missed meanwhile
/// (another drift and its restore), starting at the next number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_drift_and_restore_and_resumes_after_a_reconnect() {
    let mut fleet = Fleet::start_with_master_config(&["web01"], API_YAML).await.unwrap();
    if let Err(error) = sse(&mut fleet).await {
        fleet.fail(&error);
    }
}

async fn sse(fleet: &mut Fleet) -> anyhow::Result<()> {
    let api = Api::of(fleet)?;
    let admin = token(fleet, "root", "admin")?;
    let mut stream = SseStream::open(&api, &admin, None).await?;
    let motd = fleet.agent("web01").path("/etc/motd");
    std::fs::write(&motd, "drifted once\n")?;
    let seen = stream.until(|s| s.data["tag"] == "halite/beacon/web01/motd").await?;
    let drift = seen.last().context("the drift")?.clone();
    assert_eq!(drift.event, "event");
    assert_eq!(drift.data["agent"], "web01");
    let restored = stream.until(restore_of(&drift)).await?;
    let ret = restored.last().context("the restore")?;
    assert_eq!(ret.data["data"]["failed"], false, "{:?}", ret.data);
    let last = ret.id.context("an id")?;
    assert!(last > drift.id.context("an id")?, "numbered in order");
    drop(stream);

    // The bus saw the same; read past it there too.
    let first_on_bus = fleet.wait_for("the first drift", |e| e.tag == "halite/beacon/web01/motd").await?;
    assert_eq!(first_on_bus.id(), drift.data["id"], "the SSE event is the bus's event");
    fleet.wait_for_restore_of(&first_on_bus).await?;

    // Missed while away: a second drift and its restore (seen on the bus).
    std::fs::write(&motd, "drifted twice\n")?;
    let second = fleet.wait_for("the second drift", |e| e.tag == "halite/beacon/web01/motd").await?;
    fleet.wait_for_restore_of(&second).await?;
    let mut stream = SseStream::open(&api, &admin, Some(last)).await?;
    let first = stream.next().await?;
    assert_eq!(first.id, Some(last + 1), "the replay starts right after the last id seen: {first:?}");
    let mut replayed = vec![first.clone()];
    if first.data["id"] != second.id() {
        replayed.extend(stream.until(|s| s.data["id"] == second.id()).await?);
    }
    let drift = replayed.last().context("the second drift")?.clone();
    replayed.extend(stream.until(restore_of(&drift)).await?);
    let ids: Vec<u64> = replayed.iter().filter_map(|s| s.id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "no gap in the replay: {ids:?}");
    assert_eq!(replayed.last().map(|s| s.data["data"]["failed"].clone()), Some(serde_json::json!(false)));

    // The restores' receipts, in the agent's detail (kept just after the
    // answer, so looked for until they are there).
    let deadline = tokio::time::Instant::now() + WAIT;
    let detail = loop {
        let (_, detail) = Api::json(api.get(&admin, "/api/v1/agents/web01")).await?;
        // Both corrective ones: the start-up apply's intentional receipts
        // alone make two rows already.
        let corrective =
            detail["receipts"].as_array().map_or(0, |r| r.iter().filter(|r| r["kind"] == "corrective").count());
        if corrective >= 2 {
            break detail;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no receipts for both restores: {detail}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(detail["receipts"][0]["kind"], "corrective", "{detail}");
    assert_eq!(detail["receipts"][0]["path"], "/etc/motd", "{detail}");
    assert!(detail["agent"]["last_restore_latency_us"].as_i64().is_some(), "{detail}");
    assert!(detail["drift_counts"][0]["drifts"].as_i64().is_some_and(|n| n >= 2), "{detail}");
    Ok(())
}

/// Schemathesis (PyPI) checks the server against its OpenAPI document: no
/// failures. It runs against a master with no agent connected (so no
/// generated apply or command reaches a host), with an admin token.
/// Skipped only when schemathesis is not installed and
/// `HALITE_REQUIRE_SCHEMATHESIS` is unset (`.ci/run` installs it and sets
/// it; `HALITE_SCHEMATHESIS` names the program when it is not on PATH).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failures() {
    let program = std::env::var("HALITE_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let installed = halite_e2e::blocking_process(&program).arg("--version").output().is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var_os("HALITE_REQUIRE_SCHEMATHESIS").is_none(),
            "HALITE_REQUIRE_SCHEMATHESIS is set and `{program}` does not run (pip install schemathesis)"
        );
        eprintln!("skipped: schemathesis is not installed (pip install schemathesis; .ci/run does)");
        return;
    }
    let mut fleet = Fleet::start_with_master_config(&[], API_YAML).await.unwrap();
    if let Err(error) = schemathesis(&mut fleet, &program).await {
        fleet.fail(&error);
    }
}

async fn schemathesis(fleet: &mut Fleet, program: &str) -> anyhow::Result<()> {
    let admin = token(fleet, "schemathesis", "admin")?;
    let url = fleet.master().api.clone().context("api=")?;
    let report = fleet.dir.path().join("schemathesis");
    let mut command = halite_e2e::process(program);
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    command
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(format!("{url}/api/v1/openapi.json"))
        .args(["--checks", "all", "--max-examples", "30", "--workers", "1"])
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        .args(["--tls-verify", &fleet.master_data_dir().join("api.crt").display().to_string()])
        .arg("--report-dir")
        .arg(&report)
        // Its caches (.schemathesis, .hypothesis) go in the test's directory.
        .current_dir(fleet.dir.path())
        .env("NO_COLOR", "1");
    let output = tokio::time::timeout(Duration::from_secs(900), command.output())
        .await
        .context("schemathesis ran for 15 minutes")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
