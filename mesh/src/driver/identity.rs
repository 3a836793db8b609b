//! The node's Ed25519 key on disk: created on first start, kept across restarts, so a node
//! restarted (even on a new address) is the same node.

use std::io::Write;
use std::path::Path;

use super::tls::{NodeKey, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the node key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write the node key {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error(
        "the node key {path} is damaged: {reason} (restore it from a backup, or delete it to give this node a new identity)"
    )]
    Damaged { path: String, reason: String },
    #[error("no OS entropy to create a node key: {0}")]
    Entropy(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Loads the key at `path` (64 hex digits), or creates one (mode 0600) if the file is absent.
pub fn load_or_create_node_key(path: &Path) -> Result<NodeKey, IdentityError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|e| IdentityError::Damaged {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            let secret: [u8; 32] =
                bytes.try_into().map_err(|b: Vec<u8>| IdentityError::Damaged {
                    path: shown.clone(),
                    reason: format!("{} bytes instead of 32", b.len()),
                })?;
            Ok(NodeKey::from_secret(secret)?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| IdentityError::Entropy(e.to_string()))?;
            let key = NodeKey::from_secret(secret)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|source| IdentityError::Write { path: shown.clone(), source })?;
            }
            let tmp = path.with_extension("tmp");
            let write = |source| IdentityError::Write { path: shown.clone(), source };
            {
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(&tmp).map_err(write)?;
                f.write_all(hex::encode(secret).as_bytes()).map_err(write)?;
                f.sync_all().map_err(write)?;
            }
            std::fs::rename(&tmp, path).map_err(write)?;
            tracing::info!(path = %shown, node = %key.node_id(), "created a new node identity");
            Ok(key)
        }
        Err(source) => Err(IdentityError::Read { path: shown, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity").join("node.key");
        let a = load_or_create_node_key(&path).unwrap();
        let b = load_or_create_node_key(&path).unwrap();
        assert_eq!(a.node_id(), b.node_id());
    }

    #[test]
    fn a_damaged_key_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, "zz").unwrap();
        let err = load_or_create_node_key(&path).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "zz");
    }
}
