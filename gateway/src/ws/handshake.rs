//! `connect`: protocol negotiation, client identity, shared-secret and device-token auth,
//! device signatures and pairing, and the scopes the connection is granted.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::config::{AuthMode, GatewayConfig};
use crate::device::{self, Challenge, DeviceAuthError, DeviceProof, SignedClaims};
use crate::pairing::{IssuedToken, PairingError, PairingRequest, PairingStore, PendingPairing};
use crate::protocol::errors::{ErrorCode, WireError};
use crate::protocol::methods::{self, OPERATOR_SCOPES, SHARED_SECRET_DEFAULT_SCOPES};
use crate::protocol::params::{ConnectParams, SCOPES_MAX, parse_closed};
use crate::protocol::schema_tables::{CLIENT_IDS, CLIENT_MODES, CONNECT_PARAMS_PROPERTIES};
use crate::protocol::{PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};
use crate::util::{now_ms, secret_eq};

/// Roles BeamClaw accepts. `node` clients connect but no node method is served.
const ROLES: &[&str] = &["operator", "node"];
/// `retryAfterMs` suggested while the pairing store is full of pending requests.
const PAIRING_FULL_RETRY_AFTER_MS: u64 = 60_000;
/// Longest client-supplied text kept (names, versions, platform), in bytes.
const CLIENT_TEXT_BYTES_MAX: usize = 256;

/// A successful `connect`.
#[derive(Debug)]
pub(crate) struct Authenticated {
    pub(crate) protocol: u32,
    pub(crate) params: ConnectParams,
    pub(crate) role: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) device_id: Option<String>,
    /// A device token minted for this connection (returned once in `hello-ok.auth`).
    pub(crate) issued: Option<IssuedToken>,
}

/// A refused `connect`: the error answered, the close reason, and a pairing request that was
/// recorded on the way (to announce with `device.pair.requested`).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) error: WireError,
    pub(crate) close_reason: String,
    pub(crate) pending: Option<PendingPairing>,
}

impl Refusal {
    fn new(error: WireError, close_reason: impl Into<String>) -> Self {
        Refusal { error, close_reason: close_reason.into(), pending: None }
    }

    fn invalid(message: impl Into<String>) -> Self {
        let message = message.into();
        Refusal::new(WireError::invalid(message.clone()), format!("invalid connect: {message}"))
    }
}

/// Runs a pairing store call off the async threads.
pub(crate) async fn pairing_call<T: Send + 'static>(
    store: &Arc<dyn PairingStore>,
    call: impl FnOnce(&dyn PairingStore) -> Result<T, PairingError> + Send + 'static,
) -> Result<T, WireError> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || call(store.as_ref())).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(pairing_error(err)),
        Err(err) => Err(WireError::new(
            ErrorCode::Unavailable,
            format!("pairing store call did not complete: {err}"),
        )),
    }
}

pub(crate) fn pairing_error(err: PairingError) -> WireError {
    match err {
        PairingError::UnknownRequest { .. }
        | PairingError::UnknownDevice { .. }
        | PairingError::RoleNotApproved { .. }
        | PairingError::ScopesNotApproved { .. } => WireError::invalid(err.to_string()),
        PairingError::TooManyPending { .. } | PairingError::TooManyDevices { .. } => {
            WireError::new(ErrorCode::Unavailable, err.to_string())
                .retry_after(PAIRING_FULL_RETRY_AFTER_MS)
        }
        PairingError::Io { .. } | PairingError::Corrupt { .. } | PairingError::Random { .. } => {
            tracing::error!(error = %err, "pairing store failure");
            WireError::new(ErrorCode::Unavailable, err.to_string())
        }
    }
}

fn auth_failure(detail: &str, message: &str) -> Refusal {
    Refusal::new(
        WireError::invalid(format!("unauthorized: {message}")).with_details(json!({
            "code": detail,
            "recommendedNextStep": "update_auth_credentials",
        })),
        format!("unauthorized: {message}"),
    )
}

