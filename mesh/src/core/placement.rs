//! Placement: which nodes hold a session, in which order of preference.
//!
//! Rendezvous (highest-random-weight) hashing of the session key over the members: every node
//! that knows the same members computes the same order, and adding or removing one member moves
//! only the sessions whose top choices involve it.

use beamclaw_crdt::SessionKey;

use super::ids::NodeId;

/// Default number of replicas of a session (the first R nodes of its preference list).
pub const REPLICATION_FACTOR_DEFAULT: usize = 3;

/// Largest replication factor accepted in configuration.
pub const REPLICATION_FACTOR_MAX: usize = 7;

/// The weight of `node` for `session`: a keyed hash, stable across platforms and versions.
fn weight(session: &SessionKey, node: &NodeId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"beamclaw.placement.v1\0");
    h.update(&node.0);
    h.update(session.as_str().as_bytes());
    *h.finalize().as_bytes()
}

/// All `nodes` ordered by preference for `session`, most preferred first. Ties (impossible in
/// practice) break by node id so the order is total.
pub fn preference_list(
    session: &SessionKey,
    nodes: impl IntoIterator<Item = NodeId>,
) -> Vec<NodeId> {
    let mut weighted: Vec<([u8; 32], NodeId)> =
        nodes.into_iter().map(|n| (weight(session, &n), n)).collect();
    weighted.sort_unstable_by(|a, b| b.cmp(a));
    weighted.dedup_by(|a, b| a.1 == b.1);
    weighted.into_iter().map(|(_, n)| n).collect()
}

/// The replicas of `session`: the first `r` nodes of its preference list (fewer when the
/// cluster is smaller).
pub fn replicas(
    session: &SessionKey,
    nodes: impl IntoIterator<Item = NodeId>,
    r: usize,
) -> Vec<NodeId> {
    let mut list = preference_list(session, nodes);
    list.truncate(r);
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u8) -> Vec<NodeId> {
        (0..n).map(|i| NodeId([i; 32])).collect()
    }

    fn key(i: usize) -> SessionKey {
        SessionKey::new(format!("agent:main:s{i}")).unwrap()
    }

    #[test]
    fn order_does_not_depend_on_input_order() {
        let mut ns = nodes(7);
        let a = preference_list(&key(1), ns.clone());
        ns.reverse();
        assert_eq!(a, preference_list(&key(1), ns));
    }

    #[test]
    fn removing_a_node_only_moves_sessions_it_was_preferred_for() {
        let all = nodes(5);
        let without: Vec<_> = all.iter().copied().filter(|n| n.0[0] != 2).collect();
        for i in 0..500 {
            let before = preference_list(&key(i), all.clone());
            let after = preference_list(&key(i), without.clone());
            let expected: Vec<_> = before.into_iter().filter(|n| n.0[0] != 2).collect();
            assert_eq!(after, expected, "session {i}");
        }
    }

    #[test]
    fn ownership_spreads_over_nodes() {
        let all = nodes(4);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[preference_list(&key(i), all.clone())[0].0[0] as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn replicas_are_capped_by_cluster_size() {
        assert_eq!(replicas(&key(0), nodes(2), 3).len(), 2);
        assert_eq!(replicas(&key(0), nodes(9), 3).len(), 3);
    }
}
