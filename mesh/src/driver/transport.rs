//! QUIC transport between nodes: one endpoint, one connection per peer, bounded queues.
//!
//! Frames go on their own unidirectional stream each (no head-of-line blocking between sessions;
//! the core correlates requests and answers by id, so bidirectional streams add nothing — see
//! docs/decisions/0002-mesh-transport.md); SWIM packets go in datagrams. Every peer has a bounded
//! outbound queue drained by its own task, which dials on demand; when the queue passes its high
//! watermark the core is told the peer is congested (it stops pushing changes there and leaves
//! the repair to anti-entropy) and frames beyond the bound are dropped and counted.
//!
//! Simultaneous dials (both nodes dial each other at once) are de-duplicated: both sides keep the
//! connection initiated by the smaller node id and close the other after a grace period, while
//! still reading from it, so nothing in flight is lost. Any other second connection from a peer
//! replaces the first: a peer dials only when it has no usable connection to us, so it restarted
//! (kill -9 leaves our old connection looking open until its idle timeout) or lost it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};

use super::CoreMsg;
use super::tls::{self, ClusterKey, SEED_SERVER_NAME};
use crate::core::wire::FRAME_BYTES_MAX;
use crate::core::{Input, NodeId};

/// Frames queued for one peer, at most.
pub const PEER_QUEUE_FRAMES_MAX: usize = 4096;
/// Bytes queued for one peer above which the core is told the peer is congested.
pub const PEER_QUEUE_BYTES_HIGH: usize = 64 * 1024 * 1024;
/// Bytes queued for one peer below which a congested peer is clear again.
pub const PEER_QUEUE_BYTES_LOW: usize = 16 * 1024 * 1024;
/// Streams being written to one peer at once.
pub const PEER_STREAMS_CONCURRENT_MAX: usize = 64;
/// Streams being read from one connection at once.
pub const INBOUND_STREAMS_CONCURRENT_MAX: usize = 64;
/// How long a dial may take.
pub const DIAL_TIMEOUT_MS: u64 = 3_000;
/// After a failed dial, frames for that peer are dropped for this long before the next attempt.
pub const DIAL_BACKOFF_MS: u64 = 500;
/// A duplicate connection (from a simultaneous dial) is closed after this grace period.
pub const DUPLICATE_CLOSE_GRACE_MS: u64 = 2_000;
/// Two connections in opposite directions established this close together are a simultaneous
/// dial (each dial takes at most [`DIAL_TIMEOUT_MS`]); further apart, the newer one wins.
pub const SIMULTANEOUS_DIAL_WINDOW_MS: u64 = DIAL_TIMEOUT_MS;
/// QUIC idle timeout: a connection silent this long is dead (SWIM decides liveness sooner).
pub const IDLE_TIMEOUT_MS: u64 = 15_000;
/// QUIC keep-alive period.
pub const KEEP_ALIVE_MS: u64 = 2_000;
/// Datagram receive buffer per connection.
pub const DATAGRAM_BUFFER_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen for the mesh on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("mesh TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("mesh QUIC configuration: {0}")]
    Config(String),
}

/// Transport counters, exported as metrics.
#[derive(Default, Debug)]
pub struct TransportStats {
    pub frames_dropped_queue_full: AtomicU64,
    pub frames_dropped_unreachable: AtomicU64,
    pub datagrams_dropped_too_large: AtomicU64,
    pub handshakes_refused: AtomicU64,
    pub connections_opened: AtomicU64,
    pub duplicate_connections_closed: AtomicU64,
    /// Bytes of peer frames (sync, forwarding, handoff, broadcasts) received whole.
    pub frame_bytes_in: AtomicU64,
    /// Bytes of peer frames written whole to a stream.
    pub frame_bytes_out: AtomicU64,
}

enum Outbound {
    Frame(Vec<u8>),
    Datagram(Vec<u8>),
}

impl Outbound {
    fn len(&self) -> usize {
        match self {
            Outbound::Frame(b) | Outbound::Datagram(b) => b.len(),
        }
    }
}

/// Where a peer task sends: a known node, or a seed address whose node we learn on connect.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Target {
    Node(NodeId),
    Seed(SocketAddr),
}

