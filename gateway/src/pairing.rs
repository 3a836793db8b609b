//! Device pairing: pending requests from unknown devices, approved devices, and the device
//! tokens issued to them (one per device and role).
//!
//! [`PairingStore`] is what the gateway (and the node's `beamclaw devices` CLI) use;
//! [`FilePairingStore`] keeps it in one JSON file in a directory the node chooses, rewritten
//! atomically (temp file, fsync, rename, fsync of the directory) on every change, so it
//! survives restarts and crashes. Tokens are stored only as SHA-256 hashes; the plaintext is
//! returned once, when issued.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::device::BASE64URL;
use base64::Engine;

/// A pending request expires this long after it was last refreshed (OpenClaw: 5 minutes).
pub const PENDING_TTL_MS: i64 = 5 * 60 * 1000;
/// Pending requests kept at most; more are refused until some expire or are resolved.
pub const PENDING_REQUESTS_MAX: usize = 256;
/// Paired devices kept at most.
pub const PAIRED_DEVICES_MAX: usize = 4096;
/// Largest store file read at open, in bytes.
pub const STORE_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Random bytes in a device token (encoded as base64url).
const TOKEN_RANDOM_BYTES: usize = 32;
/// Longest free-text field kept from a device (names, platform), in bytes.
const DEVICE_TEXT_BYTES_MAX: usize = 256;
/// The store file inside the directory.
const STORE_FILE_NAME: &str = "pairing.json";
/// Version of the file format.
const STORE_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error("no pending pairing request {request_id} (it may have expired after 5 minutes)")]
    UnknownRequest { request_id: String },
    #[error("no paired device {device_id}")]
    UnknownDevice { device_id: String },
    #[error("device {device_id} is not approved for role {role:?}")]
    RoleNotApproved { device_id: String, role: String },
    #[error("scopes {requested:?} exceed the scopes approved for device {device_id}: {approved:?}")]
    ScopesNotApproved { device_id: String, requested: Vec<String>, approved: Vec<String> },
    #[error("{count} pairing requests are pending; at most {max} are kept", max = PENDING_REQUESTS_MAX)]
    TooManyPending { count: usize },
    #[error("{count} devices are paired; at most {max} are kept", max = PAIRED_DEVICES_MAX)]
    TooManyDevices { count: usize },
    #[error("pairing store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("pairing store {path} is not valid: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no randomness available for a device token: {reason}")]
    Random { reason: String },
}

/// What an unknown device asked for, taken from its verified connect request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairingRequest {
    pub device_id: String,
    /// Raw Ed25519 public key, base64url.
    pub public_key: String,
    pub display_name: Option<String>,
    pub platform: Option<String>,
    pub device_family: Option<String>,
    pub client_id: Option<String>,
    pub client_mode: Option<String>,
    pub role: String,
    pub scopes: Vec<String>,
    pub remote_ip: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingPairing {
    pub request_id: String,
    pub request: PairingRequest,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The device is already paired and asks for a role or scopes beyond its approval.
    pub is_repair: bool,
}

/// One device token's metadata; the token itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTokenInfo {
    pub role: String,
    pub scopes: Vec<String>,
    pub issued_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    token_sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairedDevice {
    pub device_id: String,
    pub public_key: String,
    pub display_name: Option<String>,
    pub platform: Option<String>,
    pub device_family: Option<String>,
    pub client_id: Option<String>,
    pub client_mode: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub approved_at_ms: i64,
    pub tokens: Vec<DeviceTokenInfo>,
}

