//! Sources given by URL (`http://`, `https://`): `file.managed`'s
//! `source`, `archive.extracted`'s `source`, `pkgrepo.managed`'s key.
//!
//! The master fetches them, the agent never does: keeping an HTTP client
//! and a TLS stack out of the agent keeps it inside its memory budget, and
//! one fetch (cached on the master by digest) serves every agent. So a
//! kind's `resolve` cannot hold the bytes; it leaves a [`Request`] in the
//! resolved arguments (under [`ARG`]) naming the URLs, how the bytes are
//! checked ([`Verify`]) and the argument they go into. Before a job is
//! sent, the master's fetcher reads the requests ([`requests`]), fetches,
//! checks and [`fill`]s the bytes in, or the reason it could not. The
//! agent [`check`]s again before it plans: the state fails, naming the URL
//! and what to do, when the master could not fetch, when the bytes do not
//! match, or when nobody fetched (`apply --local` has no fetcher).
//!
//! This file is the only place that knows the request's keys: the kinds
//! build a [`Request`], the master and the agent read it back through it.

use halite_proto::Value;
use sha2::Digest;

/// The resolved argument that holds a call's fetch requests (a list).
pub const ARG: &str = "fetch";

/// The largest body the master takes for one URL unless a kind says
/// otherwise (an archive's limit is its own).
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Why fetched bytes are not what the state asked for, or were not
/// fetched. Each names the URL and says what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("{reason}")]
    Failed { url: String, reason: String },
    #[error(
        "`{url}` was not fetched: the master fetches URL sources before it sends a job, and nothing did here (`apply --local` cannot); apply it from the master, or put the file in the state tree"
    )]
    NotFetched { url: String },
    #[error(
        "`{url}` has {algorithm} {actual}, source_hash says {expected}: the file at the URL is not the one the state names; check what changed there, then update source_hash (or the URL)"
    )]
    Mismatch { url: String, algorithm: &'static str, expected: String, actual: String },
    #[error(
        "the key at `{url}` has fingerprint {}, the state names {}: refusing a key that is not the one named; check the key's origin, then update the fingerprint",
        if found.is_empty() { "(none)".to_owned() } else { found.join(", ") },
        expected.join(", ")
    )]
    Fingerprint { url: String, expected: Vec<String>, found: Vec<String> },
    #[error("the key at `{url}` is not an OpenPGP public key: {reason}; give the URL of the repository's key")]
    NotAKey { url: String, reason: String },
}

/// How fetched bytes are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Lowercase hex.
    Sha256(String),
    Sha512(String),
    /// An OpenPGP key file: every primary key in it must have one of these
    /// fingerprints (uppercase hex, no spaces).
    Fingerprints(Vec<String>),
    /// `skip_verify: True`: taken as served.
    Skip,
    /// Salt's `source_hash` given as a URL: a hash file (`<hex>  <name>`
    /// lines, as `sha256sum` writes) that the master fetches first, then
    /// replaces with the digest it lists for the source's file name (or
    /// its only line), so the agent checks a digest.
    HashFile(String),
}

/// Why a `source_hash` or fingerprint as written cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashSyntaxError {
    #[error("source_hash type `{kind}` is not supported")]
    Kind { kind: String },
    #[error("source_hash `{hash}` is not a {kind} ({digits} hex digits)")]
    Digits { hash: String, kind: &'static str, digits: usize },
    #[error("source_hash `{hash}` is neither `sha256=<hex>`, `sha512=<hex>` nor a bare sha256 or sha512")]
    Form { hash: String },
    #[error("fingerprint `{fingerprint}` is not an OpenPGP fingerprint (40 or 64 hex digits)")]
    Fingerprint { fingerprint: String },
}

