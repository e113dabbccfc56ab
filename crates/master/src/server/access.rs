//! Who may do what: roles (master.yaml's `roles:`, compiled once at
//! start), API tokens (halite.db's `api_tokens`, sha256 only) and the
//! principal a request runs as; and the door to the audit log
//! (`audit.rs`) every change and every refusal goes through.
//!
//! One rule for the API and the control socket alike: a request names a
//! verb and the agents it reaches, and [`Principal::allows`] decides. A
//! token's principal has its role; a command on the control socket runs as
//! `local:uid:N` with the built-in `admin` role (whoever can open the
//! owner-only socket can already read the master's key), unless it
//! presents a token (`--token`, `HALITE_TOKEN`), which it then runs as.
//! A verified client certificate on the API runs as `cert:<name>` with the
//! role master.yaml's `access.certificates` gives that name (its subject's
//! common name, or one of its DNS names): the same role, the same rule.
//!
//! Tokens live in memory, loaded at start and changed only here, so
//! checking one is a hash and a lookup, no I/O. Every write (tokens, audit
//! rows) goes through one SQLite connection of our own on halite.db, off
//! the runtime's threads; it is closed before the store's writer so the
//! store's clean stop can checkpoint its WAL.
//!
//! With `store: postgres://…` ([`Access::with_postgres`]) tokens and the
//! audit log are PostgreSQL's instead, shared by every master
//! (`server/cluster/access.rs`): a token made on one master works on all,
//! and the audit log is one chain. Memory still answers a check; a token
//! not in memory is read through from PostgreSQL once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use halite_proto::Value;
use halite_proto::event::now_us;
use halite_proto::hash::Sha256;
use halite_state::Target;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::config::{RoleConfig, Verb};
use crate::server::audit::{self, AuditError, Entry};

/// What a token starts with, so a leaked one is recognisable (secret
/// scanners, logs).
pub const TOKEN_PREFIX: &str = "hlt_";

/// A compiled role.
#[derive(Debug)]
pub struct Role {
    pub name: String,
    pub verbs: BTreeSet<Verb>,
    /// The agents the verbs reach, as authored.
    pub target_text: String,
    target: Target,
}

impl Role {
    /// The built-in role: every verb, every agent.
    pub fn admin() -> Role {
        Role {
            name: "admin".into(),
            verbs: [Verb::Admin].into(),
            target_text: "*".into(),
            target: Target::parse("*").unwrap_or_else(|_| unreachable!("`*` is a target")),
        }
    }

    /// Whether the role has `verb` (`admin` has them all).
    pub fn can(&self, verb: Verb) -> bool {
        self.verbs.contains(&Verb::Admin) || self.verbs.contains(&verb)
    }

    /// Whether the role's target matches `agent` (`admin` reaches all).
    pub fn reaches(&self, agent: &str, facts: &Value) -> bool {
        self.verbs.contains(&Verb::Admin) || self.target.matches(agent, facts)
    }
}

/// Who a request runs as.
#[derive(Debug, Clone)]
pub struct Principal {
    /// `token:<name>`, `cert:<name>` or `local:uid:<n>`: the audit log's
    /// `who`.
    pub who: String,
    pub role: Arc<Role>,
}