impl PairedDevice {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// A freshly issued device token: the only time its plaintext exists outside the client.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub role: String,
    pub scopes: Vec<String>,
    pub issued_at_ms: i64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("role", &self.role)
            .field("scopes", &self.scopes)
            .field("issued_at_ms", &self.issued_at_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairingSnapshot {
    pub pending: Vec<PendingPairing>,
    pub paired: Vec<PairedDevice>,
}

/// Pairing state: pending requests, paired devices and their tokens.
///
/// Implementations must be safe to call from many connections at once and must persist every
/// change before returning it. Times are milliseconds since the Unix epoch, passed in so that
/// expiry is testable.
pub trait PairingStore: Send + Sync + 'static {
    fn device(&self, device_id: &str) -> Result<Option<PairedDevice>, PairingError>;

    /// Unexpired pending requests and all paired devices.
    fn snapshot(&self, now_ms: i64) -> Result<PairingSnapshot, PairingError>;

    /// Records a pending request, or refreshes the device's existing one (same request id,
    /// new expiry, merged role and scopes).
    fn request(&self, request: PairingRequest, now_ms: i64)
    -> Result<PendingPairing, PairingError>;

    /// Approves a pending request: the device is paired (or its approval widened).
    fn approve(&self, request_id: &str, now_ms: i64) -> Result<PairedDevice, PairingError>;

    fn reject(&self, request_id: &str, now_ms: i64) -> Result<PendingPairing, PairingError>;

    /// Forgets a paired device and its tokens.
    fn remove(&self, device_id: &str) -> Result<PairedDevice, PairingError>;

    /// Pairs a device without a pending request (loopback auto-approval).
    fn pair(&self, request: PairingRequest, now_ms: i64) -> Result<PairedDevice, PairingError>;

    /// Issues a new token for `(device, role)`, replacing the previous one. `scopes` defaults
    /// to the device's approved scopes and may not exceed them.
    fn issue_token(
        &self,
        device_id: &str,
        role: &str,
        scopes: Option<Vec<String>>,
        now_ms: i64,
    ) -> Result<IssuedToken, PairingError>;

    fn revoke_token(&self, device_id: &str, role: &str, now_ms: i64) -> Result<(), PairingError>;

    /// The token's metadata when `token` is the live token of `(device, role)`.
    fn verify_token(
        &self,
        device_id: &str,
        role: &str,
        token: &str,
    ) -> Result<Option<DeviceTokenInfo>, PairingError>;
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreFile {
    version: u32,
    pending: Vec<PendingPairing>,
    paired: Vec<PairedDevice>,
}

/// Identifies one version of the store file: a rewrite is a rename of a new file, so the inode
/// (and usually the size and mtime) changes with every write, whichever process made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp_of(path: &Path) -> Result<Option<Stamp>, PairingError> {
    match fs::metadata(path) {
        Ok(meta) => {
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let inode = 0;
            Ok(Some(Stamp { modified: meta.modified().ok(), len: meta.len(), inode }))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PairingError::Io { path: path.to_path_buf(), source }),
    }
}

/// Reads the store file (`None`: it does not exist yet).
fn read_store(path: &Path, stamp: Option<Stamp>) -> Result<StoreFile, PairingError> {
    let Some(stamp) = stamp else {
        return Ok(StoreFile { version: STORE_FORMAT_VERSION, ..Default::default() });
    };
    if stamp.len > STORE_FILE_BYTES_MAX {
        return Err(PairingError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{} bytes; at most {STORE_FILE_BYTES_MAX} are read", stamp.len),
        });
    }
    let bytes =
        fs::read(path).map_err(|source| PairingError::Io { path: path.to_path_buf(), source })?;
    let file: StoreFile = serde_json::from_slice(&bytes).map_err(|err| PairingError::Corrupt {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    if file.version != STORE_FORMAT_VERSION {
        return Err(PairingError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "format version {}; this BeamClaw reads version {STORE_FORMAT_VERSION}",
                file.version
            ),
        });
    }
    Ok(file)
}

#[derive(Debug)]
struct Loaded {
    file: StoreFile,
    /// The file version `file` was read from or written as.
    stamp: Option<Stamp>,
}

/// [`PairingStore`] in `<dir>/pairing.json`.
///
/// Several processes may open the same directory (the running node and its `devices` CLI):
/// every operation first re-reads the file if another process replaced it. Two processes
/// changing it at the same instant can still lose one change (last rename wins).
pub struct FilePairingStore {
    dir: PathBuf,
    state: Mutex<Loaded>,
    temp_counter: AtomicU64,
}

