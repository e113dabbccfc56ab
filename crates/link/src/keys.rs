//! Static key pairs and the one text form of a public key.
//!
//! A public key is written as 64 lowercase hex digits. That text is its
//! fingerprint everywhere: `halite-agent fingerprint`, `halite-master keys
//! list|fingerprint`, and `master_key` in agent.yaml.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

/// The Noise protocol of the link; keys are made for its DH function.
pub const PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let not_a_key = || KeyError::NotAKey { text: text.to_owned() };
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_a_key());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| not_a_key())?;
        }
        Ok(PublicKey(key))
    }
}

impl PublicKey {
    pub fn from_slice(bytes: &[u8]) -> Option<PublicKey> {
        bytes.try_into().ok().map(PublicKey)
    }
}

/// A static key pair. The private half never leaves this struct except
/// into the Noise handshake and the key file.
#[derive(Clone)]
pub struct Keypair {
    pub public: PublicKey,
    private: [u8; 32],
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({}, private: <redacted>)", self.public)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write the key file {path}: {source}")]
    Write { path: String, source: halite_fs::FsError },
    #[error("the key file {path} is malformed; move it away to make a new key (agents will see a new identity)")]
    Malformed { path: String },
    #[error("the key file {path} can be read by others (mode {mode:04o}); run `chmod 600 {path}`")]
    Exposed { path: String, mode: u32 },
    #[error("cannot make a key: {0}")]
    Generate(String),
    #[error("`{text}` is not a public key: expected 64 hex digits")]
    NotAKey { text: String },
}

impl Keypair {
    pub fn generate() -> Result<Keypair, KeyError> {
        let keypair = snow::Builder::new(PATTERN.parse().map_err(|e| KeyError::Generate(format!("{e}")))?)
            .generate_keypair()
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(Keypair {
            public: PublicKey::from_slice(&keypair.public).ok_or(KeyError::Generate("bad public key length".into()))?,
            private: keypair
                .private
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::Generate("bad private key length".into()))?,
        })
    }

    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }

    /// Loads the key pair at `path`, or makes one and stores it there
    /// (mode 0600) if there is none. Returns whether it was made now.
    pub fn load_or_create(path: &Path) -> Result<(Keypair, bool), KeyError> {
        match std::fs::metadata(path) {
            Ok(_) => Ok((Keypair::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keypair = Keypair::generate()?;
                keypair.store(path)?;
                Ok((keypair, true))
            }
            Err(source) => Err(KeyError::Read { path: path.display().to_string(), source }),
        }
    }

    pub fn load(path: &Path) -> Result<Keypair, KeyError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        let mut lines = text.lines();
        let (Some(private), Some(public)) = (lines.next(), lines.next()) else {
            return Err(KeyError::Malformed { path: shown });
        };
        let private: PublicKey = private.parse().map_err(|_| KeyError::Malformed { path: shown.clone() })?;
        let public: PublicKey = public.parse().map_err(|_| KeyError::Malformed { path: shown.clone() })?;
        Ok(Keypair { public, private: private.0 })
    }

    fn store(&self, path: &Path) -> Result<(), KeyError> {
        // The one atomic write: the temporary file is 0600 before anything
        // is written to it.
        let text = format!("{}\n{}\n", PublicKey(self.private), self.public);
        halite_fs::write_atomic(path, text.as_bytes(), 0o600)
            .map_err(|source| KeyError::Write { path: path.display().to_string(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_text_round_trip() {
        let key = Keypair::generate().unwrap().public;
        assert_eq!(key.to_string().parse::<PublicKey>().unwrap(), key);
        assert!("abc".parse::<PublicKey>().is_err());
        assert!("zz".repeat(32).parse::<PublicKey>().is_err());
    }

    #[test]
    fn a_key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let (made, created) = Keypair::load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (loaded, created) = Keypair::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!((loaded.public, loaded.private), (made.public, made.private));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Keypair::load(&path), Err(KeyError::Exposed { .. })));
        assert!(!format!("{made:?}").contains(&PublicKey(made.private).to_string()));
    }
}