struct PeerQueue {
    tx: mpsc::Sender<Outbound>,
    queued: Arc<AtomicUsize>,
    addr: Arc<Mutex<Option<SocketAddr>>>,
}

struct Registered {
    conn: quinn::Connection,
    initiated_by_me: bool,
    since: tokio::time::Instant,
}

struct Shared {
    me: NodeId,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    cluster: ClusterKey,
    core: mpsc::Sender<CoreMsg>,
    conns: Mutex<HashMap<NodeId, Registered>>,
    congested: Mutex<HashMap<NodeId, bool>>,
    stats: TransportStats,
}

#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
    queues: Arc<Mutex<HashMap<Target, PeerQueue>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transport {
    /// Binds the mesh endpoint and starts accepting peers.
    pub(crate) fn bind(
        listen: SocketAddr,
        key: &tls::NodeKey,
        cluster: &ClusterKey,
        core: mpsc::Sender<CoreMsg>,
    ) -> Result<Transport, TransportError> {
        let (server_tls, client_tls) = tls::configs(key, cluster)?;
        let transport = Arc::new(transport_config()?);
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        let endpoint = quinn::Endpoint::server(server, listen)
            .map_err(|source| TransportError::Bind { addr: listen, source })?;
        let shared = Arc::new(Shared {
            me: key.node_id(),
            endpoint,
            client,
            cluster: cluster.clone(),
            core,
            conns: Mutex::new(HashMap::new()),
            congested: Mutex::new(HashMap::new()),
            stats: TransportStats::default(),
        });
        tokio::spawn(accept_loop(shared.clone()));
        Ok(Transport { shared, queues: Arc::new(Mutex::new(HashMap::new())) })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    pub fn stats(&self) -> &TransportStats {
        &self.shared.stats
    }

    /// Peers with an open connection.
    pub fn connected_peers(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    pub fn send_frame(&self, to: NodeId, addr: Option<SocketAddr>, bytes: Vec<u8>) {
        self.enqueue(Target::Node(to), addr, Outbound::Frame(bytes));
    }

    pub fn send_datagram(&self, to: SocketAddr, node: Option<NodeId>, bytes: Vec<u8>) {
        let target = node.map_or(Target::Seed(to), Target::Node);
        self.enqueue(target, Some(to), Outbound::Datagram(bytes));
    }

    fn enqueue(&self, target: Target, addr: Option<SocketAddr>, item: Outbound) {
        let len = item.len();
        let mut queues = lock(&self.queues);
        let queue = queues.entry(target).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_FRAMES_MAX);
            let queued = Arc::new(AtomicUsize::new(0));
            let addr = Arc::new(Mutex::new(None));
            tokio::spawn(peer_task(self.shared.clone(), target, rx, queued.clone(), addr.clone()));
            PeerQueue { tx, queued, addr }
        });
        if let Some(a) = addr {
            *lock(&queue.addr) = Some(a);
        }
        let queued = queue.queued.fetch_add(len, Ordering::AcqRel) + len;
        if queue.tx.try_send(item).is_err() {
            queue.queued.fetch_sub(len, Ordering::AcqRel);
            self.shared.stats.frames_dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            if let Target::Node(n) = target {
                set_congested(&self.shared, n, true);
            }
            return;
        }
        if queued > PEER_QUEUE_BYTES_HIGH
            && let Target::Node(n) = target
        {
            set_congested(&self.shared, n, true);
        }
    }

    /// Closes every connection and waits (bounded) for the peers to be told.
    pub async fn close(&self) {
        self.shared.endpoint.close(0u32.into(), b"node stopping");
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
    }
}

fn transport_config() -> Result<quinn::TransportConfig, TransportError> {
    let mut tc = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS))
        .map_err(|e| TransportError::Config(e.to_string()))?;
    tc.max_idle_timeout(Some(idle));
    tc.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)));
    tc.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER_BYTES));
    tc.datagram_send_buffer_size(DATAGRAM_BUFFER_BYTES);
    tc.max_concurrent_uni_streams(1024u32.into());
    tc.max_concurrent_bidi_streams(0u32.into());
    Ok(tc)
}