/// Why a principal may not do something; the API answers 403 with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{who} (role `{role}`) may not {verb}: the role's verbs are {verbs}")]
    Verb { who: String, role: String, verb: &'static str, verbs: String },
    #[error("{who} (role `{role}`) may not {verb} on {agents}: the role reaches `{target}` only")]
    Agents { who: String, role: String, verb: &'static str, agents: String, target: String },
}

impl Principal {
    /// The operator on the control socket (uid from the socket's peer
    /// credentials): the built-in `admin`.
    pub fn local(uid: Option<u32>) -> Principal {
        let who = uid.map_or_else(|| "local".to_owned(), |uid| format!("local:uid:{uid}"));
        Principal { who, role: Arc::new(Role::admin()) }
    }

    /// Whether this principal may `verb` on every agent in `agents`
    /// (id and facts): all or nothing, so a `web*` role asking for `*`
    /// while db01 is connected is refused, not quietly narrowed.
    pub fn allows<'a>(
        &self,
        verb: Verb,
        agents: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> Result<(), Refusal> {
        if !self.role.can(verb) {
            return Err(Refusal::Verb {
                who: self.who.clone(),
                role: self.role.name.clone(),
                verb: verb.as_str(),
                verbs: self.role.verbs.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        let outside: Vec<&str> =
            agents.into_iter().filter(|(agent, facts)| !self.role.reaches(agent, facts)).map(|(a, _)| a).collect();
        if outside.is_empty() {
            return Ok(());
        }
        Err(Refusal::Agents {
            who: self.who.clone(),
            role: self.role.name.clone(),
            verb: verb.as_str(),
            agents: outside.join(", "),
            target: self.role.target_text.clone(),
        })
    }

    /// Whether the principal may see `agent` (the `read` verb's scope).
    pub fn sees(&self, agent: &str, facts: &Value) -> bool {
        self.role.can(Verb::Read) && self.role.reaches(agent, facts)
    }

    /// Whether the principal has `verb` at all (for what has no agent:
    /// tokens, the audit log, backups need `admin`).
    pub fn can(&self, verb: Verb) -> Result<(), Refusal> {
        self.allows(verb, std::iter::empty())
    }
}

/// One token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRow {
    pub name: String,
    pub role: String,
    pub created_us: i64,
}

/// Why a token or audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("the access tables in {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("no role `{role}` in master.yaml's `roles:` (roles: {known})")]
    NoRole { role: String, known: String },
    #[error(
        "a token named `{name}` exists; revoke it first (`halite-master tokens revoke {name}`) or pick another name"
    )]
    Exists { name: String },
    #[error("`{name}` is not a token name: use letters, digits, `-`, `_` and `.`, at most 64")]
    BadName { name: String },
    #[error("the token was not recognised (revoked, mistyped, or made for another master)")]
    Unknown,
    #[error("token `{name}` has role `{role}`, which master.yaml no longer defines")]
    RoleGone { name: String, role: String },
    #[error("the master is stopping")]
    Closed,
    #[error(
        "the client certificate `{name}` verified, but no role is given to it: add it to master.yaml's `access: {{certificates: {{{name}: ROLE}}}}` (roles: {known})"
    )]
    UnmappedCertificate { name: String, known: String },
    #[error("{0}; API tokens are kept in PostgreSQL, so they cannot be changed until it answers (try again)")]
    Shared(#[from] crate::server::cluster::access::SharedAccessError),
}

/// Roles, tokens and the audit log of the running master.
#[derive(Debug)]
pub struct Access {
    roles: BTreeMap<String, Arc<Role>>,
    /// A client certificate's name → its role (`access.certificates`).
    certificates: BTreeMap<String, Arc<Role>>,
    /// Every token by the hex sha256 of its text.
    tokens: Arc<RwLock<HashMap<String, TokenRow>>>,
    /// Ours alone; `None` once closed.
    db: Arc<Mutex<Option<Connection>>>,
    path: PathBuf,
    /// With several masters on PostgreSQL: where tokens and the audit log
    /// are kept instead of halite.db.
    shared: Option<SharedParts>,
}

/// The PostgreSQL side of tokens and the audit log.
#[derive(Debug, Clone)]
struct SharedParts {
    shared: Arc<crate::server::cluster::access::Shared>,
    pending: Arc<crate::server::cluster::access::Pending>,
}

