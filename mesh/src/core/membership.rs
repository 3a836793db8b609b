//! Membership: foca (SWIM) behind its sans-IO `Runtime`, and owner records as custom broadcasts.
//!
//! foca decides who is alive; this module turns its sends, timers and notifications into core
//! effects and keeps the live-member view that placement uses. Owner records ride foca's custom
//! broadcasts (piggybacked on SWIM packets, each sent a bounded number of times); anything a
//! broadcast misses is repaired by anti-entropy digests, which carry owner records too.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beamclaw_crdt::SessionKey;
use foca::{
    AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, OwnedNotification, PostcardCodec,
};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::ids::{Epoch, Member, NodeId};
use super::timers::Timer;
use super::wire::SWIM_PACKET_BYTES_MAX;

/// Owner records remembered by the broadcast handler to decide what is news (bounded; when full
/// the oldest half is forgotten, which only costs a few redundant re-broadcasts).
pub const BROADCAST_SEEN_MAX: usize = 65_536;

/// Owner records received by broadcast and not yet taken by the core (bounded; overflow is
/// dropped and repaired by anti-entropy).
pub const BROADCAST_INBOX_MAX: usize = 16_384;

/// How SWIM is tuned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwimPreset {
    /// foca's LAN preset, faster: 500 ms probe period, 250 ms probe RTT, 2 s suspicion below ten
    /// members (scaled with log10 of the size above), so a dead owner is taken over within 5 s.
    Lan,
    /// foca's WAN preset: 5 s probe period, 3 s probe RTT.
    Wan,
}

/// How many times each membership update is piggybacked: memberlist's rule,
/// `RETRANSMIT_MULT * ceil(log10(n + 1))`. foca's presets use `4 * log10(n + 1)` without the
/// ceiling, which is 1 or 2 below ten members: an update then reaches one or two members and
/// the rest learn of a new member only at the next periodic announce (30 s), while they route
/// and claim sessions with a view that misses it.
fn max_transmissions(cluster_size: usize) -> std::num::NonZeroU8 {
    let digits = ((cluster_size as f64) + 1.0).log10().ceil().max(1.0);
    let tx = (RETRANSMIT_MULT * digits).min(f64::from(u8::MAX));
    std::num::NonZeroU8::new(tx as u8).unwrap_or(std::num::NonZeroU8::MIN)
}

/// memberlist's retransmit multiplier (LAN and WAN).
const RETRANSMIT_MULT: f64 = 4.0;

pub(crate) fn swim_config(preset: SwimPreset, cluster_size: usize) -> foca::Config {
    let size = NonZeroU32::new(u32::try_from(cluster_size.max(1)).unwrap_or(u32::MAX))
        .unwrap_or(NonZeroU32::MIN);
    let mut config = match preset {
        SwimPreset::Lan => {
            let mut c = foca::Config::new_lan(size);
            c.probe_period = Duration::from_millis(LAN_PROBE_PERIOD_MS);
            c.probe_rtt = Duration::from_millis(LAN_PROBE_RTT_MS);
            let scale = f64::from(size.get()).log10().max(1.0);
            let suspicion_ms = LAN_SUSPICION_PERIODS * scale * LAN_PROBE_PERIOD_MS as f64;
            c.suspect_to_down_after = Duration::from_millis(suspicion_ms as u64);
            c
        }
        SwimPreset::Wan => foca::Config::new_wan(size),
    };
    config.max_packet_size = NonZeroUsize::new(SWIM_PACKET_BYTES_MAX).unwrap_or(NonZeroUsize::MIN);
    config.max_transmissions = max_transmissions(cluster_size).max(config.max_transmissions);
    // Members on the other side of a healed partition only find each other again by announcing
    // to members they consider down; foca's presets do that every 65 s (LAN) or 125 s (WAN),
    // far longer than the partition-heal convergence we promise. Do it every few seconds.
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(match preset {
            SwimPreset::Lan => ANNOUNCE_TO_DOWN_LAN_MS,
            SwimPreset::Wan => ANNOUNCE_TO_DOWN_WAN_MS,
        }),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    config
}

