//! OpenClaw device identity: an Ed25519 key per client device. The device id is the hex
//! SHA-256 of the raw 32-byte public key; the client signs a `|`-joined payload bound to the
//! connection's challenge (nonce and timestamp). Both payload versions are accepted:
//!
//! - v2: `v2|deviceId|clientId|clientMode|role|scopes|signedAtMs|token|nonce`
//! - v3: v2's fields (with `v3`) plus `|platform|deviceFamily`, both trimmed and lowercased.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// base64url, with or without padding (clients differ).
pub(crate) const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Raw Ed25519 public key length, bytes.
const PUBLIC_KEY_BYTES: usize = 32;
/// Ed25519 signature length, bytes.
const SIGNATURE_BYTES: usize = 64;
/// Longest encoded public key or signature accepted, bytes (generous for padding).
const ENCODED_KEY_BYTES_MAX: usize = 128;

/// The challenge this connection was sent (`connect.challenge {nonce, ts}`).
#[derive(Clone, Debug)]
pub(crate) struct Challenge {
    pub(crate) nonce: String,
    pub(crate) ts_ms: u64,
}

/// What the signature must cover, taken from the connect request.
pub(crate) struct SignedClaims<'a> {
    pub(crate) device_id: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) client_mode: &'a str,
    pub(crate) role: &'a str,
    pub(crate) scopes: &'a [String],
    pub(crate) signed_at_ms: u64,
    /// `auth.token` (or the device/bootstrap token standing in for it), or empty.
    pub(crate) token: &'a str,
    pub(crate) nonce: &'a str,
    pub(crate) platform: &'a str,
    pub(crate) device_family: &'a str,
}

pub(crate) fn payload_v2(c: &SignedClaims<'_>) -> String {
    [
        "v2",
        c.device_id,
        c.client_id,
        c.client_mode,
        c.role,
        &c.scopes.join(","),
        &c.signed_at_ms.to_string(),
        c.token,
        c.nonce,
    ]
    .join("|")
}

pub(crate) fn payload_v3(c: &SignedClaims<'_>) -> String {
    [
        "v3",
        c.device_id,
        c.client_id,
        c.client_mode,
        c.role,
        &c.scopes.join(","),
        &c.signed_at_ms.to_string(),
        c.token,
        c.nonce,
        &normalize_metadata(c.platform),
        &normalize_metadata(c.device_family),
    ]
    .join("|")
}

/// OpenClaw's `normalizeDeviceMetadataForAuth`: trim, then lowercase ASCII letters only.
fn normalize_metadata(value: &str) -> String {
    value.trim().to_ascii_lowercase()
}

/// hex(sha256(raw public key)).
pub(crate) fn device_id_for(public_key: &[u8]) -> String {
    hex::encode(Sha256::digest(public_key))
}

/// Why a device proof was refused; each maps to OpenClaw's `DEVICE_AUTH_*` detail code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeviceAuthError {
    #[error("device.publicKey is not a base64url Ed25519 public key of 32 bytes")]
    PublicKeyInvalid,
    #[error("device.id is not the hex SHA-256 of device.publicKey")]
    DeviceIdMismatch,
    #[error("device.nonce is empty; sign the nonce of the connect.challenge event")]
    NonceRequired,
    #[error("device.nonce does not match this connection's connect.challenge nonce")]
    NonceMismatch,
    #[error("device.signedAt must equal the connect.challenge ts")]
    SignatureStale,
    #[error(
        "device.signature does not verify over the v3 or v2 device-auth payload for this \
         connect request"
    )]
    SignatureInvalid,
}

impl DeviceAuthError {
    pub(crate) fn detail_code(self) -> &'static str {
        match self {
            DeviceAuthError::PublicKeyInvalid => "DEVICE_AUTH_PUBLIC_KEY_INVALID",
            DeviceAuthError::DeviceIdMismatch => "DEVICE_AUTH_DEVICE_ID_MISMATCH",
            DeviceAuthError::NonceRequired => "DEVICE_AUTH_NONCE_REQUIRED",
            DeviceAuthError::NonceMismatch => "DEVICE_AUTH_NONCE_MISMATCH",
            DeviceAuthError::SignatureStale => "DEVICE_AUTH_SIGNATURE_EXPIRED",
            DeviceAuthError::SignatureInvalid => "DEVICE_AUTH_SIGNATURE_INVALID",
        }
    }
}

/// Which payload version the device signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadVersion {
    V2,
    V3,
}

/// The proof as sent in `connect.device`.
pub(crate) struct DeviceProof<'a> {
    pub(crate) id: &'a str,
    pub(crate) public_key: &'a str,
    pub(crate) signature: &'a str,
    pub(crate) signed_at_ms: u64,
    pub(crate) nonce: &'a str,
}