impl Access {
    /// Opens the access tables of the store at `path` (already migrated
    /// by `Store::open`) and compiles `roles` (checked by the config's
    /// loading). Blocking.
    pub fn open(path: &Path, roles: &BTreeMap<String, RoleConfig>) -> Result<Access, AccessError> {
        let err = |source| AccessError::Sqlite { path: path.to_path_buf(), source };
        let connection = Connection::open(path).map_err(err)?;
        connection.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        let tokens = {
            let mut statement =
                connection.prepare("SELECT name, role, hash, created_us FROM api_tokens").map_err(err)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(2)?,
                        TokenRow { name: row.get(0)?, role: row.get(1)?, created_us: row.get(3)? },
                    ))
                })
                .map_err(err)?;
            rows.collect::<Result<HashMap<_, _>, _>>().map_err(err)?
        };
        Ok(Access {
            roles: compile(roles),
            certificates: BTreeMap::new(),
            tokens: Arc::new(RwLock::new(tokens)),
            db: Arc::new(Mutex::new(Some(connection))),
            path: path.to_path_buf(),
            shared: None,
        })
    }

    /// Keeps tokens and the audit log in PostgreSQL (`target`) from now
    /// on, shared with the other masters: listens for token changes,
    /// chains in audit entries kept in `data_dir` while it was
    /// unreachable, and the first time this data dir meets PostgreSQL
    /// imports halite.db's tokens and audit rows. Until `cancel`.
    pub async fn with_postgres(
        mut self,
        target: crate::server::store::postgres::PgTarget,
        data_dir: &Path,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<Access, AccessError> {
        use crate::server::cluster::access::{
            IMPORTED_MARKER, Import, Listener, PENDING_FILE, Pending, Shared, StoredToken,
        };
        let marker = data_dir.join(IMPORTED_MARKER);
        let import = if tokio::fs::try_exists(&marker).await.unwrap_or(false) {
            None
        } else {
            let tokens = self
                .tokens
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(hash, row)| StoredToken {
                    name: row.name.clone(),
                    role: row.role.clone(),
                    hash: hash.clone(),
                    created_us: row.created_us,
                })
                .collect();
            Some(Import { tokens, audit: self.audit_all().await? })
        };
        let parts = SharedParts {
            shared: Arc::new(Shared::new(target)),
            pending: Arc::new(Pending::new(data_dir.join(PENDING_FILE))),
        };
        let tokens = self.tokens.clone();
        let listener = Listener {
            shared: parts.shared.clone(),
            pending: parts.pending.clone(),
            replace: Box::new(move |rows| {
                let rows = rows
                    .into_iter()
                    .map(|t| (t.hash, TokenRow { name: t.name, role: t.role, created_us: t.created_us }))
                    .collect();
                *tokens.write().unwrap_or_else(|p| p.into_inner()) = rows;
            }),
            import,
            marker,
        };
        tokio::spawn(listener.run(cancel));
        self.shared = Some(parts);
        Ok(self)
    }

    /// As [`Access::authenticate`]; with tokens in PostgreSQL, a token not
    /// in memory (made on another master a moment ago) is read through.
    pub async fn authenticate_current(&self, token: &str) -> Result<Principal, AccessError> {
        match (self.authenticate(token), &self.shared) {
            (Err(AccessError::Unknown), Some(parts)) => {
                let hash = Sha256::of(token.trim().as_bytes()).to_hex();
                let Some(found) = parts.shared.find_token(&hash).await? else { return Err(AccessError::Unknown) };
                let row = TokenRow { name: found.name, role: found.role, created_us: found.created_us };
                self.tokens.write().unwrap_or_else(|p| p.into_inner()).insert(hash, row);
                self.authenticate(token)
            }
            (result, _) => result,
        }
    }

    /// The principal a token stands for.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AccessError> {
        let hash = Sha256::of(token.trim().as_bytes()).to_hex();
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let row = tokens.get(&hash).ok_or(AccessError::Unknown)?;
        let role = self
            .roles
            .get(&row.role)
            .ok_or_else(|| AccessError::RoleGone { name: row.name.clone(), role: row.role.clone() })?;
        Ok(Principal { who: format!("token:{}", row.name), role: role.clone() })
    }

    /// Gives client certificates their roles: name → role, as master.yaml's
    /// `access.certificates` (checked by the config's loading: a role it
    /// names that does not exist maps nothing).
    #[must_use]
    pub fn with_certificates(mut self, certificates: &BTreeMap<String, String>) -> Access {
        self.certificates = certificates
            .iter()
            .filter_map(|(name, role)| Some((name.clone(), self.roles.get(role)?.clone())))
            .collect();
        self
    }

    /// The principal a verified client certificate stands for: the first
    /// of its `names` (common name first, then DNS names) that
    /// `access.certificates` maps.
    pub fn authenticate_certificate(&self, names: &[&str]) -> Result<Principal, AccessError> {
        for name in names {
            if let Some(role) = self.certificates.get(*name) {
                return Ok(Principal { who: format!("cert:{name}"), role: role.clone() });
            }
        }
        Err(AccessError::UnmappedCertificate {
            name: names.first().map_or_else(|| "(no name)".to_owned(), |name| (*name).to_owned()),
            known: self.roles.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Makes a token for `role`, returns its text (shown once: only its
    /// hash is kept).
    pub async fn create_token(&self, name: &str, role: &str) -> Result<String, AccessError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(AccessError::BadName { name: name.to_owned() });
        }
        if !self.roles.contains_key(role) {
            return Err(AccessError::NoRole {
                role: role.to_owned(),
                known: self.roles.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        if self.list_tokens().iter().any(|t| t.name == name) {
            return Err(AccessError::Exists { name: name.to_owned() });
        }
        let mut secret = [0_u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut secret);
        let token = format!("{TOKEN_PREFIX}{}", Sha256(secret).to_hex());
        let hash = Sha256::of(token.as_bytes()).to_hex();
        let row = TokenRow { name: name.to_owned(), role: role.to_owned(), created_us: now_us() };
        if let Some(parts) = &self.shared {
            let stored = crate::server::cluster::access::StoredToken {
                name: row.name.clone(),
                role: row.role.clone(),
                hash: hash.clone(),
                created_us: row.created_us,
            };
            if !parts.shared.create_token(&stored).await? {
                return Err(AccessError::Exists { name: name.to_owned() });
            }
            self.tokens.write().unwrap_or_else(|p| p.into_inner()).insert(hash, row);
            return Ok(token);
        }
        let stored = row.clone();
        let stored_hash = hash.clone();
        self.with_db(move |connection, path| {
            connection
                .execute(
                    "INSERT INTO api_tokens (name, role, hash, created_us) VALUES (?1, ?2, ?3, ?4)",
                    params![stored.name, stored.role, stored_hash, stored.created_us],
                )
                .map_err(|source| AccessError::Sqlite { path: path.to_path_buf(), source })
        })
        .await?;
        self.tokens.write().unwrap_or_else(|p| p.into_inner()).insert(hash, row);
        Ok(token)
    }

    /// Every token, by name.
    pub fn list_tokens(&self) -> Vec<TokenRow> {
        let mut rows: Vec<TokenRow> = self.tokens.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }

    /// Revokes the token named `name`; false when there is none.
    pub async fn revoke(&self, name: &str) -> Result<bool, AccessError> {
        if let Some(parts) = &self.shared {
            let deleted = parts.shared.revoke(name).await?;
            self.tokens.write().unwrap_or_else(|p| p.into_inner()).retain(|_, row| row.name != name);
            return Ok(deleted);
        }
        let owned = name.to_owned();
        let deleted = self
            .with_db(move |connection, path| {
                connection
                    .execute("DELETE FROM api_tokens WHERE name = ?1", [owned])
                    .map_err(|source| AccessError::Sqlite { path: path.to_path_buf(), source })
            })
            .await?;
        self.tokens.write().unwrap_or_else(|p| p.into_inner()).retain(|_, row| row.name != name);
        Ok(deleted > 0)
    }

    /// Appends `entry` to the audit log. A log that cannot be written is
    /// loud (an error logged with the entry) but does not undo what was
    /// done.
    pub async fn record(&self, entry: Entry) {
        if let Some(parts) = &self.shared {
            // Chained in PostgreSQL, or kept here until it answers.
            if let Err(error) = parts.pending.record(&parts.shared, now_us(), entry.clone()).await {
                tracing::error!(%error, who = %entry.who, what = %entry.what, target = %entry.target, result = %entry.result, "Cannot write the audit log.");
            }
            return;
        }
        let logged = entry.clone();
        let result = self
            .with_db(move |connection, path| {
                audit::append(connection, &path.display().to_string(), now_us(), &entry).map_err(AccessError::from)
            })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, who = %logged.who, what = %logged.what, target = %logged.target, result = %logged.result, "Cannot write the audit log.");
        }
    }

    /// The newest `limit` audit rows, newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<audit::Row>, AccessError> {
        if let Some(parts) = &self.shared {
            return Ok(parts.shared.newest(limit).await?);
        }
        self.with_db(move |connection, path| {
            audit::newest(connection, &path.display().to_string(), limit).map_err(AccessError::from)
        })
        .await
    }

    /// Every audit row, oldest first (for verifying the chain).
    pub async fn audit_all(&self) -> Result<Vec<audit::Row>, AccessError> {
        if let Some(parts) = &self.shared {
            return Ok(parts.shared.rows(0, None).await?);
        }
        self.with_db(move |connection, path| {
            audit::rows(connection, &path.display().to_string(), 0, None).map_err(AccessError::from)
        })
        .await
    }

    /// The role names defined (with `admin`).
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// Closes the connection (before the store's writer stops).
    pub fn close(&self) {
        drop(self.db.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    async fn with_db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Path) -> Result<T, AccessError> + Send + 'static,
    ) -> Result<T, AccessError> {
        let (db, path) = (self.db.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let guard = db.lock().unwrap_or_else(|p| p.into_inner());
            let connection = guard.as_ref().ok_or(AccessError::Closed)?;
            work(connection, &path)
        })
        .await
        .unwrap_or(Err(AccessError::Closed))
    }
}

