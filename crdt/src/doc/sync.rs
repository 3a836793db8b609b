//! Anti-entropy with one peer: Automerge's sync protocol run per part, bundled into one
//! [`SyncMessage`] per round, and the per-peer state that can be persisted between connections.

use super::SYNC_MESSAGE_BYTES_MAX;
use super::error::DocError;
use crate::types::PartId;
use automerge::{AutoCommit, ChangeHash, sync};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version byte in front of a persisted [`PeerSyncState`].
const SYNC_STATE_FORMAT: u8 = 1;

/// Bytes a part id adds to a sync message besides its session id (enum tag, lengths, index).
const PART_ID_WIRE_BYTES: usize = 16;
/// Bytes of a sync message besides its parts (the length of the parts list).
pub(crate) const MESSAGE_WIRE_BYTES: usize = 8;

/// One round of sync with a peer: for each part that has something to say, Automerge's sync
/// message bytes. Includes parts the peer may not have; the receiver creates them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMessage {
    pub parts: Vec<(PartId, Vec<u8>)>,
}

pub(crate) fn part_wire_bytes(part: &PartId, bytes: usize) -> usize {
    let id = match part {
        PartId::Manifest => 0,
        PartId::Segment { session_id, .. } => session_id.len(),
    };
    PART_ID_WIRE_BYTES + id + bytes
}

impl SyncMessage {
    /// Size of the message on the wire, as the limit counts it (an upper bound of its postcard
    /// encoding).
    pub fn wire_bytes(&self) -> usize {
        let parts: usize =
            self.parts.iter().map(|(part, bytes)| part_wire_bytes(part, bytes.len())).sum();
        MESSAGE_WIRE_BYTES + parts
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

/// What this replica knows about one peer's copy of a session: one Automerge sync state per part.
#[derive(Clone, Debug, Default)]
pub struct PeerSyncState {
    pub(crate) parts: BTreeMap<PartId, sync::State>,
}

#[derive(Serialize, Deserialize)]
struct PersistedSyncState {
    parts: Vec<(PartId, Vec<u8>)>,
}

impl PeerSyncState {
    pub fn new() -> PeerSyncState {
        PeerSyncState::default()
    }

    /// The persistent form: for each part, Automerge's encoded sync state (the heads both sides
    /// were known to share). In-flight bookkeeping is per connection and is not kept.
    pub fn encode(&self) -> Vec<u8> {
        let persisted = PersistedSyncState {
            parts: self.parts.iter().map(|(part, state)| (part.clone(), state.encode())).collect(),
        };
        let mut out = vec![SYNC_STATE_FORMAT];
        // Serializing owned strings and byte vectors into a Vec cannot fail.
        if let Ok(bytes) = postcard::to_stdvec(&persisted) {
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// Records that the peer's copy equals ours, whose parts have `heads`: the state an exchange
    /// that found both sides level would end in, without running Automerge's protocol to learn
    /// it. Equal heads digests mean equal copies, so the next exchange starts from these heads.
    pub fn set_level(&mut self, heads: &[(PartId, Vec<[u8; 32]>)]) {
        for (part, hashes) in heads {
            let hashes: Vec<ChangeHash> = hashes.iter().map(|h| ChangeHash(*h)).collect();
            let state = self.parts.entry(part.clone()).or_default();
            state.shared_heads = hashes.clone();
            state.last_sent_heads = hashes.clone();
            state.their_heads = Some(hashes);
            state.their_need = None;
            state.their_have = Some(Vec::new());
            state.sent_hashes.clear();
            state.in_flight = false;
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<PeerSyncState, DocError> {
        let Some((&format, rest)) = bytes.split_first() else {
            return Err(DocError::SyncStateDecode { reason: "empty".into() });
        };
        if format != SYNC_STATE_FORMAT {
            return Err(DocError::SyncStateDecode {
                reason: format!("format {format}; this build reads format {SYNC_STATE_FORMAT}"),
            });
        }
        let persisted: PersistedSyncState = postcard::from_bytes(rest)
            .map_err(|e| DocError::SyncStateDecode { reason: e.to_string() })?;
        let mut parts = BTreeMap::new();
        for (part, state) in persisted.parts {
            let state = sync::State::decode(&state)
                .map_err(|e| DocError::SyncStateDecode { reason: format!("{part}: {e}") })?;
            parts.insert(part, state);
        }
        Ok(PeerSyncState { parts })
    }
}

/// Checks a received message against the size limit before anything is decoded.
pub(crate) fn check_received(message: &SyncMessage) -> Result<(), DocError> {
    let bytes = message.wire_bytes();
    if bytes > SYNC_MESSAGE_BYTES_MAX {
        return Err(DocError::SyncMessageTooLarge { bytes });
    }
    Ok(())
}

pub(crate) fn decode_part_message(part: &PartId, bytes: &[u8]) -> Result<sync::Message, DocError> {
    sync::Message::decode(bytes)
        .map_err(|e| DocError::SyncMessageDecode { part: part.clone(), reason: e.to_string() })
}

/// Forgets that we sent the changes the peer still asks for, so they are sent again.
///
/// Automerge's sync state assumes every message arrives: a change it has sent once is never sent
/// again in the same exchange. When the message carrying it is lost (a cut link, a dropped
/// connection), the peer keeps naming it in `need`, we keep sending nothing, and both sides
/// answer each other with the same message for as long as the exchange lasts (the simulator saw
/// 10,000 rounds a second between two nodes after a one-way partition). A change named in `need`
/// is one the peer did not have when it wrote the message: sending it again costs at most a
/// duplicate, which the peer ignores.
pub(crate) fn resend_needed(state: &mut sync::State) {
    if let Some(need) = &state.their_need {
        for hash in need {
            state.sent_hashes.remove(hash);
        }
    }
}

/// Adds what we have to a sync message that asks for changes without saying what we have.
///
/// Automerge withholds its `have` (the bloom filter of our changes since the last sync) while it
/// needs a change the peer did not advertise as a head. A replica that missed pushes while it was
/// down or cut off then holds later pushed changes whose dependencies are missing, needs the
/// newest missing one, learns its parent only when it arrives, and fetches the gap one change per
/// round trip (the simulator saw exchanges of ten rounds and more). With the `have` included, the
/// peer sends the needed changes and everything else we lack since the last sync in one reply;
/// a change the bloom filter wrongly claims is asked for by `need` in the next round.
pub(crate) fn offer_have(doc: &mut AutoCommit, state: &sync::State, message: &mut sync::Message) {
    if message.need.is_empty() || !message.have.is_empty() {
        return;
    }
    let last_sync = state.shared_heads.clone();
    let hashes: Vec<ChangeHash> =
        doc.get_changes_meta(&last_sync).into_iter().map(|meta| meta.hash).collect();
    let bloom = sync::BloomFilter::from_hashes(hashes.iter());
    message.have = vec![sync::Have { last_sync, bloom }];
}
