//! The peer protocol: every message between nodes, in a versioned postcard envelope.
//!
//! Compatibility rule for rolling deploys: variants and fields are only ever appended. postcard
//! encodes an enum variant as its index, so an old node decodes every message it knew and counts
//! and drops a variant it does not know; a new node must not rely on an old node answering a new
//! variant. `PROTOCOL_VERSION` rises with every appended variant; a frame whose version is below
//! `PROTOCOL_VERSION_MIN` is refused.

use beamclaw_crdt::{Chunk, HeadsDigest, SessionKey};
use serde::{Deserialize, Serialize};

use super::api::{RequestBody, RequestError, Response};
use super::ids::{Epoch, Generation, Member, NodeId};
use super::turn::{RunRef, TurnEvent};

/// The protocol this build speaks. 2: session documents store a message as one record value
/// (format 2 of `beamclaw_crdt`); a node of protocol 1 could not read what it would be sent.
/// 3: segments carry the token counters (format 3); a node of protocol 2 would not see them.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest protocol this build still accepts.
pub const PROTOCOL_VERSION_MIN: u16 = 3;

/// Largest frame on a stream, in bytes: a sync message of one full segment plus the envelope.
pub const FRAME_BYTES_MAX: usize = 24 * 1024 * 1024;

/// Largest datagram payload we produce or accept, in bytes. QUIC guarantees 1200-byte UDP
/// payloads; after QUIC's own headers about 1162 bytes of datagram remain right after the
/// handshake, so our envelope plus a SWIM packet must stay under this.
pub const DATAGRAM_BYTES_MAX: usize = 1150;

/// Bytes of envelope around a SWIM packet (version, node id, generation, tags, length).
pub const SWIM_ENVELOPE_BYTES_MAX: usize = 64;

/// Largest SWIM packet foca may build: what is left of a datagram after our envelope.
pub const SWIM_PACKET_BYTES_MAX: usize = DATAGRAM_BYTES_MAX - SWIM_ENVELOPE_BYTES_MAX;

/// Entries in one anti-entropy digest message.
pub const DIGEST_ENTRIES_MAX: usize = 512;

/// Largest broadcast payload, in bytes, and longest topic.
pub const BROADCAST_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
pub const BROADCAST_TOPIC_BYTES_MAX: usize = 128;

/// Hops a request may be forwarded before it is refused (owner records still converging).
pub const FORWARD_HOPS_MAX: u8 = 4;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub from: NodeId,
    pub generation: Generation,
    pub msg: Msg,
}

/// One anti-entropy digest line: what the sender holds of a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub session: SessionKey,
    pub heads: HeadsDigest,
    pub epoch: Option<Epoch>,
}

/// Why a successor refused a handoff offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoffRefusal {
    /// Its copy of the session differs from the offer: keep syncing, then offer again.
    HeadsDiffer,
    /// It knows a higher epoch than the one offered.
    StaleEpoch,
    /// It is draining or stopping itself.
    Unwilling,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// A foca (SWIM) packet. Rides datagrams.
    Swim(Vec<u8>),
    /// A request for the owner of `session`. `origin` is the node where the client sent it (the
    /// answer goes straight back there); `hops` counts forwards between nodes.
    Request {
        id: u64,
        origin: NodeId,
        session: SessionKey,
        hops: u8,
        body: RequestBody,
    },
    /// The owner's answer to `Request { id }`.
    Response {
        id: u64,
        result: Result<Response, RequestError>,
    },
    /// A turn event, from the owner to a node with subscribers.
    Turn {
        run: RunRef,
        event: TurnEvent,
    },
    /// "I have local subscribers for `session`: send me its turn events for `ttl_ms`."
    Subscribe {
        session: SessionKey,
        ttl_ms: u64,
    },
    /// Changes pushed by the writer of a session to its replicas. When `ack` is set the replica
    /// answers `ChangesAck` once the chunks are durable (write quorum).
    Changes {
        session: SessionKey,
        chunks: Vec<Chunk>,
        epoch: Option<Epoch>,
        ack: Option<u64>,
    },
    ChangesAck {
        session: SessionKey,
        ack: u64,
    },
    /// One round of Automerge's sync protocol for a session. `heads` is the sender's digest after
    /// applying what it received, so each side knows when both are equal.
    Sync {
        session: SessionKey,
        message: Option<beamclaw_crdt::doc::SyncMessage>,
        heads: HeadsDigest,
        epoch: Option<Epoch>,
    },
    /// Anti-entropy: what the sender holds of the sessions in `[from, to]` that the receiver
    /// should hold too. `to` is `None` when the page reaches the end of the sender's key space.
    Digest {
        entries: Vec<DigestEntry>,
        from: Option<SessionKey>,
        to: Option<SessionKey>,
    },
    /// An owner record, sent directly (also spread by foca custom broadcasts).
    Owner {
        session: SessionKey,
        epoch: Epoch,
    },
    /// The owner offers the session to its successor under `epoch` (term + 1, successor).
    HandoffOffer {
        session: SessionKey,
        epoch: Epoch,
        heads: HeadsDigest,
    },
    /// The successor made `epoch` durable and owns the session now.
    HandoffAccept {
        session: SessionKey,
        epoch: Epoch,
    },
    HandoffRefuse {
        session: SessionKey,
        epoch: Epoch,
        reason: HandoffRefusal,
    },
    /// A joining node's identity, sent in a datagram to a seed address (whose node id it does
    /// not know yet). The seed announces itself back to it through foca.
    Hello {
        member: Member,
    },
    /// A small ephemeral message for every node (`Command::Broadcast`).
    Broadcast {
        topic: String,
        payload: Vec<u8>,
    },
}

