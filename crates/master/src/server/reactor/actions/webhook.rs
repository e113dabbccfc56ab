//! `webhook`: POST the event as JSON to an HTTPS endpoint.
//!
//! TLS is rustls with the ring provider; the public web's roots
//! (webpki-roots) are trusted, plus, with `ca`, the certificates of a PEM
//! file in the state tree (a private CA). Plain `http://` is refused unless
//! the reactor says `insecure_http: true`. The client, its headers and its
//! roots are built when the tree loads. A header value may name variables
//! of the master's environment as `${NAME}`, so that secrets stay out of the
//! tree; they are read when the request is made (a missing one fails the
//! action and names the variable).
//!
//! A connection failure, a timeout, a 429 or a 5xx answer is retried, at
//! most `retries` times, after [`BACKOFF`] (the workspace's one backoff
//! rule, `halite_proto::backoff`: from 250 ms, doubling, at most 10 s,
//! jittered); any other answer
//! outside 2xx fails at once. Redirects are not followed.

use std::time::Duration;

use futures_util::future::BoxFuture;
use halite_proto::{Backoff, Event};
use halite_state::StateTree;
use indexmap::IndexMap;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::{Action, ActionError, ActionKind, Context, clip, duration};

pub static KIND: ActionKind = ActionKind {
    name: "webhook",
    summary: "POST the event as JSON to an HTTPS URL, with headers, retries and backoff.",
    example: "- name: page-oncall\n  on: halite/beacon/*/nginx-conf\n  webhook:\n    url: https://hooks.example.com/halite\n    headers: {X-Team: web}\n    timeout: 5s\n    retries: 3\n",
    compile,
};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u32 = 3;
/// More retries than this are refused: a reaction must end.
pub const MAX_RETRIES: u32 = 10;
/// The wait between attempts.
pub const BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default)]
    headers: IndexMap<String, String>,
    /// A PEM file in the tree with the CA certificates to trust as well.
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    insecure_http: bool,
}

/// Why a `webhook` action does not compile or did not deliver; names the
/// URL, the header or the CA file.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("`{0}`: write `webhook: {{url: https://…, headers: {{…}}, retries: 3}}`")]
    NotAMap(serde_json::Value),
    #[error("{0} (write `webhook: {{url: https://…, headers: {{…}}, retries: 3}}`)")]
    Config(serde_json::Error),
    #[error("`{url}` is not a URL: {source}")]
    Url { url: String, source: <reqwest::Url as std::str::FromStr>::Err },
    #[error("`{url}` is plain http; use https, or say `insecure_http: true`")]
    PlainHttp { url: String },
    #[error("`{url}`: scheme `{scheme}` is not http(s)")]
    Scheme { url: String, scheme: String },
    #[error("`retries: {retries}` is more than {MAX_RETRIES}")]
    Retries { retries: u32 },
    #[error("`{name}` is not a header name")]
    HeaderName { name: String },
    #[error("header `{name}`: `{value}`: `${{` without its `}}`")]
    Unclosed { name: String, value: String },
    #[error("header `{name}`: `{value}`: `${{{var}}}` is not an environment variable name")]
    VariableName { name: String, value: String, var: String },
    #[error("header `{name}`: its value is not valid in HTTP")]
    HeaderValue { name: String },
    #[error("header `{name}`: `{var}` is not set in the master's environment")]
    Unset { name: String, var: String },
    #[error("header `{name}`: its value from the environment is not valid in HTTP")]
    FilledValue { name: String },
    #[error("ca: {0}")]
    CaPath(halite_state::paths::TreePathError),
    #[error("ca: cannot read `{ca}`: {source}")]
    CaRead { ca: String, source: std::io::Error },
    #[error("ca: `{ca}` is not a PEM certificate bundle: {source}")]
    CaPem { ca: String, source: reqwest::Error },
    #[error("ca: `{ca}` holds no PEM certificate")]
    CaEmpty { ca: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The endpoint refused the event for good.
    /// `kept` names the job that holds the endpoint's answer, if any (it
    /// is never published).
    #[error("webhook {url}: {why}{kept}")]
    Refused { url: String, why: String, kept: String },
    /// Every attempt failed.
    #[error("webhook {url}: {why} (after {attempts} attempts){kept}")]
    GaveUp { url: String, why: String, attempts: u32, kept: String },
}

#[derive(Debug)]
struct Webhook {
    url: reqwest::Url,
    /// The URL without its query, for logs and events (a query may carry a
    /// token).
    shown: String,
    client: reqwest::Client,
    retries: u32,
    timeout: Duration,
    header_names: Vec<String>,
    /// Headers whose values name environment variables, filled per request.
    from_env: Vec<(HeaderName, Vec<Piece>)>,
}

/// A header value as authored: text and `${NAME}` references.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Env(String),
}

