//! The mesh's state and counters on `/metrics` (`beamclaw_mesh_*`), the same names as in
//! `beamclaw status --json` and the logs.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use beamclaw_mesh::core::Counters;
use beamclaw_mesh::driver::MeshHandle;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How often the mesh's figures are copied into the registry.
pub const MESH_METRICS_PERIOD_MS: u64 = 1_000;

/// A running total as the mesh keeps it: a plain number (the core's `Counters`) or an atomic
/// (the transport's `TransportStats`).
trait Total {
    fn total(&self) -> u64;
}

impl Total for u64 {
    fn total(&self) -> u64 {
        *self
    }
}

impl Total for AtomicU64 {
    fn total(&self) -> u64 {
        self.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A struct of Prometheus counters mirroring the same-named totals of `$source`.
macro_rules! counters {
    ($name:ident from $source:ty { $($field:ident: $help:literal,)* }) => {
        #[derive(Default)]
        struct $name { $($field: Counter<u64, AtomicU64>,)* }

        impl $name {
            fn register(&self, r: &mut Registry) {
                $(r.register(stringify!($field), $help, self.$field.clone());)*
            }

            /// Counters only go up; the sources are totals since start, so add the difference.
            fn update(&self, source: &$source) {
                $(
                    let (seen, now) = (self.$field.get(), Total::total(&source.$field));
                    if now > seen {
                        self.$field.inc_by(now - seen);
                    }
                )*
            }
        }
    };
}

counters! {
    MeshCounters from Counters {
    frames_in: "Peer frames received",
    frames_out: "Peer frames sent",
    frames_dropped_decode: "Peer frames dropped because they did not decode",
    frames_dropped_version: "Peer frames dropped for an unsupported protocol version",
    datagrams_in: "SWIM datagrams received",
    datagrams_out: "SWIM datagrams sent",
    requests_forwarded: "Requests forwarded to another node",
    submits_accepted: "User messages appended on this node as owner",
    submits_duplicate: "Submits answered from an earlier idempotency key",
    turns_started: "Turns started on this node",
    turn_outputs_stale: "Turn outputs refused for a stale epoch",
    changes_pushed: "Change pushes sent to replicas",
    changes_skipped_congested: "Change pushes skipped because the peer was congested",
    pushes_stored_unapplied: "Pushes a replica stored and acknowledged before applying them",
    replica_settles: "Batches of stored pushes a replica applied at once",
    sync_rounds: "Anti-entropy sync messages sent",
    sync_exchanges_stalled: "Sync exchanges ended because several rounds in a row changed nothing",
    sync_exchanges_level: "Sync exchanges ended without an Automerge round because both copies had equal heads",
    sync_repairs_deferred: "Anti-entropy mismatches not synced yet because the session had just changed here",
    digests_sent: "Anti-entropy digests sent",
    claims: "Sessions claimed by this node",
    step_downs: "Sessions this node stopped owning because another node owns them",
    handoffs_completed: "Sessions handed to another node",
    handoffs_refused: "Handoffs refused or abandoned",
    owner_overlaps: "Times this node owned a session while another node also did",
    store_errors: "Write batches the store failed",
}
}

struct MeshGauges {
    members_alive: Gauge,
    sessions_known: Gauge,
    sessions_owned: Gauge,
    sessions_hydrated: Gauge,
    hydrated_bytes: Gauge,
    pending_requests: Gauge,
    pending_writes: Gauge,
    handoffs_in_progress: Gauge,
    sync_exchanges: Gauge,
}

counters! {
    // The transport's own counters, exported beside the core's.
    TransportCounters from beamclaw_mesh::driver::TransportStats {
    frame_bytes_in: "Bytes of peer frames received",
    frame_bytes_out: "Bytes of peer frames sent",
    frames_dropped_queue_full: "Peer frames dropped because the peer's send queue was full",
    frames_dropped_unreachable: "Peer frames dropped because the peer could not be reached",
    connections_opened: "Mesh connections opened (dialled or accepted)",
}
}

/// Registers the mesh metrics and keeps them current until the mesh stops.
pub fn export(mesh: MeshHandle, registry: &mut Registry) {
    let mesh_registry = registry.sub_registry_with_prefix("beamclaw_mesh");
    let counters = MeshCounters::default();
    counters.register(mesh_registry);
    let transport = TransportCounters::default();
    transport.register(mesh_registry);
    let gauges = MeshGauges {
        members_alive: Gauge::default(),
        sessions_known: Gauge::default(),
        sessions_owned: Gauge::default(),
        sessions_hydrated: Gauge::default(),
        hydrated_bytes: Gauge::default(),
        pending_requests: Gauge::default(),
        pending_writes: Gauge::default(),
        handoffs_in_progress: Gauge::default(),
        sync_exchanges: Gauge::default(),
    };
    mesh_registry.register(
        "members_alive",
        "Live members this node sees, itself included",
        gauges.members_alive.clone(),
    );
    mesh_registry.register(
        "sessions_known",
        "Sessions this node holds or knows",
        gauges.sessions_known.clone(),
    );
    mesh_registry.register(
        "sessions_owned",
        "Sessions this node owns",
        gauges.sessions_owned.clone(),
    );
    mesh_registry.register(
        "sessions_hydrated",
        "Sessions in memory",
        gauges.sessions_hydrated.clone(),
    );
    mesh_registry.register(
        "hydrated_bytes",
        "Estimated bytes of the sessions in memory",
        gauges.hydrated_bytes.clone(),
    );
    mesh_registry.register(
        "pending_requests",
        "Requests this node waits on",
        gauges.pending_requests.clone(),
    );
    mesh_registry.register(
        "pending_writes",
        "Write batches waiting for the disk",
        gauges.pending_writes.clone(),
    );
    mesh_registry.register(
        "handoffs_in_progress",
        "Sessions being handed over",
        gauges.handoffs_in_progress.clone(),
    );
    mesh_registry.register(
        "sync_exchanges",
        "Anti-entropy sync exchanges in progress",
        gauges.sync_exchanges.clone(),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(MESH_METRICS_PERIOD_MS));
        loop {
            tick.tick().await;
            let Ok(s) = mesh.status().await else { return };
            let set = |g: &Gauge, v: usize| {
                g.set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set(&gauges.members_alive, s.members.iter().filter(|m| m.alive).count() + 1);
            set(&gauges.sessions_known, s.sessions_known);
            set(&gauges.sessions_owned, s.sessions_owned);
            set(&gauges.sessions_hydrated, s.sessions_hydrated);
            set(&gauges.hydrated_bytes, s.hydrated_bytes);
            set(&gauges.pending_requests, s.pending_requests);
            set(&gauges.pending_writes, s.pending_writes);
            set(&gauges.handoffs_in_progress, s.handoffs_in_progress);
            set(&gauges.sync_exchanges, s.sync_exchanges);
            counters.update(&s.counters);
            transport.update(mesh.transport_stats());
        }
    });
}
