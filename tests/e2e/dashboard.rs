//! The dashboard in a real browser: Debian's headless Chromium, driven by
//! its chromedriver through fantoccini, against a real master with the API
//! on and real agents. Every page's screenshot is written to
//! `target/screenshots/`, or with `HALITE_UPDATE_SCREENSHOTS=1` to
//! `docs/screenshots/` (the README shows them).
//!
//! Skipped only when chromedriver is not installed and
//! `HALITE_REQUIRE_BROWSER` is unset; `.ci/run` installs both and sets it.
//! Waits are for something to show on the page, capped at [`WAIT`] (a
//! bound on a hang, not a threshold on the product's speed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use halite_e2e::{Fleet, WAIT, process};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Debian's packages (`chromium`, `chromium-driver`).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Where the screenshots go: `target/screenshots/` on every run, so a test
/// run leaves the repository clean; with `HALITE_UPDATE_SCREENSHOTS=1`,
/// `docs/screenshots/`, the ones the README shows (commit them).
fn screenshots() -> PathBuf {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if std::env::var_os("HALITE_UPDATE_SCREENSHOTS").is_some() {
        repository.join("docs/screenshots")
    } else {
        repository.join("target/screenshots")
    }
}

/// chromedriver on a port of its choosing, and a session on it. The
/// driver is killed when this is dropped.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
}

/// The browser, or `None` when the test may be skipped.
async fn browser() -> anyhow::Result<Option<Browser>> {
    if !Path::new(CHROMEDRIVER).exists() {
        anyhow::ensure!(
            std::env::var_os("HALITE_REQUIRE_BROWSER").is_none(),
            "HALITE_REQUIRE_BROWSER is set but {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver"
        );
        eprintln!("skipped: {CHROMEDRIVER} is not installed (apt-get install chromium chromium-driver)");
        return Ok(None);
    }
    let mut driver = process(CHROMEDRIVER)
        .arg("--port=0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = driver.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout from chromedriver"))?;
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                return anyhow::Ok(rest.trim_end_matches('.').trim().parse::<u16>()?);
            }
        }
        anyhow::bail!("chromedriver exited before it was ready")
    })
    .await??;
    // The rest of its output is not read; it must not block on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                // The master's certificate is self-signed for this test.
                "--ignore-certificate-errors", "--window-size=1280,900", "--hide-scrollbars",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
            ],
        }),
    );
    // fantoccini's client is built on rustls, whose provider this test
    // binary must name (more than one is linked); chromedriver itself is
    // plain HTTP on loopback.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let client =
        ClientBuilder::rustls()?.capabilities(capabilities).connect(&format!("http://127.0.0.1:{port}")).await?;
    Ok(Some(Browser { client, _driver: driver }))
}

/// A self-signed certificate for 127.0.0.1 in `dir`, for `api:`.
fn certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    let (cert_path, key_path) = (dir.join("api-test.crt"), dir.join("api-test.key"));
    std::fs::write(&cert_path, cert.cert.pem())?;
    std::fs::write(&key_path, cert.signing_key.serialize_pem())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    Ok((cert_path, key_path))
}

async fn screenshot(client: &Client, name: &str) -> anyhow::Result<()> {
    let png = client.screenshot().await?;
    std::fs::create_dir_all(screenshots())?;
    std::fs::write(screenshots().join(format!("{name}.png")), png)?;
    Ok(())
}

/// Waits until `css` matches an element whose text contains `text`,
/// looking every 50 ms (as the harness's `wait_until`) for at most [`WAIT`].
async fn wait_for_text(client: &Client, css: &str, text: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !wait_for_text_once(client, css, text).await? {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "nothing matching `{css}` shows `{text}`");
        tick.tick().await;
    }
    Ok(())
}

/// As [`wait_for_text`], reloading the page between looks: for a page that
/// is not live without JavaScript (the keys page).
async fn reload_until_text(client: &Client, css: &str, text: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if wait_for_text_once(client, css, text).await? {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nothing matching `{css}` shows `{text}` after reloads"
        );
        client.refresh().await?;
    }
}

