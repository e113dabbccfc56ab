//! Client certificates on the HTTPS API against a real master: a CA and
//! client certificates made here with `rcgen`, presented by reqwest over
//! rustls. A mapped certificate runs as its role (and is audited as
//! `cert:<CN>`), an unmapped one is refused with 403, one from another
//! authority fails the handshake, and `client_certs: required` refuses a
//! client with none; with `optional`, tokens still work.

use std::path::Path;

use anyhow::Context as _;
use halite_e2e::Fleet;

/// A certificate authority of the test's own.
struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> anyhow::Result<Authority> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key)?.pem();
        Ok(Authority { issuer: rcgen::Issuer::new(params, key), pem })
    }

    /// A client certificate for `common_name` (and `dns` names), as the PEM
    /// reqwest takes for an identity: the certificate, then its key.
    fn client(&self, common_name: &str, dns: &[&str]) -> anyhow::Result<reqwest::Identity> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes())?)
    }
}

/// A client trusting the master's API certificate, presenting `identity`.
fn client(data_dir: &Path, identity: Option<reqwest::Identity>) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(data_dir.join("api.crt")).context("the master's API certificate")?;
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    Ok(builder.build()?)
}

/// master.yaml: the API asking for certificates from `ca`, `web-ops`
/// (read and apply on web*), and the certificate `ops-laptop` as web-ops.
fn yaml(ca: &Path, certs: &str) -> String {
    format!(
        "api:\n  listen: 127.0.0.1:0\n  client_ca: {}\n  client_certs: {certs}\nroles:\n  web-ops:\n    verbs: [read, apply]\n    target: 'web*'\naccess:\n  certificates:\n    ops-laptop: web-ops\n",
        ca.display()
    )
}

async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, String)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// A `web-ops` certificate sees and applies to web01 only; its apply to
/// db01 is refused and audited as `cert:ops-laptop`; a certificate with no
/// mapping is refused naming its CN and the setting; one from another
/// authority fails the handshake; a token with no certificate still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_run_as_their_role() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("halite test CA").unwrap();
    let ca = dir.path().join("clients-ca.pem");
    std::fs::write(&ca, &authority.pem).unwrap();
    let mut fleet = Fleet::start_with_master_config(&["web01", "db01"], &yaml(&ca, "optional")).await.unwrap();
    if let Err(error) = certificates(&mut fleet, &authority).await {
        fleet.fail(&error);
    }
}

async fn certificates(fleet: &mut Fleet, authority: &Authority) -> anyhow::Result<()> {
    let url = fleet.master().api.clone().context("the ready line has no api=")?;
    let data_dir = fleet.master_data_dir();
    let ops = client(&data_dir, Some(authority.client("ops-laptop", &[])?))?;

    let (status, body) = send(ops.get(format!("{url}/api/v1/agents"))).await?;
    assert_eq!(status, 200, "{body}");
    let agents: serde_json::Value = serde_json::from_str(&body)?;
    let ids: Vec<&str> = agents.as_array().context("a list")?.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["web01"], "web-ops sees web* only");

    let apply = |target: &str| {
        ops.post(format!("{url}/api/v1/apply"))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "target": target, "states": ["motd"] }).to_string())
    };
    let (status, body) = send(apply("web01")).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"answered\""), "{body}");
    let (status, body) = send(apply("db01")).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("db01") && body.contains("web*"), "{body}");

    // A certificate that verifies but has no role: 403, naming it and the setting.
    let stranger = client(&data_dir, Some(authority.client("stranger", &[])?))?;
    let (status, body) = send(stranger.get(format!("{url}/api/v1/agents"))).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("stranger") && body.contains("access: {certificates:"), "{body}");
    // Mapped by a DNS name when the CN has no mapping.
    let by_dns = client(&data_dir, Some(authority.client("laptop-7", &["ops-laptop"])?))?;
    let (status, body) = send(by_dns.get(format!("{url}/api/v1/agents"))).await?;
    assert_eq!(status, 200, "{body}");

    // Another authority's certificate: no TLS session at all.
    let other = Authority::new("someone else's CA")?;
    let forged = client(&data_dir, Some(other.client("ops-laptop", &[])?))?;
    let refused = forged.get(format!("{url}/api/v1/agents")).send().await;
    assert!(refused.is_err(), "a certificate from another CA was let in: {refused:?}");

    // `optional`: a client with no certificate authenticates with a token.
    let admin = fleet.cli(&["tokens", "create", "root", "--role", "admin"])?.trim().to_owned();
    let plain = client(&data_dir, None)?;
    let (status, _) = send(plain.get(format!("{url}/api/v1/agents"))).await?;
    assert_eq!(status, 401, "no token, no certificate");
    let (status, body) = send(plain.get(format!("{url}/api/v1/audit?limit=100")).bearer_auth(&admin)).await?;
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body)?;
    let by_cert: Vec<(&str, &str, &str)> = rows
        .as_array()
        .context("a list")?
        .iter()
        .filter(|r| r["who"] == "cert:ops-laptop")
        .map(|r| {
            let result = r["result"].as_str().unwrap_or("");
            (
                r["what"].as_str().unwrap_or(""),
                r["target"].as_str().unwrap_or(""),
                result.split(':').next().unwrap_or(""),
            )
        })
        .collect();
    // Newest first.
    assert_eq!(by_cert, [("apply", "db01", "refused"), ("apply", "web01", "ok")], "{rows:#}");
    Ok(())
}

/// `client_certs: required`: no certificate, no handshake; a mapped one
/// gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_refuse_a_client_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("halite test CA").unwrap();
    let ca = dir.path().join("clients-ca.pem");
    std::fs::write(&ca, &authority.pem).unwrap();
    let mut fleet = Fleet::start_with_master_config(&["web01"], &yaml(&ca, "required")).await.unwrap();
    if let Err(error) = required(&mut fleet, &authority).await {
        fleet.fail(&error);
    }
}

async fn required(fleet: &mut Fleet, authority: &Authority) -> anyhow::Result<()> {
    let url = fleet.master().api.clone().context("the ready line has no api=")?;
    let data_dir = fleet.master_data_dir();
    let admin = fleet.cli(&["tokens", "create", "root", "--role", "admin"])?.trim().to_owned();
    let plain = client(&data_dir, None)?;
    let refused = plain.get(format!("{url}/api/v1/agents")).bearer_auth(&admin).send().await;
    assert!(refused.is_err(), "a client with no certificate got an answer: {refused:?}");
    let ops = client(&data_dir, Some(authority.client("ops-laptop", &[])?))?;
    let (status, body) = send(ops.get(format!("{url}/api/v1/agents"))).await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}
