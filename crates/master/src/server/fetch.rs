//! The master's fetcher of URL sources (`file.managed`'s `source`,
//! `archive.extracted`'s `source`, `pkgrepo.managed`'s `key_url` given as
//! `http(s)://`): before a job is sent (`jobs.rs`), each fetch request the
//! kinds left in a call (`halite_state::fetch`) is fetched, checked against
//! its hash or key fingerprint, and its bytes put into the call, or the
//! reason it could not be, which fails that state on the agent with the
//! URL named.
//!
//! Why here and not on the agent: the agent has an 8 MiB memory budget and
//! no HTTP client or TLS stack; the master already has both (the webhook,
//! the API), fetches once for every agent, and caches by digest.
//!
//! Bounded: one fetch takes at most `fetch.timeout` and `fetch.max_bytes`
//! (master.yaml); bodies checked by digest are kept in
//! `<data_dir>/fetched/<algorithm>-<hex>` (owner-only, like the data dir),
//! the oldest removed past `fetch.cache_bytes`, so a restore of a URL
//! source reads a file, not the network. Concurrent jobs wanting the same
//! body wait for one fetch (a lock per URL list).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halite_proto::Job;
use halite_state::fetch::{Request, Verify};

use crate::config::FetchConfig;

/// The largest hash file (`source_hash` given as a URL) read.
const LISTING_MAX_BYTES: u64 = 1024 * 1024;

/// The cache's directory in the data dir.
pub const CACHE_DIR: &str = "fetched";

/// Why a URL source could not be had. Each names the state and the URL and
/// says what to do; its text is what the state's failure says.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("state `{state}`: GET {url} answered HTTP {status}; check the URL, and that the server serves the file")]
    Status { state: String, url: String, status: u16 },
    #[error(
        "state `{state}`: GET {url} failed: {reason}; check the URL and that the master can reach it (for a private CA, set fetch.ca_file in master.yaml)"
    )]
    Request { state: String, url: String, reason: String },
    #[error(
        "state `{state}`: GET {url} took longer than {after:?}; check the server, or raise fetch.timeout in master.yaml"
    )]
    Timeout { state: String, url: String, after: Duration },
    #[error(
        "state `{state}`: {url} is larger than {limit} bytes; serve a smaller file, or raise fetch.max_bytes in master.yaml"
    )]
    TooLarge { state: String, url: String, limit: u64 },
    #[error("state `{state}`: {source}")]
    Verify { state: String, source: halite_state::fetch::FetchError },
    #[error(
        "state `{state}`: the hash file {url} lists no sha256 or sha512 for `{name}`; add a `<hex>  {name}` line there, or give the hash in source_hash"
    )]
    NotListed { state: String, url: String, name: String },
    #[error("fetch.ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot build the HTTP client for URL sources: {0}")]
    Client(reqwest::Error),
}

/// The master's one fetcher (cheap to clone).
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    timeout: Duration,
    max_bytes: u64,
    cache: PathBuf,
    cache_bytes: u64,
    /// One fetch at a time per URL list: the second job waits and finds
    /// the body in the cache.
    locks: Arc<Mutex<Locks>>,
}

