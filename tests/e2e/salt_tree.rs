//! A Salt-shaped tree (state files in subdirectories, a map.jinja, an
//! `import_yaml`, a pillar with a secret file, a top file matching
//! grains) served by a real master to two agents whose grains differ: each
//! gets the files rendered for it, byte for byte; a drift is restored with
//! the agent's own render; the secret pillar value is in the agent's file
//! but never in an event, a job result, a diff, the master's log, the
//! agent's log or anything the agent writes but its kept contents.

use halite_e2e::{Fleet, mode_of};

const SECRET: &str = "s3cr3t-db-pass-42";

const FILES: &[(&str, &str)] = &[
    (
        "top.sls",
        "base:\n  '*':\n    - common\n  'role:web':\n    - match: grain\n    - app\n  'G@role:db':\n    - match: compound\n    - app\n",
    ),
    (
        "common/init.sls",
        "{% set greeting = salt['pillar.get']('motd:greeting', 'hello') %}\n/etc/motd:\n  file.managed:\n    - makedirs: True\n    - contents: |\n        {{ greeting }} {{ grains['id'] }} ({{ grains.get('role') }})\n",
    ),
    ("app/defaults.yaml", "user: halite\n"),
    (
        "app/map.jinja",
        "{% import_yaml 'app/defaults.yaml' as defaults %}\n{% set app = salt['grains.filter_by']({'web': {'port': 80, 'name': 'frontend'}, 'db': {'port': 5432, 'name': 'database'}}, grain='role', merge=salt['pillar.get']('app:lookup')) %}\n{% do app.update(defaults) %}\n",
    ),
    (
        "app/init.sls",
        "{% from \"app/map.jinja\" import app with context %}\n/etc/app/app.conf:\n  file.managed:\n    - source: salt://{{ tpldir }}/files/app.conf.j2\n    - template: jinja\n    - makedirs: True\n    - mode: '0640'\n/etc/app/{{ app.name }}.role:\n  file.managed:\n    - makedirs: True\n    - contents: |\n        {{ app.name }} on {{ app.port }} as {{ app.user }} ({{ sls }}, {{ tpldir }})\n",
    ),
    (
        "app/files/app.conf.j2",
        "port={{ pillar.app.port }}\nrole={{ grains['role'] }}\nkernel={{ grains['kernel'] }}\npassword={{ salt['pillar.get']('app:password') }}\n",
    ),
    (
        "leak.sls",
        "{% set pw = salt['pillar.get']('app:password') %}\nlogin-check:\n  cmd.run:\n    - name: \"echo 'login failed for {{ pw }}' >&2; exit 3\"\n",
    ),
    ("dbcheck.sls", "check-db:\n  cmd.run:\n    - name: \"false {{ salt['pillar.get']('app:password') }}\"\n"),
    (
        "pillar/top.sls",
        "base:\n  '*':\n    - common\n  'role:web':\n    - match: grain\n    - web\n  'role:db':\n    - match: grain\n    - secrets.db\n",
    ),
    ("pillar/common.sls", "motd:\n  greeting: Welcome\napp:\n  port: 8000\n"),
    ("pillar/web.sls", "app:\n  port: 8080\n"),
    ("pillar/secrets/db.sls", "app:\n  password: s3cr3t-db-pass-42\n"),
    ("beacons.yaml", "'*':\n  app-conf:\n    file:\n      paths: [/etc/app/app.conf]\n"),
    ("reactors.yaml", "- name: restore-app\n  on: halite/beacon/*/app-conf\n  apply: [app]\n"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salt_tree_is_rendered_per_agent_and_its_secret_stays_out() {
    let mut fleet = Fleet::start_tree(&[], &["*"], FILES, &["top.yaml", "motd.yaml", "nginx.yaml"]).await.unwrap();
    if let Err(error) = scenario(&mut fleet).await {
        fleet.fail(&error);
    }
}

async fn scenario(fleet: &mut Fleet) -> anyhow::Result<()> {
    fleet.add_agent_with("web1", "grains: {role: web}\n").await?;
    fleet.add_agent_with("db1", "grains: {role: db}\nenforce_offline: true\n").await?;

    // The start-up apply: each agent's files, rendered for it.
    let expected = [
        ("web1", "/etc/motd", "Welcome web1 (web)\n".to_owned()),
        ("db1", "/etc/motd", "Welcome db1 (db)\n".to_owned()),
        ("web1", "/etc/app/app.conf", "port=8080\nrole=web\nkernel=Linux\npassword=\n".to_owned()),
        ("db1", "/etc/app/app.conf", format!("port=8000\nrole=db\nkernel=Linux\npassword={SECRET}\n")),
        ("web1", "/etc/app/frontend.role", "frontend on 80 as halite (app, app)\n".to_owned()),
        ("db1", "/etc/app/database.role", "database on 5432 as halite (app, app)\n".to_owned()),
    ];
    for (agent, path, content) in &expected {
        let file = fleet.agent(agent).path(path);
        assert_eq!(std::fs::read_to_string(&file)?, *content, "{agent}: {path}");
    }
    assert_eq!(mode_of(&fleet.agent("db1").path("/etc/app/app.conf")), 0o640);
    assert!(!fleet.agent("web1").path("/etc/app/database.role").exists(), "web1 got db1's state");
    assert!(!fleet.agent("db1").path("/etc/app/frontend.role").exists(), "db1 got web1's state");

    // A drift on each agent is restored with that agent's own render.
    let mut restores = Vec::new();
    for (agent, content) in [("db1", &expected[3].2), ("web1", &expected[2].2)] {
        let conf = fleet.agent(agent).path("/etc/app/app.conf");
        std::fs::write(&conf, "drifted\n")?;
        let tag = format!("halite/beacon/{agent}/app-conf");
        let event = fleet.wait_for("the drift", |e| e.tag == tag).await?;
        let ret = fleet.wait_for_restore_of(&event).await?;
        assert_eq!(ret.data()["failed"], false, "{agent}: {}", ret.data());
        assert_eq!(std::fs::read_to_string(&conf)?, *content, "{agent}: restored byte for byte");
        restores.push(ret.job().unwrap_or_default().to_owned());
    }

    // Secrets: a diff that holds one (the restore of db1's file) …
    let detail = fleet.master_command(&["jobs", &restores[0], "--json"]).await?;
    anyhow::ensure!(detail.code == 0, "jobs: {detail:?}");
    assert!(!detail.stdout.contains(SECRET), "the stored job result and diff: {}", detail.stdout);
    assert!(detail.stdout.contains("password=<secret>"), "the diff shows where: {}", detail.stdout);
    // … a failed command's error, in the job result and its event …
    let apply = fleet.master_command(&["apply", "db1", "dbcheck", "--json"]).await?;
    assert!(!apply.stdout.contains(SECRET) && !apply.stderr.contains(SECRET), "apply: {apply:?}");
    assert!(apply.stdout.contains("false <secret>"), "the error shows where: {apply:?}");
    let ret = fleet
        .wait_for("the check's result", |e| e.tag.contains("/ret/db1") && e.json.to_string().contains("false <secret>"))
        .await?;
    assert!(!ret.json.to_string().contains(SECRET), "{:?}", ret.json);
    // … and nothing on the bus or in the master's log ever held it.
    for event in &fleet.seen {
        assert!(!event.json.to_string().contains(SECRET), "event {}: {}", event.tag, event.json);
    }
    let log = std::fs::read_to_string(&fleet.master().log)?;
    assert!(!log.contains(SECRET), "the master's log");

    // The agent redacts before the master does: a command whose stderr
    // echoes the secret fails, and the value is in no log, result, event
    // or stored job, on either side; `<secret>` shows where it was.
    let leak = fleet.master_command(&["apply", "db1", "leak", "--json"]).await?;
    assert!(!leak.stdout.contains(SECRET) && !leak.stderr.contains(SECRET), "apply: {leak:?}");
    assert!(leak.stdout.contains("login failed for <secret>"), "the stderr shows where: {leak:?}");
    let jid = leak.json()?["agents"][0]["jid"].as_str().map(str::to_owned).unwrap_or_default();
    let stored = fleet.master_command(&["jobs", &jid, "--json"]).await?;
    anyhow::ensure!(stored.code == 0, "jobs {jid}: {stored:?}");
    assert!(stored.stdout.contains("login failed for <secret>"), "the store: {}", stored.stdout);
    assert!(!stored.stdout.contains(SECRET), "the store: {}", stored.stdout);
    let agent_log = fleet.agent("db1").log.clone();
    halite_e2e::wait_until("the agent's log of the failed state", || {
        std::fs::read_to_string(&agent_log).is_ok_and(|log| log.contains("login failed for <secret>"))
    })
    .await?;
    let log = std::fs::read_to_string(&agent_log)?;
    assert!(!log.contains(SECRET), "the agent's log: {log}");
    for event in &fleet.seen {
        assert!(!event.json.to_string().contains(SECRET), "event {}: {}", event.tag, event.json);
    }
    assert!(!std::fs::read_to_string(&fleet.master().log)?.contains(SECRET), "the master's log");
    // What the agent writes: only the kept contents of its files (they are
    // the file) and the kept secret list may hold the value; the outbox
    // and everything else may not.
    let data = fleet.agent("db1").dir.join("data");
    let mut holders = Vec::new();
    for entry in walk(&data) {
        if std::fs::read(&entry)?.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()) {
            holders.push(entry.strip_prefix(&data)?.to_path_buf());
        }
    }
    let allowed = |p: &std::path::Path| p.starts_with("offline/blobs") || p == std::path::Path::new("offline/secrets");
    assert!(holders.iter().all(|p| allowed(p)), "the agent's data dir: {holders:?}");
    assert!(holders.iter().any(|p| p == std::path::Path::new("offline/secrets")), "kept for offline: {holders:?}");
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