impl Verify {
    /// Salt's `source_hash` forms: `sha256=<hex>` (or `sha256:`),
    /// `sha512=<hex>`, or a bare hex digest (its length says which).
    pub fn parse_hash(hash: &str) -> Result<Verify, HashSyntaxError> {
        let hash = hash.trim();
        let (kind, hex) = match hash.split_once('=').or_else(|| hash.split_once(':')) {
            Some((kind, hex)) => (Some(kind.trim().to_lowercase()), hex.trim()),
            None => (None, hash),
        };
        let is_hex = |h: &str| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit());
        let digits = |kind: &'static str, want: usize| {
            if hex.len() == want && is_hex(hex) {
                Ok(hex.to_lowercase())
            } else {
                Err(HashSyntaxError::Digits { hash: hash.to_owned(), kind, digits: want })
            }
        };
        match kind.as_deref() {
            Some("sha256") => digits("sha256", 64).map(Verify::Sha256),
            Some("sha512") => digits("sha512", 128).map(Verify::Sha512),
            Some(other) => Err(HashSyntaxError::Kind { kind: other.to_owned() }),
            None if is_hex(hex) && hex.len() == 64 => Ok(Verify::Sha256(hex.to_lowercase())),
            None if is_hex(hex) && hex.len() == 128 => Ok(Verify::Sha512(hex.to_lowercase())),
            None => Err(HashSyntaxError::Form { hash: hash.to_owned() }),
        }
    }

    /// Fingerprints as authored (spaces allowed, any case).
    pub fn parse_fingerprints(list: &[String]) -> Result<Verify, HashSyntaxError> {
        let mut out = Vec::new();
        for fingerprint in list {
            let clean: String = fingerprint.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_uppercase();
            let clean = clean.strip_prefix("0X").unwrap_or(&clean).to_owned();
            if !(clean.len() == 40 || clean.len() == 64) || !clean.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(HashSyntaxError::Fingerprint { fingerprint: fingerprint.clone() });
            }
            out.push(clean);
        }
        Ok(Verify::Fingerprints(out))
    }

    /// Checks `bytes`, fetched from `url`, against this.
    pub fn check(&self, url: &str, bytes: &[u8]) -> Result<(), FetchError> {
        let mismatch = |algorithm, expected: &str, actual: String| {
            if expected == actual {
                Ok(())
            } else {
                Err(FetchError::Mismatch { url: url.to_owned(), algorithm, expected: expected.to_owned(), actual })
            }
        };
        match self {
            Verify::Sha256(hex) => mismatch("sha256", hex, hex_of(&sha2::Sha256::digest(bytes))),
            Verify::Sha512(hex) => mismatch("sha512", hex, hex_of(&sha2::Sha512::digest(bytes))),
            Verify::Fingerprints(expected) => {
                let found =
                    fingerprints(bytes).map_err(|reason| FetchError::NotAKey { url: url.to_owned(), reason })?;
                if found.is_empty() || !found.iter().all(|f| expected.contains(f)) {
                    return Err(FetchError::Fingerprint { url: url.to_owned(), expected: expected.clone(), found });
                }
                Ok(())
            }
            Verify::Skip => Ok(()),
            // Replaced by the master before the bytes reach an agent.
            Verify::HashFile(list) => Err(FetchError::NotFetched { url: list.clone() }),
        }
    }

    fn encode(&self) -> String {
        match self {
            Verify::Sha256(hex) => format!("sha256={hex}"),
            Verify::Sha512(hex) => format!("sha512={hex}"),
            Verify::Fingerprints(list) => format!("pgp={}", list.join(",")),
            Verify::Skip => "skip".into(),
            Verify::HashFile(url) => format!("list={url}"),
        }
    }

    fn decode(text: &str) -> Option<Verify> {
        match text.split_once('=') {
            Some(("pgp", list)) => Some(Verify::Fingerprints(list.split(',').map(str::to_owned).collect())),
            Some(("list", url)) => Some(Verify::HashFile(url.to_owned())),
            Some(_) => Verify::parse_hash(text).ok(),
            None if text == "skip" => Some(Verify::Skip),
            None => None,
        }
    }
}

/// The digest a hash file (`<hex>  <name>` lines; `*name` and paths
/// allowed, as `sha256sum` writes them) lists for the file called `name`,
/// or its only line's.
pub fn listed(listing: &str, name: &str) -> Option<Verify> {
    let lines: Vec<Vec<&str>> =
        listing.lines().map(|l| l.split_whitespace().collect()).filter(|w: &Vec<&str>| !w.is_empty()).collect();
    let found = lines
        .iter()
        .find(|w| w.get(1).is_some_and(|n| n.trim_start_matches('*').rsplit('/').next() == Some(name)))
        .or(if lines.len() == 1 { lines.first() } else { None })?;
    Verify::parse_hash(found[0]).ok()
}