/// Splits `Bearer ${TOKEN}` into pieces; an unclosed `${` or a bad name is
/// an error.
fn pieces(name: &str, value: &str) -> Result<Vec<Piece>, WebhookError> {
    let mut pieces = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end =
            after.find('}').ok_or_else(|| WebhookError::Unclosed { name: name.to_owned(), value: value.to_owned() })?;
        let var = &after[..end];
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(WebhookError::VariableName {
                name: name.to_owned(),
                value: value.to_owned(),
                var: var.to_owned(),
            });
        }
        pieces.push(Piece::Env(var.to_owned()));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

/// Fills a header's `${NAME}`s from `lookup`.
fn fill(
    name: &HeaderName,
    pieces: &[Piece],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<HeaderValue, WebhookError> {
    let mut text = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => text.push_str(t),
            Piece::Env(var) => text.push_str(
                &lookup(var).ok_or_else(|| WebhookError::Unset { name: name.to_string(), var: var.clone() })?,
            ),
        }
    }
    HeaderValue::from_str(&text).map_err(|_| WebhookError::FilledValue { name: name.to_string() })
}

fn compile(value: &serde_json::Value, tree: &StateTree) -> Result<Box<dyn Action>, ActionError> {
    if !value.is_object() {
        return Err(WebhookError::NotAMap(value.clone()).into());
    }
    let config = Config::deserialize(value).map_err(WebhookError::Config)?;
    let url =
        reqwest::Url::parse(&config.url).map_err(|source| WebhookError::Url { url: config.url.clone(), source })?;
    match url.scheme() {
        "https" => {}
        "http" if config.insecure_http => {}
        "http" => return Err(WebhookError::PlainHttp { url: config.url }.into()),
        other => return Err(WebhookError::Scheme { url: config.url.clone(), scheme: other.to_owned() }.into()),
    }
    let timeout = config.timeout.as_deref().map(|t| duration("timeout", t)).transpose()?.unwrap_or(DEFAULT_TIMEOUT);
    let retries = config.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > MAX_RETRIES {
        return Err(WebhookError::Retries { retries }.into());
    }
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut from_env = Vec::new();
    for (name, value) in &config.headers {
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| WebhookError::HeaderName { name: name.clone() })?;
        let pieces = pieces(name, value)?;
        if pieces.iter().any(|p| matches!(p, Piece::Env(_))) {
            from_env.push((header, pieces));
            continue;
        }
        let value = HeaderValue::from_str(value).map_err(|_| WebhookError::HeaderValue { name: name.clone() })?;
        headers.insert(header, value);
    }
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(!config.insecure_http)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("halite/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers);
    if let Some(ca) = &config.ca {
        let path = halite_state::paths::in_tree(&tree.root, ca).map_err(WebhookError::CaPath)?;
        let pem = std::fs::read(&path).map_err(|source| WebhookError::CaRead { ca: ca.clone(), source })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|source| WebhookError::CaPem { ca: ca.clone(), source })?;
        if certificates.is_empty() {
            return Err(WebhookError::CaEmpty { ca: ca.clone() }.into());
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    let client = builder.build().map_err(WebhookError::Client)?;
    let mut shown = url.clone();
    shown.set_query(None);
    Ok(Box::new(Webhook {
        shown: shown.to_string(),
        url,
        client,
        retries,
        timeout,
        header_names: config.headers.keys().cloned().collect(),
        from_env,
    }))
}

/// Why one attempt did not deliver, and whether another may. The text
/// never holds the URL (its query may carry a token) nor the response body
/// (kept in the store, see [`Failure::body`]).
enum Attempt {
    Retry(Failure),
    Fail(Failure),
}

struct Failure {
    why: String,
    /// What the endpoint answered, clipped: kept in the job store, never
    /// published.
    body: Option<String>,
}

impl Failure {
    fn new(why: String) -> Failure {
        Failure { why, body: None }
    }
}

impl Webhook {
    async fn attempt(&self, body: &[u8]) -> Result<reqwest::StatusCode, Attempt> {
        let mut request = self.client.post(self.url.clone()).body(body.to_vec());
        for (name, pieces) in &self.from_env {
            let value = fill(name, pieces, |var| std::env::var(var).ok())
                .map_err(|e| Attempt::Fail(Failure::new(e.to_string())))?;
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    return Ok(status);
                }
                let text = response.text().await.unwrap_or_default();
                let body = Some(clip(text.trim(), 512)).filter(|b| !b.is_empty());
                let failure = Failure { why: format!("answered {status}"), body };
                if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    Err(Attempt::Retry(failure))
                } else {
                    Err(Attempt::Fail(failure))
                }
            }
            // `{:#}`-like chain: reqwest's own message is terse ("error
            // sending request"); the cause says refused, timed out, bad cert.
            // reqwest's text names the whole URL, query (a token) and all:
            // it is taken out first.
            Err(error) => Err(Attempt::Retry(Failure::new(crate::server::fetch::with_causes(&error.without_url())))),
        }
    }
}

impl Action for Webhook {
    fn describe(&self) -> String {
        let headers = if self.header_names.is_empty() {
            String::new()
        } else {
            format!(" with headers {}", self.header_names.join(", "))
        };
        format!(
            "POST the event as JSON to {}{headers} (timeout {:?}, up to {} retries)",
            self.shown, self.timeout, self.retries
        )
    }

