//! The open connections of this gateway: what each is allowed to see, and broadcasting to them.
//!
//! A connection is counted from the moment its upgrade is accepted (so the connection limit
//! covers sockets still in their handshake) and listed once it is authenticated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use beamclaw_crdt::SessionKey;
use serde_json::{Map, Value};

use super::outbound::{Outbound, PushError};
use crate::metrics::GatewayMetrics;
use crate::protocol::frames::StateVersion;
use crate::protocol::methods::{self, SCOPE_APPROVALS, SCOPE_PAIRING, SCOPE_READ};

/// Sessions one connection may follow at once (`chat.send`, `sessions.messages.subscribe`).
pub(crate) const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 256;

/// Client modes that appear in `presence` (interactive clients). Backends, probes, tests,
/// nodes and workers do not, so that thousands of programmatic connections do not turn into
/// presence storms.
const PRESENCE_MODES: &[&str] = &["ui", "webchat", "cli"];

/// The scope a client needs to receive an event.
pub(crate) fn event_scope(event: &str) -> Option<&'static str> {
    match event {
        "chat" | "agent" | "sessions.changed" => Some(SCOPE_READ),
        "device.pair.requested" | "device.pair.resolved" => Some(SCOPE_PAIRING),
        "exec.approval.requested" | "exec.approval.resolved" => Some(SCOPE_APPROVALS),
        // tick, presence, health, shutdown are open to every authenticated client.
        _ => None,
    }
}

/// The client as it described itself in `connect`.
#[derive(Clone, Debug)]
pub(crate) struct ClientSummary {
    pub(crate) id: String,
    pub(crate) mode: String,
    pub(crate) version: String,
    pub(crate) platform: String,
    pub(crate) device_family: Option<String>,
    pub(crate) model_identifier: Option<String>,
    pub(crate) time_zone: Option<String>,
    pub(crate) display_name: Option<String>,
    pub(crate) instance_id: Option<String>,
}

/// One authenticated connection, shared by its reader, its writer, the session feeds and the
/// broadcasters.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) serial: u64,
    /// `hello-ok.server.connId`.
    pub(crate) conn_id: String,
    pub(crate) outbound: Arc<Outbound>,
    pub(crate) protocol: u32,
    pub(crate) role: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) device_id: Option<String>,
    pub(crate) client: ClientSummary,
    pub(crate) remote: SocketAddr,
    pub(crate) connected_at_ms: i64,
    /// `sessions.subscribe` was called: send `sessions.changed`.
    pub(crate) sessions_changed: AtomicBool,
    /// Session feeds this connection joined, with its subscriber id in each.
    pub(crate) joined: Mutex<HashMap<SessionKey, u64>>,
    /// Serializes joining feeds, so two requests for one session join it once.
    pub(crate) follow_lock: tokio::sync::Mutex<()>,
    pub(crate) metrics: GatewayMetrics,
}

impl Connection {
    pub(crate) fn may_see(&self, event: &str) -> bool {
        match event_scope(event) {
            None => true,
            Some(scope) => methods::authorize(&self.scopes, scope).is_ok(),
        }
    }

