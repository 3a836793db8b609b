//! Heads advanced by pushed changes without applying them.
//!
//! A replica stores what its writer pushes and acknowledges it once durable; it reads the session
//! far less often than it is written to. Applying each push to Automerge as it comes costs a call
//! per push (Automerge's cost per call is high), so the mesh may keep pushes in the order they
//! came, apply them in one batch when the document is next read, and in the meantime know the
//! heads they lead to from the changes' own metadata (hash and dependencies), which is what the
//! anti-entropy digest and the handoff's equal-heads check compare.
//!
//! [`HeadsTracker::advance`] takes a chunk only when that is exact: every change follows on
//! heads the tracker knows (its dependencies are current heads), the part exists and holds no
//! change waiting for dependencies (which the new change could release). Anything else is
//! refused, and the caller applies for real.

use super::part;
use crate::types::{Chunk, HeadsDigest, PartId};

/// The heads of every part of one session, as they are after the pushes taken so far.
#[derive(Clone, Debug, Default)]
pub struct HeadsTracker {
    /// In [`super::SessionDoc::part_heads`] order (the digest's), with whether pushes to the
    /// part may be taken (it held no change waiting for dependencies).
    parts: Vec<(PartId, Vec<[u8; 32]>, bool)>,
}

impl HeadsTracker {
    pub(crate) fn new(parts: Vec<(PartId, Vec<[u8; 32]>, bool)>) -> Self {
        HeadsTracker { parts }
    }

    /// Advances past the changes of `chunk`. `Some(true)` when it brought new changes,
    /// `Some(false)` when every change was already a head, `None` (and nothing moved) when the
    /// chunk cannot be accounted for without applying it: a manifest change (it may switch the
    /// current transcript), a part this copy does not have, a change whose dependencies are not
    /// all current heads, a document chunk, or bytes that do not parse.
    pub fn advance(&mut self, chunk: &Chunk) -> Option<bool> {
        if chunk.part == PartId::Manifest {
            return None;
        }
        let (_, current, deferrable) = self.parts.iter_mut().find(|(id, ..)| *id == chunk.part)?;
        if !*deferrable {
            return None;
        }
        let mut heads = current.clone();
        let mut new = false;
        for (hash, deps) in part::change_metadata(&chunk.bytes).ok()? {
            if heads.contains(&hash) {
                continue;
            }
            // A change without dependencies is a genesis: ours, or a foreign one, is for the
            // real merge to sort out.
            if deps.is_empty() || !deps.iter().all(|d| heads.contains(d)) {
                return None;
            }
            heads.retain(|h| !deps.contains(h));
            heads.push(hash);
            heads.sort_unstable();
            new = true;
        }
        *current = heads;
        Some(new)
    }

    /// Each part's heads, in [`super::SessionDoc::part_heads`] form, as they are once the taken
    /// chunks are applied.
    pub fn part_heads(&self) -> Vec<(PartId, Vec<[u8; 32]>)> {
        self.parts.iter().map(|(id, heads, _)| (id.clone(), heads.clone())).collect()
    }

    /// The digest of the heads, equal to [`super::SessionDoc::heads_digest`] once the taken
    /// chunks are applied.
    pub fn digest(&self) -> HeadsDigest {
        digest_of(self.parts.iter().map(|(id, heads, _)| (id, heads.as_slice())))
    }
}

/// blake3 over the sorted (part, heads) list.
pub(crate) fn digest_of<'a>(
    parts: impl IntoIterator<Item = (&'a PartId, &'a [[u8; 32]])>,
) -> HeadsDigest {
    let mut hasher = blake3::Hasher::new();
    for (part, heads) in parts {
        match part {
            PartId::Manifest => {
                hasher.update(b"m");
            }
            PartId::Segment { session_id, index } => {
                hasher.update(b"s");
                hasher.update(&(session_id.len() as u64).to_le_bytes());
                hasher.update(session_id.as_bytes());
                hasher.update(&index.to_le_bytes());
            }
        }
        hasher.update(&(heads.len() as u64).to_le_bytes());
        for head in heads {
            hasher.update(head);
        }
    }
    HeadsDigest(*hasher.finalize().as_bytes())
}
