//! Looking inside frames the nodes send, for the checker, the metrics and the trace.
//!
//! Decoding every frame would cost as much as the nodes' own work, so the simulator first peeks
//! at the message variant (postcard writes the envelope's version as a varint, the sender's 32
//! key bytes, the generation as a varint, then the variant index as a varint) and decodes only
//! the few kinds it looks into. A test pins the peek to the real encoding.

use beamclaw_mesh::core::wire::{self, Envelope, FRAME_BYTES_MAX};

/// Variant indices of `wire::Msg`, in declaration order (the wire's compatibility rule only
/// ever appends variants, so these never change).
pub const KIND_NAMES: [&str; 15] = [
    "swim",
    "request",
    "response",
    "turn",
    "subscribe",
    "changes",
    "changes_ack",
    "sync",
    "digest",
    "owner",
    "handoff_offer",
    "handoff_accept",
    "handoff_refuse",
    "hello",
    "broadcast",
];
pub const KIND_RESPONSE: u32 = 2;
pub const KIND_HANDOFF_OFFER: u32 = 10;
pub const KIND_HANDOFF_ACCEPT: u32 = 11;

/// Bytes of a node id in the envelope.
const NODE_ID_BYTES: usize = 32;

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The `Msg` variant index of an encoded envelope, without decoding it.
pub fn peek_kind(bytes: &[u8]) -> Option<u32> {
    let mut at = 0;
    varint(bytes, &mut at)?; // version
    at += NODE_ID_BYTES; // from
    varint(bytes, &mut at)?; // generation
    u32::try_from(varint(bytes, &mut at)?).ok()
}

/// A short name of the frame's kind for the trace.
pub fn kind_name(bytes: &[u8]) -> &'static str {
    peek_kind(bytes).and_then(|k| KIND_NAMES.get(k as usize).copied()).unwrap_or("?")
}

/// Decodes a frame of one of the kinds the checker looks into.
pub fn decode(bytes: &[u8]) -> Option<Envelope> {
    wire::decode(bytes, FRAME_BYTES_MAX).ok()
}

/// FNV-1a over bytes: a cheap, stable fingerprint of payloads for the trace.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamclaw_crdt::{HeadsDigest, SessionKey};
    use beamclaw_mesh::core::Response;
    use beamclaw_mesh::core::api::{RequestError, RunStatus};
    use beamclaw_mesh::core::ids::{Epoch, NodeId};
    use beamclaw_mesh::core::wire::{HandoffRefusal, Msg, PROTOCOL_VERSION};

    #[test]
    fn peek_reads_the_variant_of_real_envelopes() {
        let key = SessionKey::new("agent:main:s0").unwrap();
        let epoch = Epoch { term: 300, node: NodeId([0xff; 32]) };
        let msgs = vec![
            Msg::Swim(vec![1; 300]),
            Msg::Response { id: 1 << 40, result: Err(RequestError::Timeout(5)) },
            Msg::Response {
                id: 7,
                result: Ok(Response::Submitted {
                    run_id: "r".into(),
                    message_id: "m".into(),
                    status: RunStatus::Started,
                    epoch,
                }),
            },
            Msg::Owner { session: key.clone(), epoch },
            Msg::Digest { entries: vec![], from: None, to: None },
            Msg::HandoffOffer { session: key.clone(), epoch, heads: HeadsDigest::default() },
            Msg::HandoffAccept { session: key.clone(), epoch },
            Msg::HandoffRefuse { session: key, epoch, reason: HandoffRefusal::Unwilling },
        ];
        for generation in [0, 1 << 16, u64::MAX] {
            for msg in &msgs {
                let env = Envelope {
                    version: PROTOCOL_VERSION,
                    from: NodeId([0x80; 32]),
                    generation,
                    msg: msg.clone(),
                };
                let bytes = wire::encode(&env, FRAME_BYTES_MAX).unwrap();
                assert_eq!(kind_name(&bytes), msg.kind(), "{msg:?}");
                assert_eq!(decode(&bytes), Some(env));
            }
        }
        assert_eq!(KIND_NAMES[KIND_RESPONSE as usize], "response");
        assert_eq!(KIND_NAMES[KIND_HANDOFF_OFFER as usize], "handoff_offer");
        assert_eq!(KIND_NAMES[KIND_HANDOFF_ACCEPT as usize], "handoff_accept");
        assert_eq!(kind_name(&[]), "?");
    }
}