impl std::fmt::Debug for FilePairingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePairingStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl FilePairingStore {
    /// Opens (creating the directory if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, PairingError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)
            .map_err(|source| PairingError::Io { path: dir.clone(), source })?;
        let path = dir.join(STORE_FILE_NAME);
        let stamp = stamp_of(&path)?;
        let file = read_store(&path, stamp)?;
        Ok(FilePairingStore {
            dir,
            state: Mutex::new(Loaded { file, stamp }),
            temp_counter: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STORE_FILE_NAME)
    }

    /// The current state, re-read first if the file changed under us.
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Loaded>, PairingError> {
        // A panic while holding the lock cannot leave a half-applied change: every change is
        // made on a copy and swapped in after it was persisted.
        let mut guard = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = self.path();
        let stamp = stamp_of(&path)?;
        if stamp != guard.stamp {
            guard.file = read_store(&path, stamp)?;
            guard.stamp = stamp;
        }
        Ok(guard)
    }

    /// Applies `change` to a copy of the state, persists it, then makes it current.
    fn update<T>(
        &self,
        now_ms: i64,
        change: impl FnOnce(&mut StoreFile) -> Result<T, PairingError>,
    ) -> Result<T, PairingError> {
        let mut guard = self.lock()?;
        let mut next = guard.file.clone();
        next.pending.retain(|p| p.expires_at_ms > now_ms);
        let out = change(&mut next)?;
        if next != guard.file {
            self.persist(&next)?;
            guard.stamp = stamp_of(&self.path())?;
            guard.file = next;
        }
        Ok(out)
    }

    fn persist(&self, file: &StoreFile) -> Result<(), PairingError> {
        let path = self.path();
        let bytes = serde_json::to_vec_pretty(file)
            .map_err(|err| PairingError::Corrupt { path: path.clone(), reason: err.to_string() })?;
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!(".{STORE_FILE_NAME}.{}.{n}.tmp", std::process::id()));
        let io = |source| PairingError::Io { path: temp.clone(), source };
        let result = (|| {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut out = options.open(&temp).map_err(io)?;
            out.write_all(&bytes).map_err(io)?;
            out.sync_all().map_err(io)?;
            fs::rename(&temp, &path)
                .map_err(|source| PairingError::Io { path: path.clone(), source })?;
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }
}

fn sync_dir(dir: &Path) -> Result<(), PairingError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| PairingError::Io { path: dir.to_path_buf(), source })
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> Result<String, PairingError> {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut bytes).map_err(|err| PairingError::Random { reason: err.to_string() })?;
    Ok(BASE64URL.encode(bytes))
}

fn clip(text: Option<String>) -> Option<String> {
    text.map(|mut t| {
        if t.len() > DEVICE_TEXT_BYTES_MAX {
            let mut end = DEVICE_TEXT_BYTES_MAX;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
        }
        t
    })
}

fn union(into: &mut Vec<String>, more: &[String]) {
    let mut set: BTreeSet<String> = into.drain(..).collect();
    set.extend(more.iter().cloned());
    into.extend(set);
}

fn device_from(request: &PairingRequest, now_ms: i64) -> PairedDevice {
    PairedDevice {
        device_id: request.device_id.clone(),
        public_key: request.public_key.clone(),
        display_name: clip(request.display_name.clone()),
        platform: clip(request.platform.clone()),
        device_family: clip(request.device_family.clone()),
        client_id: clip(request.client_id.clone()),
        client_mode: clip(request.client_mode.clone()),
        roles: vec![request.role.clone()],
        scopes: {
            let mut scopes = Vec::new();
            union(&mut scopes, &request.scopes);
            scopes
        },
        approved_at_ms: now_ms,
        tokens: Vec::new(),
    }
}

/// Pairs or widens: the device record after approving `request`.
fn merge_approval(
    file: &mut StoreFile,
    request: &PairingRequest,
    now_ms: i64,
) -> Result<PairedDevice, PairingError> {
    if let Some(device) = file.paired.iter_mut().find(|d| d.device_id == request.device_id) {
        union(&mut device.roles, std::slice::from_ref(&request.role));
        union(&mut device.scopes, &request.scopes);
        device.approved_at_ms = now_ms;
        return Ok(device.clone());
    }
    if file.paired.len() >= PAIRED_DEVICES_MAX {
        return Err(PairingError::TooManyDevices { count: file.paired.len() });
    }
    let device = device_from(request, now_ms);
    file.paired.push(device.clone());
    Ok(device)
}