/// The file name a URL names (its last path segment), for a hash file.
pub fn url_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    path.rsplit('/').next().unwrap_or_default()
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a source names a URL the master fetches.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// Whether a source names a scheme halite does not fetch (`ftp://`,
/// `s3://`, …): anything with `://` that is neither the tree nor HTTP(S).
pub fn is_other_scheme(source: &str) -> bool {
    source.contains("://") && !source.starts_with("salt://") && !is_url(source)
}

/// One thing to fetch for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The resolved argument (bytes) the body goes into.
    pub into: String,
    /// Tried in order; the first that fetches and checks is taken.
    pub urls: Vec<String>,
    pub verify: Verify,
    /// `into` already holds bytes from the state tree, used when no URL
    /// can be fetched (a source list whose later entry is a tree file).
    pub fallback: bool,
    pub max_bytes: u64,
    /// Set by [`fill`]: the URL fetched.
    pub got: Option<String>,
    /// Set by [`fill`]: why none could be.
    pub error: Option<String>,
}

impl Request {
    pub fn new(into: &str, urls: Vec<String>, verify: Verify) -> Request {
        Request { into: into.to_owned(), urls, verify, fallback: false, max_bytes: MAX_BYTES, got: None, error: None }
    }

    fn to_value(&self) -> Value {
        let mut value = Value::map()
            .with("into", self.into.as_str())
            .with("urls", Value::List(self.urls.iter().map(|u| Value::from(u.as_str())).collect()))
            .with("verify", self.verify.encode())
            .with("fallback", self.fallback)
            .with("max_bytes", i64::try_from(self.max_bytes).unwrap_or(i64::MAX));
        if let Some(got) = &self.got {
            value = value.with("got", got.as_str());
        }
        if let Some(error) = &self.error {
            value = value.with("error", error.as_str());
        }
        value
    }