/// A lock per URL list being fetched.
type Locks = HashMap<Vec<String>, Arc<tokio::sync::Mutex<()>>>;

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("cache", &self.cache).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher trusting the system's roots (webpki-roots) and
    /// `config.ca_file`, caching under `data_dir`. Reads the CA file:
    /// called at start-up, before the runtime serves anything.
    pub fn new(config: &FetchConfig, data_dir: &Path) -> Result<Fetcher, FetchError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::limited(5))
            .connect_timeout(config.timeout)
            .user_agent(concat!("halite/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let ca_error = |reason: String| FetchError::CaFile { path: path.clone(), reason };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
            if certificates.is_empty() {
                return Err(ca_error("no PEM certificate in it".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(Fetcher {
            client: builder.build().map_err(FetchError::Client)?,
            timeout: config.timeout,
            max_bytes: config.max_bytes,
            cache: data_dir.join(CACHE_DIR),
            cache_bytes: config.cache_bytes,
            locks: Arc::default(),
        })
    }

    /// Fetches what the job's calls ask for and puts it (or why not) into
    /// them. A call without requests is not touched.
    pub async fn fill(&self, job: &mut Job) {
        for call in &mut job.states {
            for (index, request) in halite_state::fetch::requests(&call.args).into_iter().enumerate() {
                if request.got.is_some() || request.error.is_some() {
                    continue;
                }
                let outcome = match self.fetch(&call.id, &request).await {
                    Ok((url, bytes, verify)) => {
                        if verify != request.verify {
                            halite_state::fetch::set_verify(&mut call.args, index, verify);
                        }
                        Ok((url, bytes))
                    }
                    Err(error) => {
                        tracing::warn!(state = %call.id, url = %request.urls_text(), %error, "Cannot fetch a URL source.");
                        Err(error.to_string())
                    }
                };
                halite_state::fetch::fill(&mut call.args, index, outcome);
            }
        }
    }

    /// The first of the request's URLs that fetches and checks: (URL, body,
    /// the check made: a hash file's listed digest in place of its URL).
    async fn fetch(&self, state: &str, request: &Request) -> Result<(String, Vec<u8>, Verify), FetchError> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks.entry(request.urls.clone()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        let verify = match &request.verify {
            Verify::HashFile(list) => {
                let listing = self.get(state, list, LISTING_MAX_BYTES).await?;
                let name = halite_state::fetch::url_file_name(&request.urls[0]);
                halite_state::fetch::listed(&String::from_utf8_lossy(&listing), name).ok_or_else(|| {
                    FetchError::NotListed { state: state.to_owned(), url: list.clone(), name: name.to_owned() }
                })?
            }
            verify => verify.clone(),
        };
        let cached = cache_name(&verify).map(|name| self.cache.join(name));
        if let Some(path) = &cached
            && let Ok(bytes) = tokio::fs::read(path).await
            && verify.check(&request.urls[0], &bytes).is_ok()
        {
            return Ok((request.urls[0].clone(), bytes, verify));
        }
        let limit = request.max_bytes.min(self.max_bytes);
        let mut last = None;
        for url in &request.urls {
            let outcome = self.get(state, url, limit).await.and_then(|bytes| {
                verify
                    .check(url, &bytes)
                    .map(|()| bytes)
                    .map_err(|source| FetchError::Verify { state: state.to_owned(), source })
            });
            match outcome {
                Ok(bytes) => {
                    if let Some(path) = cached {
                        self.keep(path, bytes.clone()).await;
                    }
                    return Ok((url.clone(), bytes, verify));
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| FetchError::Request {
            state: state.to_owned(),
            url: String::new(),
            reason: "no URL given".into(),
        }))
    }

    /// GET `url`, its body at most `limit` bytes, within the timeout.
    async fn get(&self, state: &str, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let request_error = |error: reqwest::Error| FetchError::Request {
            state: state.to_owned(),
            url: url.to_owned(),
            reason: with_causes(&error),
        };
        let too_large = || FetchError::TooLarge { state: state.to_owned(), url: url.to_owned(), limit };
        let attempt = async {
            let mut response = self.client.get(url).send().await.map_err(request_error)?;
            let status = response.status();
            if !status.is_success() {
                return Err(FetchError::Status {
                    state: state.to_owned(),
                    url: url.to_owned(),
                    status: status.as_u16(),
                });
            }
            if response.content_length().is_some_and(|length| length > limit) {
                return Err(too_large());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(request_error)? {
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        tokio::time::timeout(self.timeout, attempt).await.map_err(|_| FetchError::Timeout {
            state: state.to_owned(),
            url: url.to_owned(),
            after: self.timeout,
        })?
    }

    /// Keeps a checked body in the cache, then trims the cache to its
    /// size, oldest first. A cache that cannot be written only costs a
    /// fetch next time.
    async fn keep(&self, path: PathBuf, bytes: Vec<u8>) {
        let (dir, budget) = (self.cache.clone(), self.cache_bytes);
        let kept = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            halite_fs::write_atomic(&path, &bytes, 0o600).map_err(std::io::Error::other)?;
            trim(&dir, budget)
        })
        .await;
        match kept {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(path = %self.cache.display(), %error, "Cannot keep a fetched source."),
            Err(error) => tracing::warn!(%error, "Cannot keep a fetched source."),
        }
    }
}

/// The cache file of a body checked by digest; none for the others (a key
/// checked by fingerprint, `skip_verify`), which are fetched each time.
fn cache_name(verify: &Verify) -> Option<String> {
    match verify {
        Verify::Sha256(hex) => Some(format!("sha256-{hex}")),
        Verify::Sha512(hex) => Some(format!("sha512-{hex}")),
        Verify::Fingerprints(_) | Verify::Skip | Verify::HashFile(_) => None,
    }
}

/// Removes the oldest files of `dir` until it holds at most `budget` bytes.
fn trim(dir: &Path, budget: u64) -> std::io::Result<()> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            files.push((meta.modified()?, meta.len(), entry.path()));
        }
    }
    files.sort();
    let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
    for (_, len, path) in files {
        if total <= budget {
            break;
        }
        std::fs::remove_file(path)?;
        total -= len;
    }
    Ok(())
}

/// An error with its causes: reqwest's own text ("error sending request")
/// says little without them (the webhook action's errors too).
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on 127.0.0.1 answering every request with `answer` (raw
    /// HTTP), or, when `None`, reading the request and never answering.
    async fn server(answer: Option<Vec<u8>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else { return };
                let mut buffer = [0u8; 4096];
                let _ = tcp.read(&mut buffer).await;
                match &answer {
                    Some(answer) => {
                        let _ = tcp.write_all(answer).await;
                        let _ = tcp.shutdown().await;
                    }
                    None => held.push(tcp),
                }
            }
        });
        format!("http://{address}/file")
    }

    fn fetcher(data_dir: &Path, timeout: Duration, max_bytes: u64) -> Fetcher {
        let config = FetchConfig { timeout, max_bytes, ..FetchConfig::default() };
        Fetcher::new(&config, data_dir).unwrap()
    }

    fn request(url: &str, body: &[u8]) -> Request {
        Request::new("contents", vec![url.to_owned()], Verify::parse_hash(&Sha256::of(body).to_hex()).unwrap())
    }

    use halite_proto::Sha256;

    /// A server that never answers: the fetch ends at `fetch.timeout` with
    /// the named error (time is paused: the runtime jumps to the timeout
    /// once nothing else can happen, no wall-clock wait).
    #[tokio::test(start_paused = true)]
    async fn a_silent_server_is_a_timeout_naming_the_state_and_url() {
        let dir = tempfile::tempdir().unwrap();
        let url = server(None).await;
        let fetcher = fetcher(dir.path(), Duration::from_secs(30), 1024);
        let error = fetcher.fetch("motd", &request(&url, b"x")).await.unwrap_err();
        assert!(matches!(error, FetchError::Timeout { .. }), "{error}");
        let text = error.to_string();
        assert!(text.contains("state `motd`") && text.contains(&url) && text.contains("fetch.timeout"), "{text}");
    }

    /// Over `fetch.max_bytes`, announced (content-length) or not (read until
    /// the server closes): refused, named; an error status is named too.
    #[tokio::test]
    async fn oversized_bodies_and_error_statuses_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let fetcher = fetcher(dir.path(), Duration::from_secs(30), 16);
        let body = vec![b'x'; 64];
        let announced =
            [format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes(), body.clone()].concat();
        let unannounced = [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec(), body.clone()].concat();
        for answer in [announced, unannounced] {
            let url = server(Some(answer)).await;
            let error = fetcher.fetch("big", &request(&url, &body)).await.unwrap_err();
            assert!(matches!(error, FetchError::TooLarge { limit: 16, .. }), "{error}");
            assert!(error.to_string().contains("fetch.max_bytes"), "{error}");
        }
        let url = server(Some(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n".to_vec())).await;
        let error = fetcher.fetch("broken", &request(&url, b"x")).await.unwrap_err();
        assert!(matches!(error, FetchError::Status { status: 500, .. }), "{error}");
    }

    /// A body checked by digest is kept: the next fetch of it needs no
    /// server. A body that does not match is neither taken nor kept.
    #[tokio::test]
    async fn checked_bodies_are_cached_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let fetcher = fetcher(dir.path(), Duration::from_secs(30), 1024);
        let body = b"hello\n".to_vec();
        let answer =
            [format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes(), body.clone()].concat();
        let url = server(Some(answer.clone())).await;
        let wrong = fetcher.fetch("motd", &request(&url, b"other\n")).await.unwrap_err();
        assert!(matches!(wrong, FetchError::Verify { .. }), "{wrong}");
        assert!(
            !dir.path().join(CACHE_DIR).exists() || std::fs::read_dir(dir.path().join(CACHE_DIR)).unwrap().count() == 0
        );
        let (got, fetched, _) = fetcher.fetch("motd", &request(&url, &body)).await.unwrap();
        assert_eq!((got, fetched), (url.clone(), body.clone()));
        let cached = dir.path().join(CACHE_DIR).join(format!("sha256-{}", Sha256::of(&body).to_hex()));
        assert_eq!(std::fs::read(&cached).unwrap(), body);
        // Nothing listens there any more: the cache answers.
        let gone = "http://127.0.0.1:9/file";
        assert_eq!(fetcher.fetch("motd", &request(gone, &body)).await.unwrap().1, body);
    }

    #[test]
    fn the_cache_keeps_the_newest_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let path = dir.path().join(name);
            std::fs::write(&path, [0u8; 10]).unwrap();
            let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + i as u64);
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
        }
        trim(dir.path(), 20).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["b", "c"]);
        assert_eq!(cache_name(&Verify::Skip), None);
        assert_eq!(cache_name(&Verify::Sha256("ab".into())).as_deref(), Some("sha256-ab"));
    }
}