impl PairingStore for FilePairingStore {
    fn device(&self, device_id: &str) -> Result<Option<PairedDevice>, PairingError> {
        Ok(self.lock()?.file.paired.iter().find(|d| d.device_id == device_id).cloned())
    }

    fn snapshot(&self, now_ms: i64) -> Result<PairingSnapshot, PairingError> {
        let loaded = self.lock()?;
        let state = &loaded.file;
        Ok(PairingSnapshot {
            pending: state.pending.iter().filter(|p| p.expires_at_ms > now_ms).cloned().collect(),
            paired: state.paired.clone(),
        })
    }

    fn request(
        &self,
        request: PairingRequest,
        now_ms: i64,
    ) -> Result<PendingPairing, PairingError> {
        self.update(now_ms, |file| {
            let is_repair = file.paired.iter().any(|d| d.device_id == request.device_id);
            if let Some(existing) =
                file.pending.iter_mut().find(|p| p.request.device_id == request.device_id)
            {
                existing.expires_at_ms = now_ms + PENDING_TTL_MS;
                existing.request.role = request.role.clone();
                union(&mut existing.request.scopes, &request.scopes);
                existing.request.remote_ip = request.remote_ip.clone();
                existing.is_repair = is_repair;
                return Ok(existing.clone());
            }
            if file.pending.len() >= PENDING_REQUESTS_MAX {
                return Err(PairingError::TooManyPending { count: file.pending.len() });
            }
            let mut request = request;
            request.display_name = clip(request.display_name);
            request.platform = clip(request.platform);
            request.device_family = clip(request.device_family);
            request.client_id = clip(request.client_id);
            request.client_mode = clip(request.client_mode);
            let pending = PendingPairing {
                request_id: uuid::Uuid::new_v4().to_string(),
                request,
                created_at_ms: now_ms,
                expires_at_ms: now_ms + PENDING_TTL_MS,
                is_repair,
            };
            file.pending.push(pending.clone());
            Ok(pending)
        })
    }

    fn approve(&self, request_id: &str, now_ms: i64) -> Result<PairedDevice, PairingError> {
        self.update(now_ms, |file| {
            let index =
                file.pending.iter().position(|p| p.request_id == request_id).ok_or_else(|| {
                    PairingError::UnknownRequest { request_id: request_id.to_owned() }
                })?;
            let pending = file.pending.remove(index);
            merge_approval(file, &pending.request, now_ms)
        })
    }

    fn reject(&self, request_id: &str, now_ms: i64) -> Result<PendingPairing, PairingError> {
        self.update(now_ms, |file| {
            let index =
                file.pending.iter().position(|p| p.request_id == request_id).ok_or_else(|| {
                    PairingError::UnknownRequest { request_id: request_id.to_owned() }
                })?;
            Ok(file.pending.remove(index))
        })
    }

    fn remove(&self, device_id: &str) -> Result<PairedDevice, PairingError> {
        // Expiry is irrelevant to removal; pass the earliest time so nothing is pruned.
        self.update(i64::MIN, |file| {
            let index =
                file.paired.iter().position(|d| d.device_id == device_id).ok_or_else(|| {
                    PairingError::UnknownDevice { device_id: device_id.to_owned() }
                })?;
            file.pending.retain(|p| p.request.device_id != device_id);
            Ok(file.paired.remove(index))
        })
    }

    fn pair(&self, request: PairingRequest, now_ms: i64) -> Result<PairedDevice, PairingError> {
        self.update(now_ms, |file| {
            file.pending.retain(|p| p.request.device_id != request.device_id);
            merge_approval(file, &request, now_ms)
        })
    }