    fn from_value(value: &Value) -> Option<Request> {
        let string = |key| value.get(key).and_then(Value::as_str).map(str::to_owned);
        let urls = match value.get("urls") {
            Some(Value::List(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => return None,
        };
        Some(Request {
            into: string("into")?,
            urls,
            verify: Verify::decode(value.get("verify")?.as_str()?)?,
            fallback: matches!(value.get("fallback"), Some(Value::Bool(true))),
            max_bytes: match value.get("max_bytes") {
                Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(MAX_BYTES),
                _ => MAX_BYTES,
            },
            got: string("got"),
            error: string("error"),
        })
    }

    /// The URLs, for a message.
    pub fn urls_text(&self) -> String {
        self.urls.join(", ")
    }
}

/// `args` with these requests added (a kind's `resolve`).
pub fn with_requests(args: Value, requests: &[Request]) -> Value {
    if requests.is_empty() {
        return args;
    }
    args.with(ARG, Value::List(requests.iter().map(Request::to_value).collect()))
}

/// A call's fetch requests, in order.
pub fn requests(args: &Value) -> Vec<Request> {
    match args.get(ARG) {
        Some(Value::List(items)) => items.iter().filter_map(Request::from_value).collect(),
        _ => Vec::new(),
    }
}

/// Puts the outcome of request `index` into `args`: the URL fetched and
/// its bytes, or why none could be (the fallback, if any, stays).
pub fn fill(args: &mut Value, index: usize, outcome: Result<(String, Vec<u8>), String>) {
    let Value::Map(map) = args else { return };
    let Some(Value::List(items)) = map.get(ARG) else { return };
    let Some(mut request) = items.get(index).and_then(Request::from_value) else { return };
    let bytes = match outcome {
        Ok((url, bytes)) => {
            request.got = Some(url);
            Some(bytes)
        }
        Err(error) => {
            request.error = Some(error);
            None
        }
    };
    if let Some(Value::List(items)) = map.get_mut(ARG) {
        items[index] = request.to_value();
    }
    if let Some(bytes) = bytes {
        map.insert(request.into.clone(), Value::Bytes(bytes));
    }
}

/// What the master knows of argument `into` before fetching it: `None`
/// when no request for it is pending (the argument holds the content);
/// `Some(digest)` when one is, with the sha256 the content will have if
/// the request is checked by sha256 (`Some(None)`: not known until
/// fetched). For the master's views of a tree's desired files
/// (`server/inventory.rs`), which must not take an unfetched URL source
/// for an empty file.
pub fn pending_sha256(args: &Value, into: &str) -> Option<Option<halite_proto::Sha256>> {
    let request = requests(args).into_iter().find(|r| r.into == into && r.got.is_none())?;
    Some(match request.verify {
        Verify::Sha256(hex) => {
            let mut digest = [0u8; 32];
            let bytes = (0..32).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok());
            for (slot, byte) in digest.iter_mut().zip(bytes) {
                *slot = byte?;
            }
            Some(halite_proto::Sha256(digest))
        }
        _ => None,
    })
}

/// Replaces request `index`'s check with `verify` (the master, once it
/// has read a hash file: the agent checks the digest it listed).
pub fn set_verify(args: &mut Value, index: usize, verify: Verify) {
    let Value::Map(map) = args else { return };
    let Some(Value::List(items)) = map.get_mut(ARG) else { return };
    let Some(item) = items.get_mut(index) else { return };
    if let Some(mut request) = Request::from_value(item) {
        request.verify = verify;
        *item = request.to_value();
    }
}

/// On the agent, before planning: every request was fetched and its bytes
/// check, or it has a tree fallback and the master said why the URLs
/// failed (then the fallback is used, as Salt's source list does).
pub fn check(args: &Value) -> Result<(), FetchError> {
    for request in requests(args) {
        let first = request.urls.first().cloned().unwrap_or_default();
        match (&request.got, &request.error) {
            (Some(url), _) => {
                let bytes = match args.get(&request.into) {
                    Some(Value::Bytes(bytes)) => bytes.as_slice(),
                    _ => &[],
                };
                request.verify.check(url, bytes)?;
            }
            (None, Some(_)) if request.fallback => {}
            (None, Some(reason)) => return Err(FetchError::Failed { url: first, reason: reason.clone() }),
            (None, None) => return Err(FetchError::NotFetched { url: first }),
        }
    }
    Ok(())
}

/// The fingerprints of the primary keys in an OpenPGP key file, binary
/// or ASCII-armoured (uppercase hex): v4 keys' SHA-1, v5 and v6 keys'
/// SHA-256, over the key packet as RFC 9580 §5.5.4 frames it.
pub fn fingerprints(key: &[u8]) -> Result<Vec<String>, String> {
    let binary;
    let data = if key.starts_with(b"-----BEGIN PGP") {
        binary = dearmor(&String::from_utf8_lossy(key))?;
        &binary[..]
    } else {
        key
    };
    let mut found = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (tag, header, length) = packet_header(&data[at..]).ok_or("a damaged packet header")?;
        let body = data.get(at + header..at + header + length).ok_or("a packet longer than the file")?;
        if tag == 6 {
            let (prefix, size): (u8, Vec<u8>) = match body.first() {
                Some(4) => (0x99, u16::try_from(length).map_err(|_| "a v4 key too long")?.to_be_bytes().to_vec()),
                Some(5) => (0x9a, u32::try_from(length).map_err(|_| "a key too long")?.to_be_bytes().to_vec()),
                Some(6) => (0x9b, u32::try_from(length).map_err(|_| "a key too long")?.to_be_bytes().to_vec()),
                Some(version) => return Err(format!("a version {version} key")),
                None => return Err("an empty key packet".into()),
            };
            let framed: Vec<u8> = [&[prefix][..], &size, body].concat();
            found.push(match body[0] {
                4 => hex_of(&sha1::Sha1::digest(&framed)),
                _ => hex_of(&sha2::Sha256::digest(&framed)),
            });
        }
        at += header + length;
    }
    if found.is_empty() {
        return Err("no public key packet".into());
    }
    Ok(found.into_iter().map(|f| f.to_uppercase()).collect())
}

/// (tag, header length, body length) of the packet at the start of `data`.
fn packet_header(data: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *data.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let byte = |i: usize| data.get(i).map(|b| usize::from(*b));
    if first & 0x40 != 0 {
        let tag = first & 0x3f;
        match byte(1)? {
            n @ 0..192 => Some((tag, 2, n)),
            n @ 192..224 => Some((tag, 3, ((n - 192) << 8) + byte(2)? + 192)),
            255 => Some((tag, 6, (byte(2)? << 24) | (byte(3)? << 16) | (byte(4)? << 8) | byte(5)?)),
            // Partial lengths: never in a key file.
            _ => None,
        }
    } else {
        let tag = (first >> 2) & 0x0f;
        match first & 3 {
            0 => Some((tag, 2, byte(1)?)),
            1 => Some((tag, 3, (byte(1)? << 8) | byte(2)?)),
            2 => Some((tag, 5, (byte(1)? << 24) | (byte(2)? << 16) | (byte(3)? << 8) | byte(4)?)),
            _ => None,
        }
    }
}

