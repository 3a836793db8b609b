//! Who is who: node ids, cluster members and owner epochs.
//!
//! A node id is the node's Ed25519 public key (its libp2p PeerId, shown in base58). A member is a
//! node id at an address in one generation of the process: a node restarted on a new address is
//! the same node id with a higher generation, and foca treats that as a rename of one member.

use std::cmp::Ordering;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node's identity: the raw 32-byte Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The libp2p PeerId of this key, as users see it (`12D3KooW...`).
    pub fn to_peer_id(&self) -> Option<libp2p_identity::PeerId> {
        let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0).ok()?;
        let key = libp2p_identity::PublicKey::from(key);
        Some(libp2p_identity::PeerId::from_public_key(&key))
    }

    /// A short, stable label for logs and traces (first 8 hex digits of the key).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_peer_id() {
            Some(peer) => write!(f, "{}", peer.to_base58()),
            // Not a valid Ed25519 point (only synthetic ids in tests): show the raw key.
            None => write!(f, "raw:{}", hex::encode(self.0)),
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// The process generation of a member. The upper bits count process starts (persisted and raised
/// on every start), the lower [`GENERATION_RENEW_BITS`] count in-process renewals after foca
/// declared us down. A restarted process therefore always outranks every identity its previous
/// run may have renewed to.
pub type Generation = u64;

/// Bits of a [`Generation`] reserved for in-process renewals.
pub const GENERATION_RENEW_BITS: u32 = 16;

/// The generation of the first identity of a process that has started `starts` times.
pub fn generation_for_start(starts: u64) -> Generation {
    starts << GENERATION_RENEW_BITS
}

/// A cluster member as foca sees it: node id, where it listens, and which generation.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub generation: Generation,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.node.short(), self.addr, self.generation)
    }
}

impl foca::Identity for Member {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        // Declared down while alive (a false suspicion, a long pause): come back at once as the
        // next generation of the same process.
        let renewals = self.generation & ((1 << GENERATION_RENEW_BITS) - 1);
        if renewals + 1 >= (1 << GENERATION_RENEW_BITS) {
            return None;
        }
        Some(Member { generation: self.generation + 1, ..self.clone() })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Who owns a session from which term on. Records are totally ordered by `(term, node)`: the
/// larger record wins everywhere. A node only ever claims a term above every term it has seen,
/// so a node's view of a session's owner only grows; two claims of the same term (possible only
/// between nodes that could not hear each other) are still distinct epochs and order by node id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Epoch {
    pub term: u64,
    pub node: NodeId,
}

impl Epoch {
    /// The claim a node makes over a session whose highest known epoch is `seen`.
    pub fn claim_after(seen: Option<Epoch>, node: NodeId) -> Epoch {
        Epoch { term: seen.map_or(1, |e| e.term + 1), node }
    }
}

impl PartialOrd for Epoch {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Epoch {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.term, self.node).cmp(&(other.term, other.node))
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.term, self.node.short())
    }
}

impl From<Epoch> for beamclaw_crdt::OwnerRecord {
    fn from(e: Epoch) -> Self {
        beamclaw_crdt::OwnerRecord { epoch: e.term, node: hex::encode(e.node.0) }
    }
}

impl Epoch {
    /// Reads back what [`From<Epoch> for OwnerRecord`] wrote; `None` for a record we cannot parse.
    pub fn from_record(r: &beamclaw_crdt::OwnerRecord) -> Option<Epoch> {
        let bytes = hex::decode(&r.node).ok()?;
        let node = NodeId(bytes.try_into().ok()?);
        Some(Epoch { term: r.epoch, node })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn node(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn restarted_process_outranks_every_renewal_of_the_previous_one() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut old = Member { node: node(1), addr, generation: generation_for_start(3) };
        for _ in 0..100 {
            old = old.renew().unwrap();
        }
        let restarted = Member { node: node(1), addr, generation: generation_for_start(4) };
        assert!(restarted.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&restarted));
        assert_eq!(restarted.addr(), old.addr());
    }

    #[test]
    fn epochs_order_by_term_then_node_and_claims_grow() {
        let a = Epoch { term: 2, node: node(9) };
        let b = Epoch { term: 3, node: node(1) };
        assert!(a < b);
        let c = Epoch::claim_after(Some(b), node(0));
        assert!(c > b && c.term == 4);
        assert_eq!(Epoch::claim_after(None, node(5)).term, 1);
    }

    #[test]
    fn owner_record_round_trip() {
        let e = Epoch { term: 7, node: node(3) };
        let r: beamclaw_crdt::OwnerRecord = e.into();
        assert_eq!(Epoch::from_record(&r), Some(e));
        let bad = beamclaw_crdt::OwnerRecord { epoch: 1, node: "zz".into() };
        assert_eq!(Epoch::from_record(&bad), None);
    }

    #[test]
    fn node_id_displays_as_peer_id_for_real_keys() {
        let mut secret = [42u8; 32];
        let sk = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut secret).unwrap();
        let kp = libp2p_identity::ed25519::Keypair::from(sk);
        let id = NodeId(kp.public().to_bytes());
        assert!(id.to_string().starts_with("12D3KooW"), "{id}");
    }
}