/// LAN probe period. foca's (memberlist's) 1 s period and 4 s suspicion take 5 to 7 s to declare
/// a killed node down, and its sessions are claimed only then: above the 5 s owner failover we
/// promise. Half the period and half the suspicion take 2.5 to 3.5 s; a live node still has
/// 2 s to refute a suspicion (a stall of up to about 2.5 s is survived).
pub const LAN_PROBE_PERIOD_MS: u64 = 500;
/// LAN probe round trip before indirect probes are sent (a LAN round trip is well under 1 ms).
pub const LAN_PROBE_RTT_MS: u64 = 250;
/// LAN suspicion, in probe periods, times max(1, log10(cluster size)) as foca scales it.
pub const LAN_SUSPICION_PERIODS: f64 = 4.0;

/// How often (LAN preset) a node announces itself to members it considers down.
pub const ANNOUNCE_TO_DOWN_LAN_MS: u64 = 2_000;
/// How often (WAN preset) a node announces itself to members it considers down.
pub const ANNOUNCE_TO_DOWN_WAN_MS: u64 = 10_000;

/// An owner record as broadcast: the key foca uses to replace stale versions of the same record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnerKey {
    session: SessionKey,
    epoch: Epoch,
}

impl Invalidates for OwnerKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.session == other.session && self.epoch >= other.epoch
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed owner broadcast: {0}")]
pub(crate) struct BroadcastError(String);

#[derive(Serialize, Deserialize)]
struct OwnerBroadcast {
    session: SessionKey,
    epoch: Epoch,
}

pub(crate) fn encode_owner_broadcast(session: &SessionKey, epoch: Epoch) -> Option<Vec<u8>> {
    postcard::to_stdvec(&OwnerBroadcast { session: session.clone(), epoch }).ok()
}

/// Records received by broadcast, waiting for the core. foca owns the handler, so this is the
/// only way back; the core is single-threaded, so the lock is never contended.
type Inbox = Arc<Mutex<Vec<(SessionKey, Epoch)>>>;

pub(crate) struct OwnerBroadcasts {
    seen: BTreeMap<SessionKey, Epoch>,
    inbox: Inbox,
}

impl BroadcastHandler<Member> for OwnerBroadcasts {
    type Key = OwnerKey;
    type Error = BroadcastError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Member>,
    ) -> Result<Option<OwnerKey>, BroadcastError> {
        let b: OwnerBroadcast =
            postcard::from_bytes(data).map_err(|e| BroadcastError(e.to_string()))?;
        if self.seen.get(&b.session).is_some_and(|seen| *seen >= b.epoch) {
            return Ok(None);
        }
        if self.seen.len() >= BROADCAST_SEEN_MAX {
            let keep: Vec<_> = self.seen.keys().skip(BROADCAST_SEEN_MAX / 2).cloned().collect();
            self.seen.retain(|k, _| keep.binary_search(k).is_ok());
        }
        self.seen.insert(b.session.clone(), b.epoch);
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if inbox.len() < BROADCAST_INBOX_MAX {
            inbox.push((b.session.clone(), b.epoch));
        }
        Ok(Some(OwnerKey { session: b.session, epoch: b.epoch }))
    }
}

/// A membership change the node logic reacts to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MembershipChange {
    Up(Member),
    Down(Member),
    Renamed {
        from: Member,
        to: Member,
    },
    Active,
    Idle,
    /// We were declared down and could not renew our identity.
    Defunct,
}

/// What one foca call produced, translated for the core.
#[derive(Default)]
pub(crate) struct SwimOutput {
    pub sends: Vec<(Member, Vec<u8>)>,
    pub timers: Vec<(Duration, Timer)>,
    pub changes: Vec<MembershipChange>,
}

pub(crate) struct Membership {
    foca: Foca<Member, PostcardCodec, ChaCha8Rng, OwnerBroadcasts>,
    runtime: AccumulatingRuntime<Member>,
    inbox: Inbox,
    preset: SwimPreset,
    /// Live members other than us, by node id.
    alive: BTreeMap<NodeId, Member>,
    /// Members foca declared down (kept for status and for rejoin detection).
    down: BTreeMap<NodeId, Member>,
    /// The cluster size foca's config was last tuned for.
    tuned_for: usize,
}

impl Membership {
    pub fn new(me: Member, preset: SwimPreset, rng: ChaCha8Rng) -> Self {
        let inbox: Inbox = Arc::default();
        let handler = OwnerBroadcasts { seen: BTreeMap::new(), inbox: inbox.clone() };
        let foca =
            Foca::with_custom_broadcast(me, swim_config(preset, 1), rng, PostcardCodec, handler);
        Membership {
            foca,
            runtime: AccumulatingRuntime::new(),
            inbox,
            preset,
            alive: BTreeMap::new(),
            down: BTreeMap::new(),
            tuned_for: 1,
        }
    }