    fn run<'a>(
        &'a self,
        context: &'a Context,
        agent: &'a str,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<String, ActionError>> {
        Box::pin(async move {
            let body = event.to_json().to_string().into_bytes();
            let mut attempt = 0;
            loop {
                let (failure, attempts) = match self.attempt(&body).await {
                    Ok(status) => return Ok(format!("POST {}: {status}", self.shown)),
                    Err(Attempt::Fail(failure)) => (failure, None),
                    Err(Attempt::Retry(failure)) if attempt >= self.retries => (failure, Some(attempt + 1)),
                    Err(Attempt::Retry(Failure { why, .. })) => {
                        attempt += 1;
                        let wait = BACKOFF.delay(attempt - 1);
                        tracing::info!(agent, event = %event.id, url = %self.shown, error = %why, attempt, ?wait, "Webhook failed; retrying.");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                };
                let kept = match failure.body {
                    None => String::new(),
                    Some(body) => {
                        let outcome = halite_proto::Outcome::Failed { error: format!("{}: {body}", failure.why) };
                        match context.jobs.record_on_master(event.id, "webhook", outcome).await {
                            Some(jid) => format!("; response body in job {jid} (`halite-master jobs {jid}`)"),
                            None => String::new(),
                        }
                    }
                };
                let (url, why) = (self.shown.clone(), failure.why);
                return Err(match attempts {
                    None => WebhookError::Refused { url, why, kept },
                    Some(attempts) => WebhookError::GaveUp { url, why, attempts, kept },
                }
                .into());
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked_when_the_tree_loads() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("not-a-cert.pem"), "hello\n").unwrap();
        let tree = StateTree::empty(dir.path());
        let cases = [
            (json!({"url": "https://example.com/hook?token=x", "headers": {"Authorization": "Bearer x"}}), None),
            (json!({"url": "http://example.com/hook", "insecure_http": true}), None),
            (json!({"url": "http://example.com/hook"}), Some("plain http")),
            (json!({"url": "ftp://example.com/"}), Some("not http(s)")),
            (json!({"url": "not a url"}), Some("not a URL")),
            (json!({"url": "https://x/", "retries": 11}), Some("more than 10")),
            (json!({"url": "https://x/", "headers": {"bad header": "x"}}), Some("not a header name")),
            (json!({"url": "https://x/", "ca": "missing.pem"}), Some("does not exist")),
            (json!({"url": "https://x/", "ca": "not-a-cert.pem"}), Some("no PEM certificate")),
            (json!({"url": "https://x/", "ca": "../etc/ssl/cert.pem"}), Some("without `..`")),
            (json!({"url": "https://x/", "method": "PUT"}), Some("unknown field")),
        ];
        for (value, error) in cases {
            match (compile(&value, &tree).map_err(|e| e.to_string()), error) {
                (Ok(_), None) => {}
                (Err(e), Some(wanted)) => assert!(e.contains(wanted), "{value}: {e}"),
                (Ok(_), Some(wanted)) => panic!("{value}: compiled, wanted `{wanted}`"),
                (Err(e), None) => panic!("{value}: {e}"),
            }
        }
    }

    #[test]
    fn header_values_name_environment_variables() {
        let name = HeaderName::from_static("authorization");
        let lookup = |var: &str| (var == "TOKEN").then(|| "s3cret".to_owned());
        let cases = [
            ("Bearer ${TOKEN}", Ok("Bearer s3cret")),
            ("${TOKEN}-${TOKEN}", Ok("s3cret-s3cret")),
            ("plain", Ok("plain")),
            ("Bearer ${MISSING}", Err("`MISSING` is not set")),
        ];
        for (authored, expected) in cases {
            let filled = fill(&name, &pieces("authorization", authored).unwrap(), lookup).map_err(|e| e.to_string());
            match (filled, expected) {
                (Ok(value), Ok(wanted)) => assert_eq!(value, wanted, "{authored}"),
                (Err(e), Err(wanted)) => assert!(e.contains(wanted), "{authored}: {e}"),
                (got, wanted) => panic!("{authored}: {got:?}, wanted {wanted:?}"),
            }
        }
        for bad in ["${", "${A-B}", "x ${}"] {
            assert!(pieces("authorization", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_query_is_not_shown() {
        let action =
            compile(&serde_json::json!({"url": "https://example.com/hook?token=secret"}), &StateTree::default())
                .unwrap();
        assert!(!action.describe().contains("secret"), "{}", action.describe());
    }

    /// Retries are bounded: a refused connection fails after `retries + 1`
    /// attempts.
    #[tokio::test]
    async fn a_refused_connection_is_retried_then_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let action = compile(
            &serde_json::json!({"url": format!("http://127.0.0.1:{port}/"), "insecure_http": true, "retries": 2}),
            &StateTree::default(),
        )
        .unwrap();
        let context = crate::server::reactor::actions::test_context().await;
        let event = Event::new("ops/x", "web01", halite_proto::Value::map());
        let error = action.run(&context, "web01", &event).await.unwrap_err().to_string();
        assert!(error.contains("after 3 attempts"), "{error}");
    }
}