/// The configured roles and the built-in `admin`.
fn compile(roles: &BTreeMap<String, RoleConfig>) -> BTreeMap<String, Arc<Role>> {
    let mut compiled: BTreeMap<String, Arc<Role>> = BTreeMap::new();
    compiled.insert("admin".into(), Arc::new(Role::admin()));
    for (name, config) in roles {
        // The configuration's loading refused a bad target already.
        let Ok(target) = Target::parse(&config.target) else { continue };
        compiled.insert(
            name.clone(),
            Arc::new(Role {
                name: name.clone(),
                verbs: config.verbs.iter().copied().collect(),
                target_text: config.target.clone(),
                target,
            }),
        );
    }
    compiled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(verbs: &[Verb], target: &str) -> Principal {
        let config = RoleConfig { verbs: verbs.to_vec(), target: target.into() };
        let roles = compile(&[("web-ops".to_owned(), config)].into());
        Principal { who: "token:t".into(), role: roles["web-ops"].clone() }
    }

    /// The decision, table-style: verb first, then every agent reached.
    #[test]
    fn roles_decide_by_verb_and_target() {
        let none = Value::map();
        let debian = Value::map().with("os", "debian");
        let web_ops = principal(&[Verb::Read, Verb::Apply], "web*");
        let debian_keys = principal(&[Verb::Keys], "G@os:debian");
        let admin = Principal::local(Some(0));
        type Case<'a> = (&'a Principal, Verb, Vec<(&'a str, &'a Value)>, bool);
        let cases: Vec<Case> = vec![
            (&web_ops, Verb::Apply, vec![("web01", &none), ("web02", &none)], true),
            (&web_ops, Verb::Apply, vec![("web01", &none), ("db01", &none)], false),
            (&web_ops, Verb::Apply, vec![("db01", &none)], false),
            (&web_ops, Verb::Cmd, vec![("web01", &none)], false),
            (&web_ops, Verb::Keys, vec![], false),
            (&web_ops, Verb::Admin, vec![], false),
            (&debian_keys, Verb::Keys, vec![("db01", &debian)], true),
            (&debian_keys, Verb::Keys, vec![("db01", &none)], false),
            (&admin, Verb::Cmd, vec![("db01", &none)], true),
            (&admin, Verb::Admin, vec![], true),
        ];
        for (who, verb, agents, allowed) in cases {
            let names: Vec<&str> = agents.iter().map(|(a, _)| *a).collect();
            let result = who.allows(verb, agents);
            assert_eq!(result.is_ok(), allowed, "{} {verb:?} {names:?}: {result:?}", who.role.name);
        }
        let refusal = web_ops.allows(Verb::Apply, [("db01", &none)]).unwrap_err().to_string();
        assert!(refusal.contains("db01") && refusal.contains("web*"), "{refusal}");
        assert!(web_ops.sees("web01", &none) && !web_ops.sees("db01", &none));
    }

    /// A certificate's common name, else one of its DNS names, picks its
    /// role; a name with no mapping is refused, naming it and the setting.
    #[test]
    fn certificates_map_to_roles_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("halite.db");
        drop(crate::server::store::Store::open(&path).unwrap());
        let roles = [("web-ops".to_owned(), RoleConfig { verbs: vec![Verb::Apply], target: "web*".into() })].into();
        let certificates =
            [("ops-laptop".to_owned(), "web-ops".to_owned()), ("ci.example.org".to_owned(), "admin".to_owned())].into();
        let access = Access::open(&path, &roles).unwrap().with_certificates(&certificates);
        type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>);
        let cases: [Case; 4] = [
            (&["ops-laptop"], Some(("cert:ops-laptop", "web-ops"))),
            (&["runner-7", "ci.example.org"], Some(("cert:ci.example.org", "admin"))),
            (&["stranger", "other.example.org"], None),
            (&[], None),
        ];
        for (names, wanted) in cases {
            let got = access.authenticate_certificate(names).ok().map(|p| (p.who, p.role.name.clone()));
            assert_eq!(got.as_ref().map(|(w, r)| (w.as_str(), r.as_str())), wanted, "{names:?}");
        }
        let refusal = access.authenticate_certificate(&["stranger"]).unwrap_err().to_string();
        assert!(refusal.contains("stranger") && refusal.contains("access: {certificates:"), "{refusal}");
        let principal = access.authenticate_certificate(&["ops-laptop"]).unwrap();
        assert!(principal.allows(Verb::Apply, [("web01", &Value::map())]).is_ok());
        assert!(principal.allows(Verb::Apply, [("db01", &Value::map())]).is_err());
        access.close();
    }

    /// A token is shown once and kept as its hash; it authenticates until
    /// revoked; names and roles are checked.
    #[tokio::test]
    async fn tokens_are_hashed_checked_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("halite.db");
        drop(crate::server::store::Store::open(&path).unwrap());
        let roles = [("web-ops".to_owned(), RoleConfig { verbs: vec![Verb::Apply], target: "web*".into() })].into();
        let access = Access::open(&path, &roles).unwrap();
        let token = access.create_token("ci", "web-ops").await.unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(access.authenticate(&token).unwrap().who, "token:ci");
        assert!(matches!(access.create_token("ci", "admin").await, Err(AccessError::Exists { .. })));
        assert!(matches!(access.create_token("x", "nope").await, Err(AccessError::NoRole { .. })));
        assert!(matches!(access.create_token("a b", "admin").await, Err(AccessError::BadName { .. })));
        access.close();
        let stored: Vec<String> = {
            let connection = Connection::open(&path).unwrap();
            let mut statement = connection.prepare("SELECT hash FROM api_tokens").unwrap();
            statement.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        assert_eq!(stored, [Sha256::of(token.as_bytes()).to_hex()]);
        let access = Access::open(&path, &roles).unwrap();
        assert_eq!(access.authenticate(&token).unwrap().role.name, "web-ops");
        assert!(access.revoke("ci").await.unwrap());
        assert!(matches!(access.authenticate(&token), Err(AccessError::Unknown)));
        assert!(!access.revoke("ci").await.unwrap());
    }
}