    pub fn me(&self) -> &Member {
        self.foca.identity()
    }

    pub fn alive(&self) -> &BTreeMap<NodeId, Member> {
        &self.alive
    }

    pub fn down(&self) -> &BTreeMap<NodeId, Member> {
        &self.down
    }

    pub fn is_alive(&self, node: &NodeId) -> bool {
        *node == self.me().node || self.alive.contains_key(node)
    }

    /// Live nodes including us.
    pub fn live_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        std::iter::once(self.me().node).chain(self.alive.keys().copied())
    }

    pub fn member(&self, node: &NodeId) -> Option<&Member> {
        if *node == self.me().node {
            return Some(self.me());
        }
        self.alive.get(node).or_else(|| self.down.get(node))
    }

    pub fn announce(&mut self, seed: Member) -> Result<SwimOutput, foca::Error> {
        self.foca.announce(seed, &mut self.runtime)?;
        Ok(self.drain())
    }

    pub fn handle_data(&mut self, data: &[u8]) -> Result<SwimOutput, foca::Error> {
        self.foca.handle_data(data, &mut self.runtime)?;
        Ok(self.drain())
    }

    pub fn handle_timer(&mut self, timer: foca::Timer<Member>) -> Result<SwimOutput, foca::Error> {
        self.foca.handle_timer(timer, &mut self.runtime)?;
        Ok(self.drain())
    }

    pub fn leave(&mut self) -> Result<SwimOutput, foca::Error> {
        self.foca.leave_cluster(&mut self.runtime)?;
        Ok(self.drain())
    }

    /// Queues an owner record for dissemination. Returns false when foca considered it stale.
    pub fn broadcast_owner(&mut self, session: &SessionKey, epoch: Epoch) -> bool {
        let Some(data) = encode_owner_broadcast(session, epoch) else { return false };
        let added = self.foca.add_broadcast(&data).unwrap_or(false);
        // Our own record is not news to us: do not hand it back through the inbox.
        self.inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(s, e)| !(s == session && *e == epoch));
        added
    }

    /// Owner records received by broadcast since the last call.
    pub fn take_owner_records(&mut self) -> Vec<(SessionKey, Epoch)> {
        std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn updates_backlog(&self) -> usize {
        self.foca.updates_backlog()
    }

    fn drain(&mut self) -> SwimOutput {
        let mut out = SwimOutput::default();
        while let Some((to, data)) = self.runtime.to_send() {
            out.sends.push((to, data.to_vec()));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            out.timers.push((after, Timer::Swim(timer)));
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => {
                    self.down.remove(&m.node);
                    self.alive.insert(m.node, m.clone());
                    out.changes.push(MembershipChange::Up(m));
                }
                OwnedNotification::MemberDown(m) => {
                    // Only a down notice for the identity we consider alive removes it: an old
                    // generation going down after its successor came up is not a departure.
                    if self.alive.get(&m.node).is_some_and(|cur| cur.generation <= m.generation) {
                        self.alive.remove(&m.node);
                    }
                    self.down.insert(m.node, m.clone());
                    out.changes.push(MembershipChange::Down(m));
                }
                OwnedNotification::Rename(from, to) => {
                    if self.alive.contains_key(&to.node) {
                        self.alive.insert(to.node, to.clone());
                    }
                    out.changes.push(MembershipChange::Renamed { from, to });
                }
                OwnedNotification::Active => out.changes.push(MembershipChange::Active),
                OwnedNotification::Idle => out.changes.push(MembershipChange::Idle),
                OwnedNotification::Defunct => out.changes.push(MembershipChange::Defunct),
                OwnedNotification::Rejoin(_) => out.changes.push(MembershipChange::Active),
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        self.retune();
        out
    }

    /// Keeps foca's suspicion timeout and transmission count matched to the cluster size.
    fn retune(&mut self) {
        let size = self.alive.len() + 1;
        // Retune on doubling or halving only: set_config resets nothing, but there is no need
        // to churn it on every change.
        if (size >= self.tuned_for * 2 || size * 2 <= self.tuned_for)
            && self.foca.set_config(swim_config(self.preset, size)).is_ok()
        {
            self.tuned_for = size;
        }
    }
}