    /// Queues an event if this connection may see it. Returns false when it was not queued
    /// because the connection is closing or just overflowed.
    pub(crate) fn send_event(
        &self,
        event: &'static str,
        payload_json: &str,
        state_version: Option<StateVersion>,
    ) -> bool {
        if !self.may_see(event) {
            return true;
        }
        match self.outbound.push_event(event, payload_json, state_version) {
            Ok(()) => {
                self.metrics.frames_out.inc();
                true
            }
            Err(PushError::Overflow) => {
                self.metrics.slow_consumers.inc();
                tracing::warn!(conn = %self.conn_id, event, "closing slow consumer");
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// Queues a response frame.
    pub(crate) fn send_frame(&self, text: String) -> bool {
        match self.outbound.push(text) {
            Ok(()) => {
                self.metrics.frames_out.inc();
                true
            }
            Err(PushError::Overflow) => {
                self.metrics.slow_consumers.inc();
                tracing::warn!(conn = %self.conn_id, "closing slow consumer");
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    pub(crate) fn in_presence(&self) -> bool {
        self.role == "operator" && PRESENCE_MODES.contains(&self.client.mode.as_str())
    }

    /// This client's `PresenceEntry`.
    pub(crate) fn presence_entry(&self) -> Value {
        let mut entry = Map::new();
        let host = self.client.display_name.clone().unwrap_or_else(|| self.client.id.clone());
        entry.insert("host".into(), host.into());
        entry.insert("ip".into(), self.remote.ip().to_string().into());
        entry.insert("version".into(), self.client.version.clone().into());
        entry.insert("platform".into(), self.client.platform.clone().into());
        if let Some(family) = &self.client.device_family {
            entry.insert("deviceFamily".into(), family.clone().into());
        }
        if let Some(model) = &self.client.model_identifier {
            entry.insert("modelIdentifier".into(), model.clone().into());
        }
        if let Some(zone) = &self.client.time_zone {
            entry.insert("timeZone".into(), zone.clone().into());
        }
        entry.insert("mode".into(), self.client.mode.clone().into());
        entry.insert("reason".into(), "connect".into());
        entry.insert("ts".into(), self.connected_at_ms.max(0).into());
        entry.insert("onlineSince".into(), self.connected_at_ms.max(0).into());
        if let Some(device) = &self.device_id {
            entry.insert("deviceId".into(), device.clone().into());
        }
        entry.insert("roles".into(), vec![self.role.clone()].into());
        entry.insert("scopes".into(), self.scopes.clone().into());
        let instance = self.client.instance_id.clone().unwrap_or_else(|| self.conn_id.clone());
        entry.insert("instanceId".into(), instance.into());
        Value::Object(entry)
    }
}

/// Holds one slot of the connection limit until dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    count: Arc<AtomicUsize>,
    metrics: GatewayMetrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections.dec();
    }
}

#[derive(Debug)]
pub(crate) struct Connections {
    open: Arc<AtomicUsize>,
    max: usize,
    listed: Mutex<HashMap<u64, Arc<Connection>>>,
    next_serial: AtomicU64,
    metrics: GatewayMetrics,
}

impl Connections {
    pub(crate) fn new(max: usize, metrics: GatewayMetrics) -> Self {
        Connections {
            open: Arc::new(AtomicUsize::new(0)),
            max,
            listed: Mutex::new(HashMap::new()),
            next_serial: AtomicU64::new(1),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.listed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a slot of the connection limit, or `None` when all are taken.
    pub(crate) fn reserve(&self) -> Option<Slot> {
        let mut current = self.open.load(Ordering::Acquire);
        loop {
            if current >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.metrics.connections.inc();
                    return Some(Slot { count: self.open.clone(), metrics: self.metrics.clone() });
                }
                Err(actual) => current = actual,
            }
        }
    }

    pub(crate) fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn next_serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn insert(&self, connection: Arc<Connection>) {
        self.lock().insert(connection.serial, connection);
    }

    pub(crate) fn remove(&self, serial: u64) -> Option<Arc<Connection>> {
        self.lock().remove(&serial)
    }

    pub(crate) fn snapshot(&self) -> Vec<Arc<Connection>> {
        self.lock().values().cloned().collect()
    }

    /// Sends an event to every connection allowed to see it.
    pub(crate) fn broadcast(
        &self,
        event: &'static str,
        payload_json: &str,
        state_version: Option<StateVersion>,
    ) {
        for connection in self.snapshot() {
            connection.send_event(event, payload_json, state_version);
        }
    }

    /// Sends `sessions.changed` to the connections that asked for it.
    pub(crate) fn broadcast_sessions_changed(&self, payload_json: &str) {
        for connection in self.snapshot() {
            if connection.sessions_changed.load(Ordering::Acquire) {
                connection.send_event("sessions.changed", payload_json, None);
            }
        }
    }

    /// Closes every connection of a device (after it was removed or its token revoked).
    pub(crate) fn close_device(&self, device_id: &str, reason: &str) -> usize {
        let mut closed = 0;
        for connection in self.snapshot() {
            if connection.device_id.as_deref() == Some(device_id) {
                connection.outbound.close(super::outbound::CLOSE_POLICY, reason);
                closed += 1;
            }
        }
        closed
    }

    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        for connection in self.snapshot() {
            connection.outbound.close(code, reason);
        }
    }

    /// Presence entries of interactive clients, newest first, at most `max`.
    pub(crate) fn presence_entries(&self, max: usize) -> Vec<Value> {
        let mut listed: Vec<Arc<Connection>> =
            self.snapshot().into_iter().filter(|c| c.in_presence()).collect();
        listed.sort_by_key(|c| std::cmp::Reverse(c.connected_at_ms));
        listed.iter().take(max).map(|c| c.presence_entry()).collect()
    }
}