impl Msg {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Swim(_) => "swim",
            Msg::Request { .. } => "request",
            Msg::Response { .. } => "response",
            Msg::Turn { .. } => "turn",
            Msg::Subscribe { .. } => "subscribe",
            Msg::Changes { .. } => "changes",
            Msg::ChangesAck { .. } => "changes_ack",
            Msg::Sync { .. } => "sync",
            Msg::Digest { .. } => "digest",
            Msg::Owner { .. } => "owner",
            Msg::HandoffOffer { .. } => "handoff_offer",
            Msg::HandoffAccept { .. } => "handoff_accept",
            Msg::HandoffRefuse { .. } => "handoff_refuse",
            Msg::Hello { .. } => "hello",
            Msg::Broadcast { .. } => "broadcast",
        }
    }
}

/// Serde adapter that embeds a value as JSON bytes inside the postcard envelope.
///
/// Transcript messages (`crdt::Message`) and turn events carrying them are shaped for OpenClaw's
/// JSON wire: optional fields are skipped when absent and content parts are internally tagged,
/// neither of which a non-self-describing format like postcard can read back. They travel as
/// JSON inside the envelope instead (size limits still apply to the whole frame).
pub mod as_json {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        let bytes = serde_json::to_vec(value).map_err(S::Error::custom)?;
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(d)?;
        serde_json::from_slice(&bytes).map_err(D::Error::custom)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame could not be decoded: {0}")]
    Decode(String),
    #[error("frame could not be encoded: {0}")]
    Encode(String),
    #[error("protocol version {got} is not supported (this node speaks {min}..={max})")]
    Version { got: u16, min: u16, max: u16 },
}

/// Encodes an envelope, refusing anything above `max` bytes.
pub fn encode(env: &Envelope, max: usize) -> Result<Vec<u8>, WireError> {
    let bytes = postcard::to_stdvec(env).map_err(|e| WireError::Encode(e.to_string()))?;
    if bytes.len() > max {
        return Err(WireError::TooLarge { len: bytes.len(), max });
    }
    Ok(bytes)
}

/// Decodes an envelope from untrusted bytes. Never panics; every failure is a typed error.
pub fn decode(bytes: &[u8], max: usize) -> Result<Envelope, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge { len: bytes.len(), max });
    }
    // Read the version first so that a frame from a future protocol gets a clear error rather
    // than a decode failure somewhere in its body.
    let (version, _) =
        postcard::take_from_bytes::<u16>(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
    if version < PROTOCOL_VERSION_MIN {
        return Err(WireError::Version {
            got: version,
            min: PROTOCOL_VERSION_MIN,
            max: PROTOCOL_VERSION,
        });
    }
    let env: Envelope =
        postcard::from_bytes(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(msg: Msg) -> Envelope {
        Envelope { version: PROTOCOL_VERSION, from: NodeId([7; 32]), generation: 65536, msg }
    }

    #[test]
    fn round_trips() {
        let key = SessionKey::new("agent:main:main").unwrap();
        for msg in [
            Msg::Swim(vec![1, 2, 3]),
            Msg::Owner { session: key.clone(), epoch: Epoch { term: 3, node: NodeId([1; 32]) } },
            Msg::Sync {
                session: key.clone(),
                message: None,
                heads: HeadsDigest([2; 32]),
                epoch: None,
            },
            Msg::Digest { entries: vec![], from: None, to: Some(key.clone()) },
            Msg::Request {
                id: 1,
                origin: NodeId([2; 32]),
                session: key,
                hops: 0,
                body: RequestBody::Submit {
                    agent_id: "main".into(),
                    message: Box::new(beamclaw_crdt::Message::user_text("m1", "hello", 5)),
                    idempotency_key: "k".into(),
                },
            },
        ] {
            let e = env(msg);
            let bytes = encode(&e, FRAME_BYTES_MAX).unwrap();
            assert_eq!(decode(&bytes, FRAME_BYTES_MAX).unwrap(), e);
        }
    }

    #[test]
    fn refuses_oversized_frames_both_ways() {
        let e = env(Msg::Swim(vec![0; 2000]));
        assert!(matches!(encode(&e, DATAGRAM_BYTES_MAX), Err(WireError::TooLarge { .. })));
        let bytes = encode(&e, FRAME_BYTES_MAX).unwrap();
        assert!(matches!(decode(&bytes, DATAGRAM_BYTES_MAX), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn refuses_old_versions_with_a_clear_error() {
        let mut e = env(Msg::Swim(vec![]));
        e.version = 0;
        let bytes = encode(&e, FRAME_BYTES_MAX).unwrap();
        assert!(matches!(decode(&bytes, FRAME_BYTES_MAX), Err(WireError::Version { got: 0, .. })));
    }

    #[test]
    fn swim_envelope_overhead_is_within_its_budget() {
        let e = env(Msg::Swim(vec![0; SWIM_PACKET_BYTES_MAX]));
        let bytes = encode(&e, DATAGRAM_BYTES_MAX).unwrap();
        assert!(bytes.len() <= DATAGRAM_BYTES_MAX, "{}", bytes.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode(&bytes, FRAME_BYTES_MAX);
        }

        #[test]
        fn mutated_frames_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let key = SessionKey::new("agent:main:x").unwrap();
            let e = env(Msg::Changes { session: key, chunks: vec![], epoch: Some(Epoch { term: 1, node: NodeId([3; 32]) }), ack: Some(9) });
            let mut bytes = encode(&e, FRAME_BYTES_MAX).unwrap();
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] ^= b;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = decode(&bytes, FRAME_BYTES_MAX);
        }
    }
}