fn clip(text: &str) -> String {
    crate::util::truncate_chars(text, CLIENT_TEXT_BYTES_MAX / 4).to_owned()
}

/// Validates and authenticates a `connect` request.
pub(crate) async fn authenticate(
    config: &GatewayConfig,
    pairing: &Arc<dyn PairingStore>,
    params: Value,
    challenge: &Challenge,
    remote: SocketAddr,
) -> Result<Authenticated, Refusal> {
    let params: ConnectParams =
        parse_closed(params, Some(CONNECT_PARAMS_PROPERTIES), "params", "connect").map_err(
            |err| {
                let reason = format!("invalid connect: {}", err.message);
                Refusal::new(err, reason)
            },
        )?;

    // Protocol: the highest version both sides speak.
    if params.min_protocol > params.max_protocol {
        return Err(Refusal::invalid(format!(
            "params.minProtocol ({}) is greater than params.maxProtocol ({})",
            params.min_protocol, params.max_protocol
        )));
    }
    let protocol = params.max_protocol.min(PROTOCOL_VERSION);
    if protocol < params.min_protocol.max(PROTOCOL_VERSION_MIN) {
        let message = format!(
            "protocol mismatch: the client speaks {}..{}, BeamClaw speaks \
             {PROTOCOL_VERSION_MIN}..{PROTOCOL_VERSION}",
            params.min_protocol, params.max_protocol
        );
        return Err(Refusal::new(
            WireError::invalid(message.clone()).with_details(json!({
                "code": "PROTOCOL_MISMATCH",
                "expectedProtocol": PROTOCOL_VERSION,
                "minProtocol": PROTOCOL_VERSION_MIN,
                "maxProtocol": PROTOCOL_VERSION,
            })),
            message,
        ));
    }

    // Closed client enums.
    if !CLIENT_IDS.contains(&params.client.id.as_str()) {
        return Err(Refusal::invalid(format!(
            "params.client.id {:?} is not a known client id; expected one of: {}",
            clip(&params.client.id),
            CLIENT_IDS.join(", ")
        )));
    }
    if !CLIENT_MODES.contains(&params.client.mode.as_str()) {
        return Err(Refusal::invalid(format!(
            "params.client.mode {:?} is not a known client mode; expected one of: {}",
            clip(&params.client.mode),
            CLIENT_MODES.join(", ")
        )));
    }
    for (field, value) in
        [("version", &params.client.version), ("platform", &params.client.platform)]
    {
        if value.is_empty() || value.len() > CLIENT_TEXT_BYTES_MAX {
            return Err(Refusal::invalid(format!(
                "params.client.{field} must be 1..={CLIENT_TEXT_BYTES_MAX} bytes"
            )));
        }
    }

    let role = params.role.clone().unwrap_or_else(|| "operator".to_owned());
    if !ROLES.contains(&role.as_str()) {
        return Err(Refusal::invalid(format!(
            "params.role {:?} is not supported by BeamClaw; expected one of: {}",
            clip(&role),
            ROLES.join(", ")
        )));
    }
    let requested_raw: Option<Vec<String>> = params.scopes.clone();
    if requested_raw.as_ref().is_some_and(|s| s.len() > SCOPES_MAX) {
        return Err(Refusal::invalid(format!("params.scopes: at most {SCOPES_MAX} scopes")));
    }
    // Operator scopes BeamClaw knows; others (talk, questions) name surfaces it does not serve.
    // A node gets none: operator scopes belong to operators.
    let requested_known: Option<Vec<String>> = if role != "operator" {
        Some(Vec::new())
    } else {
        requested_raw.as_ref().map(|scopes| {
            let mut known: Vec<String> =
                scopes.iter().filter(|s| OPERATOR_SCOPES.contains(&s.as_str())).cloned().collect();
            known.sort();
            known.dedup();
            known
        })
    };

    let auth = params.auth.clone().unwrap_or_default();
    let shared_ok = match config.auth.mode {
        AuthMode::None => true,
        AuthMode::Token => match (&auth.token, &config.auth.token) {
            (Some(presented), Some(configured)) => secret_eq(presented, configured),
            _ => false,
        },
        AuthMode::Password => match (&auth.password, &config.auth.password) {
            (Some(presented), Some(configured)) => secret_eq(presented, configured),
            _ => false,
        },
    };

    let Some(proof) = params.device.clone() else {
        // No device identity: the shared secret (or auth mode none) is the whole story.
        if !shared_ok {
            return Err(shared_secret_refusal(config.auth.mode, &auth));
        }
        if role != "operator" {
            return Err(Refusal::invalid(format!(
                "role {role:?} needs a device identity (params.device)"
            )));
        }
        let scopes = requested_known.unwrap_or_else(|| {
            SHARED_SECRET_DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect()
        });
        return Ok(Authenticated { protocol, params, role, scopes, device_id: None, issued: None });
    };

    // Device identity: the signature binds the request to this connection's challenge.
    let signature_token = auth
        .token
        .as_deref()
        .or(auth.bootstrap_token.as_deref())
        .or(auth.device_token.as_deref())
        .unwrap_or("");
    let requested_for_signature = requested_raw.clone().unwrap_or_default();
    let claims = SignedClaims {
        device_id: &proof.id,
        client_id: &params.client.id,
        client_mode: &params.client.mode,
        role: &role,
        scopes: &requested_for_signature,
        signed_at_ms: proof.signed_at,
        token: signature_token,
        nonce: &proof.nonce,
        platform: &params.client.platform,
        device_family: params.client.device_family.as_deref().unwrap_or(""),
    };
    let device_proof = DeviceProof {
        id: &proof.id,
        public_key: &proof.public_key,
        signature: &proof.signature,
        signed_at_ms: proof.signed_at,
        nonce: &proof.nonce,
    };
    let version = device::verify(&device_proof, challenge, &claims).map_err(device_refusal)?;
    let device_id = proof.id.trim().to_ascii_lowercase();
    tracing::debug!(device = %device_id, ?version, "device signature verified");

    // A device token stands in for the shared secret.
    let device_token =
        auth.device_token.clone().or_else(|| if shared_ok { None } else { auth.token.clone() });
    let token_grant = match device_token {
        Some(token) => {
            let (id, r) = (device_id.clone(), role.clone());
            pairing_call(pairing, move |s| s.verify_token(&id, &r, &token))
                .await
                .map_err(|err| Refusal::new(err, "pairing store unavailable"))?
        }
        None => None,
    };
    if !shared_ok && token_grant.is_none() {
        if auth.device_token.is_some() {
            return Err(auth_failure(
                "AUTH_DEVICE_TOKEN_MISMATCH",
                "device token mismatch (rotated or revoked?); reconnect with the gateway token",
            ));
        }
        return Err(shared_secret_refusal(config.auth.mode, &auth));
    }

    let requested: Vec<String> = requested_known
        .unwrap_or_else(|| token_grant.as_ref().map(|t| t.scopes.clone()).unwrap_or_default());
    let lookup_id = device_id.clone();
    let paired = pairing_call(pairing, move |s| s.device(&lookup_id))
        .await
        .map_err(|err| Refusal::new(err, "pairing store unavailable"))?;
    let request = PairingRequest {
        device_id: device_id.clone(),
        public_key: proof.public_key.clone(),
        display_name: params.client.display_name.as_deref().map(clip),
        platform: Some(clip(&params.client.platform)),
        device_family: params.client.device_family.as_deref().map(clip),
        client_id: Some(params.client.id.clone()),
        client_mode: Some(params.client.mode.clone()),
        role: role.clone(),
        scopes: requested.clone(),
        remote_ip: Some(remote.ip().to_string()),
    };

    let approved = match &paired {
        Some(device) => {
            let key_matches = device.public_key == proof.public_key;
            let covered = device.has_role(&role)
                && methods::covers(&device.scopes, &requested)
                && token_grant.as_ref().is_none_or(|t| methods::covers(&t.scopes, &requested));
            key_matches && covered
        }
        None => false,
    };
    let reason = match &paired {
        None => "not-paired",
        Some(device) if device.public_key != proof.public_key => "metadata-upgrade",
        Some(device) if !device.has_role(&role) => "role-upgrade",
        Some(_) => "scope-upgrade",
    };

    let mut issued = None;
    if !approved {
        let auto = config.pairing.auto_approve_loopback && remote.ip().is_loopback() && shared_ok;
        if auto {
            let req = request.clone();
            pairing_call(pairing, move |s| s.pair(req, now_ms()))
                .await
                .map_err(|err| Refusal::new(err, "pairing store unavailable"))?;
            tracing::info!(device = %device_id, %remote, "auto-approved loopback device");
        } else {
            let pending = pairing_call(pairing, move |s| s.request(request, now_ms()))
                .await
                .map_err(|err| Refusal::new(err, "pairing store unavailable"))?;
            tracing::info!(device = %device_id, request = %pending.request_id, reason,
                "device needs pairing approval");
            let message = match reason {
                "not-paired" => "pairing required: device is not approved yet",
                "role-upgrade" => {
                    "pairing required: device is asking for a higher role than currently approved"
                }
                "metadata-upgrade" => {
                    "pairing required: device identity changed and must be re-approved"
                }
                _ => "pairing required: device is asking for more scopes than currently approved",
            };
            let error = WireError::new(ErrorCode::NotPaired, message).with_details(json!({
                "code": "PAIRING_REQUIRED",
                "reason": reason,
                "requestId": pending.request_id,
                "deviceId": device_id,
                "requestedRole": role,
                "requestedScopes": requested,
                "recommendedNextStep": "wait_then_retry",
                "remediationHint": "Approve this device: `beamclaw devices approve <requestId>` \
                                    or device.pair.approve from an operator.pairing client.",
                "retryable": true,
            }));
            return Err(Refusal {
                error,
                close_reason: "pairing required".into(),
                pending: Some(pending),
            });
        }
    }

    // A device that authenticated with the shared secret gets a fresh device token; one that
    // presented a valid device token keeps it.
    if token_grant.is_none() {
        let (id, r, scopes) = (device_id.clone(), role.clone(), requested.clone());
        let token = pairing_call(pairing, move |s| s.issue_token(&id, &r, Some(scopes), now_ms()))
            .await
            .map_err(|err| Refusal::new(err, "pairing store unavailable"))?;
        issued = Some(token);
    }

    Ok(Authenticated {
        protocol,
        params,
        role,
        scopes: requested,
        device_id: Some(device_id),
        issued,
    })
}

fn shared_secret_refusal(
    mode: AuthMode,
    auth: &crate::protocol::params::ConnectAuthParam,
) -> Refusal {
    match mode {
        AuthMode::Token if auth.token.is_some() => auth_failure(
            "AUTH_TOKEN_MISMATCH",
            "gateway token mismatch (set auth.token to the gateway's token)",
        ),
        AuthMode::Token => auth_failure(
            "AUTH_TOKEN_MISSING",
            "gateway token missing (set auth.token; the gateway runs with auth mode token)",
        ),
        AuthMode::Password if auth.password.is_some() => {
            auth_failure("AUTH_PASSWORD_MISMATCH", "gateway password mismatch")
        }
        AuthMode::Password => auth_failure(
            "AUTH_PASSWORD_MISSING",
            "gateway password missing (set auth.password; the gateway runs with auth mode password)",
        ),
        AuthMode::None => auth_failure("AUTH_UNAUTHORIZED", "not authorized"),
    }
}

fn device_refusal(err: DeviceAuthError) -> Refusal {
    Refusal::new(
        WireError::invalid(format!("device authentication failed: {err}"))
            .with_details(json!({"code": err.detail_code()})),
        format!("device authentication failed: {}", err.detail_code()),
    )
}
