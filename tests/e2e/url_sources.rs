//! Sources given by URL (issue #19): a real master fetches them from an
//! HTTPS server started here on 127.0.0.1 (its certificate signed by a CA
//! made now, trusted through `fetch.ca_file` in master.yaml), checks them
//! against `source_hash` or the key's fingerprint and sends the bytes in
//! the job; a real agent checks again and applies. A changed body with the
//! old hash, a 404 and a key with the wrong fingerprint each fail their
//! state with an error naming the URL, and change nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use halite_e2e::{CommandOutput, Fleet};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server serves, by path; changed by the test as it goes.
type Bodies = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// An HTTPS server on 127.0.0.1 serving `bodies` (404 for anything else);
/// returns its port and its CA's PEM.
async fn https_server(bodies: Bodies) -> anyhow::Result<(u16, String)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio_rustls::rustls;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, bodies) = (acceptor.clone(), bodies.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(path) = read_path(&mut tls).await else { return };
                let body = bodies.lock().unwrap().get(&path).cloned();
                let (status, body) = match body {
                    Some(body) => ("200 OK", body),
                    None => ("404 Not Found", b"not here\n".to_vec()),
                };
                let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok((port, ca_cert.pem()))
}

/// The path of a GET request's first line.
async fn read_path(stream: &mut (impl AsyncReadExt + Unpin)) -> anyhow::Result<String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection closed mid-request");
        buffer.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buffer);
    Ok(head.split_whitespace().nth(1).unwrap_or_default().to_owned())
}

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A tar.gz holding `app-1.0/README`, made with `tar`.
fn archive(dir: &std::path::Path) -> Vec<u8> {
    let source = dir.join("archive-src");
    std::fs::create_dir_all(source.join("app-1.0")).unwrap();
    std::fs::write(source.join("app-1.0/README"), "app 1.0\n").unwrap();
    let out = dir.join("app.tar.gz");
    let status = halite_e2e::blocking_process("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&source)
        .arg("app-1.0")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

/// A minimal OpenPGP public key packet (v4): enough for a fingerprint.
fn key_packet() -> Vec<u8> {
    let body: Vec<u8> = [&[4u8, 0x65, 0, 0, 0, 22][..], &[0x11; 32]].concat();
    [&[0xc6, body.len() as u8][..], &body].concat()
}

/// Each state's (outcome, error) in an `apply --json` answer.
fn outcomes(output: &CommandOutput) -> anyhow::Result<HashMap<String, (String, String)>> {
    let json = output.json()?;
    let states = json["agents"][0]["states"].as_array().cloned().unwrap_or_default();
    Ok(states
        .iter()
        .map(|s| {
            let id = s["id"].as_str().unwrap_or_default().to_owned();
            let outcome = s["outcome"].as_str().unwrap_or_default().to_owned();
            (id, (outcome, s["error"].as_str().unwrap_or_default().to_owned()))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_sources_are_fetched_by_the_master_checked_and_applied() {
    let scratch = tempfile::tempdir().unwrap();
    let motd = b"from the mirror\n".to_vec();
    let app = archive(scratch.path());
    let bodies: Bodies = Arc::new(Mutex::new(HashMap::from([
        ("/motd".to_owned(), motd.clone()),
        ("/app.tar.gz".to_owned(), app.clone()),
        ("/repo.gpg".to_owned(), key_packet()),
        ("/dist/app.conf".to_owned(), b"port = 8080\n".to_vec()),
        (
            "/dist/SHA256SUMS".to_owned(),
            format!("{}  other\n{}  app.conf\n", sha256(b"x"), sha256(b"port = 8080\n")).into_bytes(),
        ),
    ])));
    let (port, ca) = https_server(bodies.clone()).await.unwrap();
    let ca_file = scratch.path().join("mirror-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let states = format!(
        "mirror-motd:\n  file.managed:\n    path: /etc/motd-url\n    source: {base}/motd\n    source_hash: sha256={}\n\
         mirror-app:\n  archive.extracted:\n    name: /opt/app\n    source: {base}/app.tar.gz\n    source_hash: {}\n\
         mirror-gone:\n  file.managed:\n    path: /etc/gone\n    source: {base}/gone\n    skip_verify: true\n\
         mirror-conf:\n  file.managed:\n    path: /etc/app.conf\n    source: {base}/dist/app.conf\n    source_hash: {base}/dist/SHA256SUMS\n\
         mirror-repo:\n  pkgrepo.managed:\n    name: deb {base}/debian bookworm main\n    file: /etc/apt/sources.list.d/mirror.list\n    key_url: {base}/repo.gpg\n    keyid: '{}'\n",
        sha256(&motd),
        sha256(&app),
        "AB".repeat(20),
    );
    let master_yaml = format!("fetch:\n  ca_file: {}\n  timeout: 20s\n", ca_file.display());
    let fleet =
        Fleet::start_custom_with_master_config(&["web01"], &[("urls.yaml", &states)], &master_yaml).await.unwrap();
    let result = async {
        let agent = fleet.agent("web01");
        let first = fleet.master_command(&["apply", "web01", "urls", "--json"]).await?;
        let found = outcomes(&first)?;
        anyhow::ensure!(found["mirror-motd"].0 == "changed", "{first:?}");
        anyhow::ensure!(found["mirror-app"].0 == "changed", "{first:?}");
        anyhow::ensure!(std::fs::read(agent.path("/etc/motd-url"))? == motd);
        // source_hash as a hash file on the server (Salt's form).
        anyhow::ensure!(found["mirror-conf"].0 == "changed", "{first:?}");
        anyhow::ensure!(std::fs::read_to_string(agent.path("/etc/app.conf"))? == "port = 8080\n");
        anyhow::ensure!(std::fs::read_to_string(agent.path("/opt/app/app-1.0/README"))? == "app 1.0\n");
        // A 404: the state fails naming the URL and the status.
        let (outcome, error) = &found["mirror-gone"];
        anyhow::ensure!(
            outcome == "failed" && error.contains(&format!("{base}/gone")) && error.contains("HTTP 404"),
            "{error}"
        );
        anyhow::ensure!(!agent.path("/etc/gone").exists());
        // The key is not the one named: refused, nothing written.
        let (outcome, error) = &found["mirror-repo"];
        anyhow::ensure!(
            outcome == "failed" && error.contains("fingerprint") && error.contains(&"AB".repeat(20)),
            "{error}"
        );
        anyhow::ensure!(!agent.path("/etc/apt/sources.list.d/mirror.list").exists());
        anyhow::ensure!(!agent.path("/etc/apt/keyrings").exists());

        let second = fleet.master_command(&["apply", "web01", "urls", "--json"]).await?;
        let found = outcomes(&second)?;
        anyhow::ensure!(found["mirror-motd"].0 == "unchanged" && found["mirror-app"].0 == "unchanged", "{second:?}");

        // The mirror's file changes under the same hash. The master's
        // cache (by digest) still has the checked body: nothing changes.
        bodies.lock().unwrap().insert("/motd".into(), b"tampered\n".to_vec());
        let cached = fleet.master_command(&["apply", "web01", "urls", "--json"]).await?;
        anyhow::ensure!(outcomes(&cached)?["mirror-motd"].0 == "unchanged", "{cached:?}");
        // Without the cache the new body is fetched and refused, by name.
        std::fs::remove_dir_all(fleet.master_data_dir().join("fetched"))?;
        let refused = fleet.master_command(&["apply", "web01", "urls", "--json"]).await?;
        let found = outcomes(&refused)?;
        let (outcome, error) = &found["mirror-motd"];
        anyhow::ensure!(outcome == "failed", "{refused:?}");
        anyhow::ensure!(
            error.contains("state `mirror-motd`")
                && error.contains(&format!("{base}/motd"))
                && error.contains(&format!("source_hash says {}", sha256(&motd)))
                && error.contains("update source_hash"),
            "{error}"
        );
        anyhow::ensure!(std::fs::read(agent.path("/etc/motd-url"))? == motd, "the file was touched");
        anyhow::ensure!(refused.code != 0, "a failed state is a failed apply: {refused:?}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

/// A plain HTTP server on `address` serving the files of `dir` (404 for
/// anything else); returns the address it is bound to.
async fn http_server(address: &str, dir: std::path::PathBuf) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            let dir = dir.clone();
            tokio::spawn(async move {
                let Ok(path) = read_path(&mut tcp).await else { return };
                let name = path.trim_start_matches('/');
                let body = (!name.contains('/')).then(|| std::fs::read(dir.join(name)).ok()).flatten();
                let (status, body) = match body {
                    Some(body) => ("200 OK", body),
                    None => ("404 Not Found", b"not here\n".to_vec()),
                };
                let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(&body).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok(bound)
}

/// tests/salt/corpus/ref-urls (file.managed from URLs: with a hash and a
/// mode, and a source list whose first URL is a 404) applied by a master
/// and agent gives the files Salt 3008 gave
/// (tests/salt/expected-master/ref-urls.txt, recorded by record.sh with
/// the same files served); a second apply changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_reference_tree_applies_as_salt_did() {
    let salt = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("salt");
    let tree = salt.join("corpus/ref-urls");
    // The recording's URLs name 127.0.0.19:8019; a free port here instead
    // (the summary Salt recorded names files, not URLs).
    let address = http_server("127.0.0.1:0", tree.join("served")).await.unwrap();
    let states = std::fs::read_to_string(tree.join("urls.sls")).unwrap().replace("127.0.0.19:8019", &address);
    let fleet = Fleet::start_custom(&["web01"], &["*"], &[("urls.sls", &states)]).await.unwrap();
    let result = async {
        let first = fleet.master_command(&["apply", "web01", "urls", "--json"]).await?;
        anyhow::ensure!(first.code == 0, "{first:?}");
        let place = fleet.agent("web01").path("/srv/halite-ref");
        let expected = std::fs::read_to_string(salt.join("expected-master/ref-urls.txt"))?;
        let expected: Vec<&str> = expected.lines().collect();
        let actual = crate::salt_reference::files_summary(&place);
        anyhow::ensure!(actual == expected, "halite (left) and Salt (right) differ:\n{actual:#?}\n{expected:#?}");
        let again = fleet.master_command(&["apply", "web01", "urls", "--json"]).await?;
        anyhow::ensure!(again.json()?["summary"]["changed"] == 0, "{again:?}");
        anyhow::ensure!(crate::salt_reference::files_summary(&place) == actual);
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