fn set_congested(shared: &Shared, node: NodeId, congested: bool) {
    let changed = {
        let mut map = lock(&shared.congested);
        let prev = map.insert(node, congested).unwrap_or(false);
        prev != congested
    };
    if changed {
        if congested {
            tracing::warn!(peer = %node.short(), "peer queue congested");
        }
        let _ = shared.core.try_send(CoreMsg::Input(Input::Congestion { node, congested }));
    }
}

/// The node id a connection's peer proved in its handshake.
fn peer_node(conn: &quinn::Connection, cluster: &ClusterKey) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    tls::verify_peer_certificate(certs.first()?, cluster).ok()
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    let Some(node) = peer_node(&conn, &shared.cluster) else {
                        conn.close(1u32.into(), b"no node identity");
                        return;
                    };
                    tracing::debug!(peer = %node.short(), %remote, "mesh connection accepted");
                    adopt(&shared, node, conn, false);
                }
                Err(e) => {
                    shared.stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, error = %e, "mesh handshake refused");
                }
            }
        });
    }
}

/// Registers a connection (keeping one per peer) and starts reading from it.
fn adopt(shared: &Arc<Shared>, node: NodeId, conn: quinn::Connection, initiated_by_me: bool) {
    shared.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
    let preferred_mine = shared.me < node;
    let now = tokio::time::Instant::now();
    let fresh = Registered { conn: conn.clone(), initiated_by_me, since: now };
    let duplicate = {
        let mut conns = lock(&shared.conns);
        match conns.get(&node) {
            Some(existing) if existing.conn.close_reason().is_none() => {
                let simultaneous = existing.initiated_by_me != initiated_by_me
                    && now.duration_since(existing.since)
                        < Duration::from_millis(SIMULTANEOUS_DIAL_WINDOW_MS);
                if simultaneous && existing.initiated_by_me == preferred_mine {
                    Some(conn.clone())
                } else {
                    if !simultaneous {
                        tracing::debug!(peer = %node.short(), "newer connection replaces the old one");
                    }
                    conns.insert(node, fresh).map(|r| r.conn)
                }
            }
            _ => {
                conns.insert(node, fresh);
                None
            }
        }
    };
    if let Some(dup) = duplicate {
        shared.stats.duplicate_connections_closed.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(DUPLICATE_CLOSE_GRACE_MS)).await;
            dup.close(0u32.into(), b"duplicate connection");
        });
    }
    tokio::spawn(read_streams(shared.clone(), node, conn.clone()));
    tokio::spawn(read_datagrams(shared.clone(), conn));
}

async fn read_streams(shared: Arc<Shared>, node: NodeId, conn: quinn::Connection) {
    let limit = Arc::new(Semaphore::new(INBOUND_STREAMS_CONCURRENT_MAX));
    loop {
        let mut stream = match conn.accept_uni().await {
            Ok(s) => s,
            Err(_) => break,
        };
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        let shared = shared.clone();
        tokio::spawn(async move {
            match stream.read_to_end(FRAME_BYTES_MAX).await {
                Ok(bytes) => {
                    let n = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                    shared.stats.frame_bytes_in.fetch_add(n, Ordering::Relaxed);
                    let msg = CoreMsg::Input(Input::Frame { from: node, bytes });
                    let _ = shared.core.send(msg).await;
                }
                Err(e) => {
                    tracing::debug!(peer = %node.short(), error = %e, "inbound frame dropped")
                }
            }
            drop(permit);
        });
    }
    let stable = conn.stable_id();
    let mut conns = lock(&shared.conns);
    if conns.get(&node).is_some_and(|r| r.conn.stable_id() == stable) {
        conns.remove(&node);
    }
}

async fn read_datagrams(shared: Arc<Shared>, conn: quinn::Connection) {
    let from = conn.remote_address();
    while let Ok(bytes) = conn.read_datagram().await {
        let msg = CoreMsg::Input(Input::Datagram { from, bytes: bytes.to_vec() });
        if shared.core.send(msg).await.is_err() {
            break;
        }
    }
}