    fn issue_token(
        &self,
        device_id: &str,
        role: &str,
        scopes: Option<Vec<String>>,
        now_ms: i64,
    ) -> Result<IssuedToken, PairingError> {
        let token = new_token()?;
        self.update(now_ms, |file| {
            let device =
                file.paired.iter_mut().find(|d| d.device_id == device_id).ok_or_else(|| {
                    PairingError::UnknownDevice { device_id: device_id.to_owned() }
                })?;
            if !device.has_role(role) {
                return Err(PairingError::RoleNotApproved {
                    device_id: device_id.to_owned(),
                    role: role.to_owned(),
                });
            }
            let scopes = match scopes {
                None => device.scopes.clone(),
                Some(requested) => {
                    if !crate::protocol::methods::covers(&device.scopes, &requested) {
                        return Err(PairingError::ScopesNotApproved {
                            device_id: device_id.to_owned(),
                            requested,
                            approved: device.scopes.clone(),
                        });
                    }
                    requested
                }
            };
            device.tokens.retain(|t| t.role != role);
            device.tokens.push(DeviceTokenInfo {
                role: role.to_owned(),
                scopes: scopes.clone(),
                issued_at_ms: now_ms,
                revoked_at_ms: None,
                token_sha256: token_hash(&token),
            });
            Ok(IssuedToken {
                token: token.clone(),
                role: role.to_owned(),
                scopes,
                issued_at_ms: now_ms,
            })
        })
    }

    fn revoke_token(&self, device_id: &str, role: &str, now_ms: i64) -> Result<(), PairingError> {
        self.update(now_ms, |file| {
            let device =
                file.paired.iter_mut().find(|d| d.device_id == device_id).ok_or_else(|| {
                    PairingError::UnknownDevice { device_id: device_id.to_owned() }
                })?;
            let token = device.tokens.iter_mut().find(|t| t.role == role).ok_or_else(|| {
                PairingError::RoleNotApproved {
                    device_id: device_id.to_owned(),
                    role: role.to_owned(),
                }
            })?;
            token.revoked_at_ms = Some(now_ms);
            Ok(())
        })
    }

    fn verify_token(
        &self,
        device_id: &str,
        role: &str,
        token: &str,
    ) -> Result<Option<DeviceTokenInfo>, PairingError> {
        let presented = token_hash(token);
        let loaded = self.lock()?;
        let state = &loaded.file;
        let Some(device) = state.paired.iter().find(|d| d.device_id == device_id) else {
            return Ok(None);
        };
        Ok(device
            .tokens
            .iter()
            .find(|t| {
                t.role == role
                    && t.revoked_at_ms.is_none()
                    && bool::from(t.token_sha256.as_bytes().ct_eq(presented.as_bytes()))
            })
            .cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(device: &str, scopes: &[&str]) -> PairingRequest {
        PairingRequest {
            device_id: device.into(),
            public_key: "pk".into(),
            display_name: Some("laptop".into()),
            platform: Some("linux".into()),
            device_family: None,
            client_id: Some("cli".into()),
            client_mode: Some("cli".into()),
            role: "operator".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            remote_ip: Some("10.0.0.2".into()),
        }
    }

    #[test]
    fn approval_and_tokens_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePairingStore::open(dir.path()).unwrap();
        let pending = store.request(request("d1", &["operator.read"]), 1_000).unwrap();
        let device = store.approve(&pending.request_id, 2_000).unwrap();
        assert_eq!(device.scopes, vec!["operator.read".to_owned()]);
        let issued = store.issue_token("d1", "operator", None, 3_000).unwrap();
        drop(store);

        let store = FilePairingStore::open(dir.path()).unwrap();
        assert!(store.verify_token("d1", "operator", &issued.token).unwrap().is_some());
        assert!(store.verify_token("d1", "operator", "wrong").unwrap().is_none());
        assert!(store.verify_token("d1", "node", &issued.token).unwrap().is_none());
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains(&issued.token), "plaintext token must not be stored");
    }