/// Verifies a device proof against the challenge. `claims` is built with `device_id`,
/// `nonce` and `signed_at_ms` taken from the proof.
pub(crate) fn verify(
    proof: &DeviceProof<'_>,
    challenge: &Challenge,
    claims: &SignedClaims<'_>,
) -> Result<PayloadVersion, DeviceAuthError> {
    if proof.public_key.len() > ENCODED_KEY_BYTES_MAX {
        return Err(DeviceAuthError::PublicKeyInvalid);
    }
    let key_bytes: [u8; PUBLIC_KEY_BYTES] = BASE64URL
        .decode(proof.public_key.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(DeviceAuthError::PublicKeyInvalid)?;
    let key =
        VerifyingKey::from_bytes(&key_bytes).map_err(|_| DeviceAuthError::PublicKeyInvalid)?;
    if !device_id_for(&key_bytes).eq_ignore_ascii_case(proof.id.trim()) {
        return Err(DeviceAuthError::DeviceIdMismatch);
    }
    if proof.nonce.trim().is_empty() {
        return Err(DeviceAuthError::NonceRequired);
    }
    if proof.nonce != challenge.nonce {
        return Err(DeviceAuthError::NonceMismatch);
    }
    if proof.signed_at_ms != challenge.ts_ms {
        return Err(DeviceAuthError::SignatureStale);
    }
    if proof.signature.len() > ENCODED_KEY_BYTES_MAX {
        return Err(DeviceAuthError::SignatureInvalid);
    }
    let signature_bytes: [u8; SIGNATURE_BYTES] = BASE64URL
        .decode(proof.signature.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(DeviceAuthError::SignatureInvalid)?;
    let signature = Signature::from_bytes(&signature_bytes);
    if key.verify_strict(payload_v3(claims).as_bytes(), &signature).is_ok() {
        return Ok(PayloadVersion::V3);
    }
    if key.verify_strict(payload_v2(claims).as_bytes(), &signature).is_ok() {
        return Ok(PayloadVersion::V2);
    }
    Err(DeviceAuthError::SignatureInvalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn claims<'a>(device_id: &'a str, scopes: &'a [String]) -> SignedClaims<'a> {
        SignedClaims {
            device_id,
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes,
            signed_at_ms: 1_700_000_000_000,
            token: "tok",
            nonce: "n-1",
            platform: " Linux ",
            device_family: "Desktop",
        }
    }

    fn proof_for(sig: &str, public_key: &str, id: &str) -> (String, String, String) {
        (sig.to_owned(), public_key.to_owned(), id.to_owned())
    }

    fn check(
        payload: &str,
        challenge_nonce: &str,
        challenge_ts: u64,
    ) -> Result<PayloadVersion, DeviceAuthError> {
        let key = key();
        let public = key.verifying_key().to_bytes();
        let id = device_id_for(&public);
        let scopes = vec!["operator.read".to_owned(), "operator.write".to_owned()];
        let c = claims(&id, &scopes);
        let text = if payload == "v3" { payload_v3(&c) } else { payload_v2(&c) };
        let sig = BASE64URL.encode(key.sign(text.as_bytes()).to_bytes());
        let (sig, pk, id) = proof_for(&sig, &BASE64URL.encode(public), &id);
        let proof = DeviceProof {
            id: &id,
            public_key: &pk,
            signature: &sig,
            signed_at_ms: 1_700_000_000_000,
            nonce: "n-1",
        };
        let challenge = Challenge { nonce: challenge_nonce.into(), ts_ms: challenge_ts };
        verify(&proof, &challenge, &c)
    }

    #[test]
    fn v3_payload_lowercases_and_trims_metadata() {
        let scopes = vec!["operator.read".to_owned()];
        let text = payload_v3(&claims("d", &scopes));
        assert_eq!(text, "v3|d|cli|cli|operator|operator.read|1700000000000|tok|n-1|linux|desktop");
        assert_eq!(
            payload_v2(&claims("d", &scopes)),
            "v2|d|cli|cli|operator|operator.read|1700000000000|tok|n-1"
        );
    }

    #[test]
    fn both_payload_versions_verify() {
        assert_eq!(check("v3", "n-1", 1_700_000_000_000), Ok(PayloadVersion::V3));
        assert_eq!(check("v2", "n-1", 1_700_000_000_000), Ok(PayloadVersion::V2));
    }

    #[test]
    fn nonce_and_timestamp_must_match_the_challenge() {
        assert_eq!(check("v3", "other", 1_700_000_000_000), Err(DeviceAuthError::NonceMismatch));
        assert_eq!(check("v3", "n-1", 1), Err(DeviceAuthError::SignatureStale));
    }

    #[test]
    fn tampered_claims_fail() {
        let key = key();
        let public = key.verifying_key().to_bytes();
        let id = device_id_for(&public);
        let scopes = vec!["operator.read".to_owned()];
        let signed = payload_v3(&claims(&id, &scopes));
        let sig = BASE64URL.encode(key.sign(signed.as_bytes()).to_bytes());
        let pk = BASE64URL.encode(public);
        let wider = vec!["operator.admin".to_owned()];
        let proof = DeviceProof {
            id: &id,
            public_key: &pk,
            signature: &sig,
            signed_at_ms: 1_700_000_000_000,
            nonce: "n-1",
        };
        let challenge = Challenge { nonce: "n-1".into(), ts_ms: 1_700_000_000_000 };
        assert_eq!(
            verify(&proof, &challenge, &claims(&id, &wider)),
            Err(DeviceAuthError::SignatureInvalid)
        );
        let wrong_id = "0".repeat(64);
        let proof = DeviceProof { id: &wrong_id, ..proof };
        assert_eq!(
            verify(&proof, &challenge, &claims(&id, &scopes)),
            Err(DeviceAuthError::DeviceIdMismatch)
        );
    }

    #[test]
    fn garbage_keys_are_refused() {
        let proof =
            DeviceProof { id: "x", public_key: "!!", signature: "", signed_at_ms: 0, nonce: "n" };
        let challenge = Challenge { nonce: "n".into(), ts_ms: 0 };
        let scopes = Vec::new();
        assert_eq!(
            verify(&proof, &challenge, &claims("x", &scopes)),
            Err(DeviceAuthError::PublicKeyInvalid)
        );
    }
}