async fn wait_for_text_once(client: &Client, css: &str, text: &str) -> anyhow::Result<bool> {
    for element in client.find_all(Locator::Css(css)).await? {
        if element.text().await.is_ok_and(|t| t.contains(text)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The page's Content-Security-Policy holds: an inline script added to it
/// does not run, and a request to another origin is refused. (WebDriver's
/// own script is not the page's; the elements it adds are.)
async fn csp_holds(client: &Client, page: &str) -> anyhow::Result<()> {
    let ran = client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const seen = [];
               document.addEventListener('securitypolicyviolation', e => seen.push(e.violatedDirective));
               window.__inline = false;
               const s = document.createElement('script');
               s.textContent = 'window.__inline = true;';
               document.body.appendChild(s);
               const img = document.createElement('img');
               img.src = 'https://cdn.example.invalid/x.png';
               document.body.appendChild(img);
               // The violations are reported as events; let them arrive,
               // then take the probes out again (the screenshots follow).
               setTimeout(() => { s.remove(); img.remove(); done({ inline: window.__inline, seen }); }, 300);"#,
            vec![],
        )
        .await?;
    assert_eq!(ran["inline"], false, "{page}: an inline script ran");
    let seen: Vec<String> =
        ran["seen"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    assert!(seen.iter().any(|d| d.starts_with("script-src")), "{page}: no script-src violation: {seen:?}");
    assert!(seen.iter().any(|d| d.starts_with("img-src")), "{page}: no img-src violation: {seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let Some(browser) = browser().await.unwrap() else { return };
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(certs.path()).unwrap();
    let api = format!(
        "api:\n  listen: 127.0.0.1:0\n  cert: {}\n  key: {}\nroles:\n  web-ops:\n    verbs: [read]\n    target: 'web*'\n",
        cert.display(),
        key.display()
    );

    // web* are accepted on sight; db01 will wait for the keys page.
    let mut fleet = Fleet::start_accepting_with_master_config(&["web01", "web02"], &["web*"], &api).await.unwrap();
    let result = walk(&mut fleet, &browser.client).await;
    let _ = browser.client.close().await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A token for `role`, made with `halite-master tokens create`.
fn make_token(fleet: &Fleet, name: &str, role: &str) -> anyhow::Result<String> {
    let printed = fleet.cli(&["tokens", "create", name, "--role", role])?;
    let token = printed.split_whitespace().find(|w| w.starts_with("hlt_")).map(str::to_owned);
    token.ok_or_else(|| anyhow::anyhow!("`tokens create` printed no token: {printed}"))
}

async fn walk(fleet: &mut Fleet, client: &Client) -> anyhow::Result<()> {
    let token = make_token(fleet, "browser", "admin")?;
    // The ready line, which the master also writes to its data dir.
    let ready = std::fs::read_to_string(fleet.master_data_dir().join("endpoints"))?;
    let base = ready.split_whitespace().find_map(|f| f.strip_prefix("api=")).map(str::to_owned);
    let base = base.ok_or_else(|| anyhow::anyhow!("the master printed no api= URL: {ready}"))?;

    // Not logged in: the login page. A wrong token is refused.
    client.goto(&format!("{base}/")).await?;
    client.wait().at_most(WAIT).for_element(Locator::Css("input#token")).await?;
    screenshot(client, "login").await?;
    client.find(Locator::Css("input#token")).await?.send_keys("hlt_not-a-token").await?;
    client.find(Locator::Css("form.login button")).await?.click().await?;
    wait_for_text(client, ".flash.error", "Not logged in").await?;
    client.find(Locator::Css("input#token")).await?.send_keys(&token).await?;
    client.find(Locator::Css("form.login button")).await?.click().await?;

    // The overview shows both agents.
    client.wait().at_most(WAIT).for_element(Locator::Css("#agent-count")).await?;
    wait_for_text(client, "#agent-count", "2").await?;
    for agent in ["web01", "web02"] {
        wait_for_text(client, "tr.agent-row", agent).await?;
    }
    csp_holds(client, "overview").await?;

    // A drift made now shows in the live stream.
    client.goto(&format!("{base}/events")).await?;
    client.wait().at_most(WAIT).for_element(Locator::Css("#live-status[data-state='live']")).await?;
    csp_holds(client, "events").await?;
    let conf = fleet.agent("web01").path("/etc/nginx/nginx.conf");
    let text = std::fs::read_to_string(&conf)?;
    anyhow::ensure!(text.contains("root /var/www/html;"), "the example nginx.conf changed: {text}");
    std::fs::write(&conf, text.replace("root /var/www/html;", "root /srv/by-hand;"))?;
    let drift = fleet.wait_for("the drift", |e| e.tag == "halite/beacon/web01/nginx-conf").await?;
    wait_for_text(client, "#event-rows tr.event td.tag", "halite/beacon/web01/nginx-conf").await?;
    let restore = fleet.wait_for_restore_of(&drift).await?;
    let jid = restore.job().map(str::to_owned).ok_or_else(|| anyhow::anyhow!("no job id"))?;
    wait_for_text(client, "#event-rows tr.event td.tag", &format!("halite/job/{jid}/ret/web01")).await?;
    screenshot(client, "events").await?;

    // Its receipt on the agent page.
    client.goto(&format!("{base}/agents/web01")).await?;
    wait_for_text(client, "tr.receipt", "/etc/nginx/nginx.conf").await?;
    wait_for_text(client, "tr.receipt", &jid[..10]).await?;
    wait_for_text(client, "tr.receipt", "corrective").await?;
    csp_holds(client, "agent").await?;
    screenshot(client, "agent").await?;

    // The jobs page, and the restore job with its diff in colour.
    client.goto(&format!("{base}/jobs")).await?;
    wait_for_text(client, "tr.job", &jid[..10]).await?;
    screenshot(client, "jobs").await?;
    client.goto(&format!("{base}/jobs/{jid}")).await?;
    wait_for_text(client, "pre.diff span.del", "root /srv/by-hand;").await?;
    wait_for_text(client, "pre.diff span.add", "root /var/www/html;").await?;
    csp_holds(client, "job").await?;
    screenshot(client, "job").await?;

    // A pending key, accepted from the keys page: the agent converges.
    fleet.add_agent_unconverged("db01").await?;
    client.goto(&format!("{base}/keys")).await?;
    reload_until_text(client, "tr.key.k-pending", "db01").await?;
    csp_holds(client, "keys").await?;
    screenshot(client, "keys").await?;
    client.find(Locator::Css("tr.key.k-pending[data-agent='db01'] button.accept")).await?.click().await?;
    wait_for_text(client, ".flash", "db01: key accepted").await?;
    fleet
        .wait_for("db01's start-up apply", |e| e.tag.starts_with("halite/job/") && e.tag.ends_with("/ret/db01"))
        .await?;
    let motd = fleet.agent("db01").path("/etc/motd");
    let desired = "This host is managed by halite. Local edits are restored.\n";
    assert_eq!(std::fs::read_to_string(&motd)?, desired, "db01 converged");
    reload_until_text(client, "tr.key.k-accepted", "db01").await?;

    // The tree page and a what-if.
    client.goto(&format!("{base}/tree")).await?;
    client.wait().at_most(WAIT).for_element(Locator::Css("table.reactors")).await?;
    wait_for_text(client, "table.reactors", "restore-nginx").await?;
    client.find(Locator::Css("#wi-tag")).await?.send_keys("halite/beacon/web01/motd").await?;
    client.find(Locator::Css("form.what-if button")).await?.click().await?;
    wait_for_text(client, "#what-if-result", "fires restore-motd").await?;
    csp_holds(client, "tree").await?;
    screenshot(client, "tree").await?;

    // The audit log has the acceptance, by this token.
    client.goto(&format!("{base}/audit")).await?;
    wait_for_text(client, "table.audit", "keys accept").await?;
    wait_for_text(client, "table.audit", "token:browser").await?;
    csp_holds(client, "audit").await?;
    screenshot(client, "audit").await?;

    // Back on the overview: three agents now, and the last hour counts the
    // drift and its restore.
    client.goto(&format!("{base}/")).await?;
    wait_for_text(client, "#agent-count", "3").await?;
    wait_for_text(client, "#drifts", "1").await?;
    wait_for_text(client, "#restores", "1").await?;
    screenshot(client, "overview").await?;
    client.set_window_size(390, 844).await?;
    client.refresh().await?;
    wait_for_text(client, "tr.agent-row", "web02").await?;
    screenshot(client, "overview-phone").await?;
    client.set_window_size(1280, 900).await?;

    // A form posted from another site changes nothing: refused before any
    // handler runs (and the SameSite cookie is not even sent).
    let fingerprint = fleet.keys(&["list"])?;
    let db01 =
        fingerprint.lines().find(|l| l.contains("db01")).and_then(|l| l.split_whitespace().find(|w| w.len() == 64));
    let db01 = db01.ok_or_else(|| anyhow::anyhow!("no db01 key in {fingerprint}"))?.to_owned();
    let attack = format!(
        "data:text/html,<form method=post action='{base}/keys/reject'><input name=id value=db01>\
         <input name=fingerprint value={db01}><button id=go>go</button></form>"
    );
    client.goto(&attack).await?;
    client.find(Locator::Id("go")).await?.click().await?;
    wait_for_text(client, "body", "refused: a dashboard form must be posted from the dashboard itself").await?;
    anyhow::ensure!(
        fleet.keys(&["list"])?.lines().any(|l| l.contains("db01") && l.contains("accepted")),
        "db01 was rejected"
    );

    // A `web-ops` token (read, on web*) sees the web agents only, may not
    // decide keys, and a refusal is audited.
    let ops = make_token(fleet, "ops", "web-ops")?;
    client.goto(&format!("{base}/")).await?;
    client.find(Locator::Css("form.logout button")).await?.click().await?;
    client.wait().at_most(WAIT).for_element(Locator::Css("input#token")).await?;
    client.find(Locator::Css("input#token")).await?.send_keys(&ops).await?;
    client.find(Locator::Css("form.login button")).await?.click().await?;
    wait_for_text(client, "header .who", "token:ops (web-ops)").await?;
    wait_for_text(client, "#agent-count", "2").await?;
    anyhow::ensure!(!wait_for_text_once(client, "tr.agent-row", "db01").await?, "web-ops sees db01");
    client.goto(&format!("{base}/keys")).await?;
    wait_for_text(client, "tr.key", "web01").await?;
    anyhow::ensure!(
        client.find_all(Locator::Css("button.accept, button.reject")).await?.is_empty(),
        "web-ops is offered key decisions"
    );
    let web01 = fleet.keys(&["list"])?;
    let web01 = web01.lines().find(|l| l.contains("web01")).and_then(|l| l.split_whitespace().find(|w| w.len() == 64));
    let web01 = web01.ok_or_else(|| anyhow::anyhow!("no web01 key"))?.to_owned();
    let status = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/keys/reject', { method: 'POST', body: new URLSearchParams({ id: 'web01', fingerprint: arguments[0] }) })
               .then(r => done(r.status), e => done(String(e)));",
            vec![serde_json::Value::String(web01)],
        )
        .await?;
    assert_eq!(status, 403, "web-ops rejecting web01's key");
    let audit = fleet.cli(&["audit", "--json"])?;
    anyhow::ensure!(
        audit.lines().any(|l| l.contains("token:ops") && l.contains("keys reject") && l.contains("refused")),
        "the refusal is not audited: {audit}"
    );
    Ok(())
}