    #[test]
    fn pending_requests_expire_after_five_minutes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePairingStore::open(dir.path()).unwrap();
        let pending = store.request(request("d1", &[]), 0).unwrap();
        assert_eq!(store.snapshot(PENDING_TTL_MS - 1).unwrap().pending.len(), 1);
        assert!(store.snapshot(PENDING_TTL_MS).unwrap().pending.is_empty());
        let err = store.approve(&pending.request_id, PENDING_TTL_MS + 1).unwrap_err();
        assert!(matches!(err, PairingError::UnknownRequest { .. }));
    }

    #[test]
    fn a_repeated_request_refreshes_the_same_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePairingStore::open(dir.path()).unwrap();
        let first = store.request(request("d1", &["operator.read"]), 0).unwrap();
        let second = store.request(request("d1", &["operator.write"]), 1_000).unwrap();
        assert_eq!(first.request_id, second.request_id);
        assert_eq!(second.expires_at_ms, 1_000 + PENDING_TTL_MS);
        assert_eq!(second.request.scopes.len(), 2);
        assert_eq!(store.snapshot(1_000).unwrap().pending.len(), 1);
    }

    #[test]
    fn rotation_replaces_and_revocation_kills_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePairingStore::open(dir.path()).unwrap();
        store.pair(request("d1", &["operator.admin"]), 0).unwrap();
        let first = store.issue_token("d1", "operator", None, 1).unwrap();
        let second =
            store.issue_token("d1", "operator", Some(vec!["operator.read".into()]), 2).unwrap();
        assert!(store.verify_token("d1", "operator", &first.token).unwrap().is_none());
        let info = store.verify_token("d1", "operator", &second.token).unwrap().unwrap();
        assert_eq!(info.scopes, vec!["operator.read".to_owned()]);
        store.revoke_token("d1", "operator", 3).unwrap();
        assert!(store.verify_token("d1", "operator", &second.token).unwrap().is_none());
    }

    #[test]
    fn tokens_cannot_exceed_approved_scopes_or_roles() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePairingStore::open(dir.path()).unwrap();
        store.pair(request("d1", &["operator.read"]), 0).unwrap();
        let err = store
            .issue_token("d1", "operator", Some(vec!["operator.admin".into()]), 1)
            .unwrap_err();
        assert!(matches!(err, PairingError::ScopesNotApproved { .. }));
        let err = store.issue_token("d1", "node", None, 1).unwrap_err();
        assert!(matches!(err, PairingError::RoleNotApproved { .. }));
    }

    #[test]
    fn removal_forgets_device_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePairingStore::open(dir.path()).unwrap();
        store.pair(request("d1", &["operator.read"]), 0).unwrap();
        let issued = store.issue_token("d1", "operator", None, 1).unwrap();
        store.remove("d1").unwrap();
        assert!(store.device("d1").unwrap().is_none());
        assert!(store.verify_token("d1", "operator", &issued.token).unwrap().is_none());
        assert!(matches!(store.remove("d1"), Err(PairingError::UnknownDevice { .. })));
    }

    #[test]
    fn a_corrupt_file_is_a_typed_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STORE_FILE_NAME), b"{not json").unwrap();
        let err = FilePairingStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, PairingError::Corrupt { .. }));
        assert!(err.to_string().contains("pairing.json"));
    }

    #[test]
    fn changes_by_another_process_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let node = FilePairingStore::open(dir.path()).unwrap();
        let cli = FilePairingStore::open(dir.path()).unwrap();
        let pending = node.request(request("d1", &["operator.read"]), 0).unwrap();
        // The CLI, opened before the request existed, sees it and approves it...
        assert_eq!(cli.snapshot(1).unwrap().pending.len(), 1);
        cli.approve(&pending.request_id, 2).unwrap();
        // ...and the node sees the approval without being reopened.
        assert!(node.device("d1").unwrap().is_some());
        assert!(node.snapshot(3).unwrap().pending.is_empty());
        let issued = node.issue_token("d1", "operator", None, 4).unwrap();
        assert!(cli.verify_token("d1", "operator", &issued.token).unwrap().is_some());
    }

    #[test]
    fn pending_requests_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilePairingStore::open(dir.path()).unwrap();
        for i in 0..PENDING_REQUESTS_MAX {
            store.request(request(&format!("d{i}"), &[]), 0).unwrap();
        }
        let err = store.request(request("one-more", &[]), 0).unwrap_err();
        assert!(matches!(err, PairingError::TooManyPending { .. }));
    }
}