async fn dial(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    node: Option<NodeId>,
) -> Option<(NodeId, quinn::Connection)> {
    let name = node.map_or_else(|| SEED_SERVER_NAME.to_string(), |n| tls::server_name_for(&n));
    let connecting = match shared.endpoint.connect_with(shared.client.clone(), addr, &name) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "mesh dial not started");
            return None;
        }
    };
    let conn = match tokio::time::timeout(Duration::from_millis(DIAL_TIMEOUT_MS), connecting).await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "mesh dial failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%addr, "mesh dial timed out");
            return None;
        }
    };
    let peer = peer_node(&conn, &shared.cluster)?;
    if peer == shared.me {
        conn.close(0u32.into(), b"dialled ourselves");
        return None;
    }
    adopt(shared, peer, conn.clone(), true);
    Some((peer, conn))
}

fn registered(shared: &Shared, node: &NodeId) -> Option<quinn::Connection> {
    lock(&shared.conns)
        .get(node)
        .filter(|r| r.conn.close_reason().is_none())
        .map(|r| r.conn.clone())
}

async fn peer_task(
    shared: Arc<Shared>,
    target: Target,
    mut rx: mpsc::Receiver<Outbound>,
    queued: Arc<AtomicUsize>,
    addr: Arc<Mutex<Option<SocketAddr>>>,
) {
    let writers = Arc::new(Semaphore::new(PEER_STREAMS_CONCURRENT_MAX));
    let mut learned: Option<NodeId> = match target {
        Target::Node(n) => Some(n),
        Target::Seed(_) => None,
    };
    let mut backoff_until: Option<tokio::time::Instant> = None;
    while let Some(item) = rx.recv().await {
        let len = item.len();
        let conn = match learned.and_then(|n| registered(&shared, &n)) {
            Some(c) => Some(c),
            None if backoff_until.is_some_and(|t| tokio::time::Instant::now() < t) => None,
            None => {
                let a = *lock(&addr);
                let dialled = match a {
                    Some(a) => {
                        dial(&shared, a, learned.filter(|_| matches!(target, Target::Node(_))))
                            .await
                    }
                    None => None,
                };
                match dialled {
                    Some((node, conn)) => {
                        learned = Some(node);
                        backoff_until = None;
                        Some(conn)
                    }
                    None => {
                        backoff_until = Some(
                            tokio::time::Instant::now() + Duration::from_millis(DIAL_BACKOFF_MS),
                        );
                        None
                    }
                }
            }
        };
        match (conn, item) {
            (None, _) => {
                shared.stats.frames_dropped_unreachable.fetch_add(1, Ordering::Relaxed);
                queued.fetch_sub(len, Ordering::AcqRel);
            }
            (Some(conn), Outbound::Datagram(bytes)) => {
                if conn.max_datagram_size().is_some_and(|max| bytes.len() <= max) {
                    let _ = conn.send_datagram(Bytes::from(bytes));
                } else {
                    shared.stats.datagrams_dropped_too_large.fetch_add(1, Ordering::Relaxed);
                }
                queued.fetch_sub(len, Ordering::AcqRel);
            }
            (Some(conn), Outbound::Frame(bytes)) => {
                let Ok(permit) = writers.clone().acquire_owned().await else { break };
                let queued = queued.clone();
                let shared = shared.clone();
                let node = learned;
                tokio::spawn(async move {
                    let sent = async {
                        let mut s = conn.open_uni().await.ok()?;
                        s.write_all(&bytes).await.ok()?;
                        s.finish().ok()
                    }
                    .await;
                    match sent {
                        Some(()) => {
                            let n = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                            shared.stats.frame_bytes_out.fetch_add(n, Ordering::Relaxed);
                        }
                        None => {
                            shared.stats.frames_dropped_unreachable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let left = queued.fetch_sub(len, Ordering::AcqRel) - len;
                    if let Some(n) = node
                        && left < PEER_QUEUE_BYTES_LOW
                        && lock(&shared.congested).get(&n).copied().unwrap_or(false)
                    {
                        set_congested(&shared, n, false);
                    }
                    drop(permit);
                });
            }
        }
    }
}