/// The binary of an ASCII-armoured block: headers, the checksum line and
/// the armour lines left out.
fn dearmor(text: &str) -> Result<Vec<u8>, String> {
    let mut lines = text.lines().map(str::trim).skip_while(|l| !l.starts_with("-----BEGIN PGP")).skip(1).peekable();
    // Armour headers (`Version: …`) end at a blank line.
    let mut body: Vec<&str> = Vec::new();
    let mut in_headers = true;
    for line in lines.by_ref() {
        if line.starts_with("-----END PGP") {
            break;
        }
        if in_headers && line.contains(": ") {
            continue;
        }
        in_headers = false;
        if line.is_empty() || (line.starts_with('=') && line.len() == 5) {
            continue;
        }
        body.push(line);
    }
    base64(&body.concat()).ok_or_else(|| "damaged armour (not base64)".to_owned())
}

fn base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        bits = (bits << 6) | u32::from(value(c)?);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_hash_forms() {
        let sha256 = "a".repeat(64);
        let sha512 = "B".repeat(128);
        let cases: Vec<(String, Result<Verify, ()>)> = vec![
            (format!("sha256={sha256}"), Ok(Verify::Sha256(sha256.clone()))),
            (format!("sha256:{sha256}"), Ok(Verify::Sha256(sha256.clone()))),
            (sha256.clone(), Ok(Verify::Sha256(sha256.clone()))),
            (format!("sha512={sha512}"), Ok(Verify::Sha512(sha512.to_lowercase()))),
            (sha512.clone(), Ok(Verify::Sha512(sha512.to_lowercase()))),
            ("md5=d41d8cd98f00b204e9800998ecf8427e".into(), Err(())),
            ("sha256=abc".into(), Err(())),
            (format!("sha512={sha256}"), Err(())),
            ("not a hash".into(), Err(())),
            ("a".repeat(63), Err(())),
        ];
        for (input, expected) in cases {
            assert_eq!(Verify::parse_hash(&input).map_err(|_| ()), expected, "{input}");
        }
        assert!(Verify::parse_hash("md5=00").unwrap_err().to_string().contains("md5"));
    }

    #[test]
    fn hash_files_list_the_digest_by_file_name() {
        let (a, b) = ("a".repeat(64), "b".repeat(128));
        let listing = format!("{a}  app-1.0.tar.gz\n{b} *dist/tool\n");
        assert_eq!(listed(&listing, "app-1.0.tar.gz"), Some(Verify::Sha256(a.clone())));
        assert_eq!(listed(&listing, "tool"), Some(Verify::Sha512(b)));
        assert_eq!(listed(&listing, "other"), None);
        assert_eq!(listed(&format!("{a}\n"), "anything"), Some(Verify::Sha256(a.clone())));
        assert_eq!(url_file_name("https://x.example/dl/app-1.0.tar.gz?token=1"), "app-1.0.tar.gz");
        // The wire form keeps it; the master replaces it; unreplaced, the
        // agent refuses.
        let request = Request::new("contents", vec!["http://x/app".into()], Verify::HashFile("http://x/SUMS".into()));
        let mut args = with_requests(Value::map(), std::slice::from_ref(&request));
        assert_eq!(requests(&args), [request]);
        fill(&mut args, 0, Ok(("http://x/app".into(), b"hello\n".to_vec())));
        assert!(matches!(check(&args), Err(FetchError::NotFetched { .. })));
        set_verify(&mut args, 0, Verify::Sha256(hex_of(&sha2::Sha256::digest(b"hello\n"))));
        assert_eq!(check(&args), Ok(()));
    }

    #[test]
    fn requests_survive_the_wire_form_and_fill_checks_on_the_agent() {
        let body = b"hello\n".to_vec();
        let hash = hex_of(&sha2::Sha256::digest(&body));
        let request = Request::new("contents", vec!["http://127.0.0.1/a".into()], Verify::Sha256(hash.clone()));
        let mut args = with_requests(Value::map().with("contents", Vec::<u8>::new()), std::slice::from_ref(&request));
        assert_eq!(requests(&args), std::slice::from_ref(&request));
        assert!(matches!(check(&args), Err(FetchError::NotFetched { .. })), "nobody fetched it");

        let mut good = args.clone();
        fill(&mut good, 0, Ok(("http://127.0.0.1/a".into(), body.clone())));
        assert_eq!(check(&good), Ok(()));
        assert_eq!(good.get("contents"), Some(&Value::Bytes(body)));

        let mut tampered = good.clone();
        if let Value::Map(map) = &mut tampered {
            map.insert("contents".into(), Value::Bytes(b"other\n".to_vec()));
        }
        let error = check(&tampered).unwrap_err();
        assert!(matches!(&error, FetchError::Mismatch { expected, .. } if *expected == hash), "{error}");
        assert!(error.to_string().contains("http://127.0.0.1/a"), "{error}");

        assert_eq!(pending_sha256(&args, "contents"), Some(Some(halite_proto::Sha256::of(b"hello\n"))));
        assert_eq!(pending_sha256(&good, "contents"), None, "fetched: the content is there");
        assert_eq!(pending_sha256(&args, "other"), None);
        let unknown = with_requests(Value::map(), &[Request::new("key", vec!["http://x/k".into()], Verify::Skip)]);
        assert_eq!(pending_sha256(&unknown, "key"), Some(None));
        fill(&mut args, 0, Err("HTTP 404".into()));
        assert_eq!(
            check(&args),
            Err(FetchError::Failed { url: "http://127.0.0.1/a".into(), reason: "HTTP 404".into() })
        );
        // With a tree file after the URL, the fallback is taken.
        let mut fallback = request;
        fallback.fallback = true;
        let mut args = with_requests(Value::map().with("contents", b"tree".to_vec()), &[fallback]);
        fill(&mut args, 0, Err("HTTP 404".into()));
        assert_eq!(check(&args), Ok(()));
    }

    /// A v4 key packet (new format, as gpg writes it) and an old-format
    /// one, checked against SHA-1 over the framed packet computed here by
    /// hand, and the armoured form of the same bytes.
    #[test]
    fn fingerprints_of_binary_and_armoured_keys() {
        let body: Vec<u8> = [&[4u8, 0x65, 0, 0, 0, 22][..], &[0x11; 32]].concat();
        let framed: Vec<u8> = [&[0x99, 0, body.len() as u8][..], &body].concat();
        let expected = hex_of(&sha1::Sha1::digest(&framed)).to_uppercase();
        let new_format: Vec<u8> = [&[0xc6, body.len() as u8][..], &body, &[0xcd, 3, b'a', b'b', b'c']].concat();
        let old_format: Vec<u8> = [&[0x98, body.len() as u8][..], &body].concat();
        assert_eq!(fingerprints(&new_format).unwrap(), std::slice::from_ref(&expected));
        assert_eq!(fingerprints(&old_format).unwrap(), std::slice::from_ref(&expected));
        let armoured = format!(
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: test\n\n{}\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n",
            encode64(&new_format)
        );
        assert_eq!(fingerprints(armoured.as_bytes()).unwrap(), std::slice::from_ref(&expected));
        assert!(fingerprints(b"\xcd\x03abc").is_err(), "a user id alone is no key");
        assert!(fingerprints(b"plain text").is_err());

        let verify = Verify::parse_fingerprints(&[expected.chars().collect::<String>().to_lowercase()]).unwrap();
        assert_eq!(verify.check("u", &new_format), Ok(()));
        let wrong = Verify::parse_fingerprints(&["0".repeat(40)]).unwrap();
        assert!(matches!(wrong.check("u", &new_format), Err(FetchError::Fingerprint { .. })));
        assert!(Verify::parse_fingerprints(&["ABCD".into()]).is_err());
    }

    /// A key gpg made, armoured and binary: halite's fingerprint is gpg's.
    #[test]
    fn fingerprints_match_gpg_for_a_real_key() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/keys");
        let expected = std::fs::read_to_string(dir.join("repo.fingerprint")).unwrap().trim().to_owned();
        for file in ["repo.asc", "repo.gpg"] {
            let key = std::fs::read(dir.join(file)).unwrap();
            assert_eq!(fingerprints(&key).unwrap(), std::slice::from_ref(&expected), "{file}");
        }
    }

    fn encode64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        while !out.len().is_multiple_of(4) {
            out.push('=');
        }
        out
    }
}
