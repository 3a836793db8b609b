//! One Automerge document of a session (the manifest or a segment): its deterministic genesis,
//! its writer actor, and the bookkeeping of what has been handed out as chunks.
//!
//! Genesis rule: the first change of every part is made by a fixed actor derived from the part's
//! identity, with timestamp 0, and holds only the empty structure. Two replicas that create the
//! same part independently therefore produce the byte-identical first change, and Automerge sees
//! one root structure instead of two conflicting ones (which would hide one side's messages).

use super::error::DocError;
use super::meta::{KEY_INPUT_TOKENS, KEY_OUTPUT_TOKENS, KEY_TOTAL_TOKENS};
use super::{FORMAT_VERSION, GENESIS_ACTOR_BYTES, WRITER_ACTOR_BYTES_MAX, WRITER_ACTOR_BYTES_MIN};
use crate::types::{PartId, SessionKey};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, LoadOptions, ObjId, ObjType, OnPartialLoad, ROOT,
    ReadDoc, ScalarValue, VerificationMode,
};

/// Root key of the format version (a uint) in every part.
pub(crate) const KEY_VERSION: &str = "v";
/// Root key of the messages list in a segment.
pub(crate) const KEY_MESSAGES: &str = "messages";
/// Root key of the metadata map in the manifest.
pub(crate) const KEY_META: &str = "meta";
/// Root key of the archives list in the manifest.
pub(crate) const KEY_ARCHIVES: &str = "archives";

/// Root key of the token counters map in a segment.
pub(crate) const KEY_USAGE: &str = "usage";

/// Counters are created at genesis so that every replica increments the same counter object: a
/// counter created independently on two replicas would be two conflicting values, and one side's
/// increments would be hidden.
///
/// Metadata fields that are Automerge counters (in the manifest).
pub(crate) const MANIFEST_COUNTER_FIELDS: [&str; 1] = ["compactionCount"];
/// Token counters of a segment: the usage of the turns whose output it holds. A turn's usage is
/// written in the same change as its final message, so a turn costs no manifest change; a
/// transcript's totals are the sums over its segments.
/// In (input, output, total) order, the order of [`super::segment::Segment::usage`].
pub(crate) const USAGE_COUNTER_FIELDS: [&str; 3] =
    [KEY_INPUT_TOKENS, KEY_OUTPUT_TOKENS, KEY_TOTAL_TOKENS];

/// Automerge's storage framing: every chunk is `MAGIC_BYTES`, a checksum, a type byte, the
/// LEB128 length of the data, then the data.
const MAGIC_BYTES: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHECKSUM_BYTES: usize = 4;
const CHUNK_TYPE_DOCUMENT: u8 = 0;
const CHUNK_TYPE_CHANGE: u8 = 1;
const CHUNK_TYPE_COMPRESSED: u8 = 2;
/// Longest LEB128 encoding of a u64.
const LEB128_BYTES_MAX: usize = 10;

/// One change chunk, its checksum checked: the checksum is the first bytes of the change hash,
/// and Automerge's incremental loader does not report a mismatch.
fn parse_change(piece: &[u8]) -> Result<Change, String> {
    let change = Change::try_from(piece).map_err(|e| e.to_string())?;
    let stored = &piece[MAGIC_BYTES.len()..][..CHECKSUM_BYTES];
    if change.hash().0[..CHECKSUM_BYTES] != *stored {
        return Err("checksum mismatch".into());
    }
    Ok(change)
}

/// (hash, dependencies) of a change.
pub(crate) type ChangeMeta = ([u8; 32], Vec<[u8; 32]>);

/// (hash, dependencies) of every change in `bytes`, in order; an error for a document chunk or
/// bytes that do not parse.
pub(crate) fn change_metadata(bytes: &[u8]) -> Result<Vec<ChangeMeta>, String> {
    Ok(changes_in(bytes)?
        .iter()
        .map(|change| (change.hash().0, change.deps().iter().map(|d| d.0).collect()))
        .collect())
}

/// Every change in `bytes`, in order, each checked; an error for a document chunk or bytes that
/// do not parse.
fn changes_in(bytes: &[u8]) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (kind, piece, after) = split_chunk(rest).map_err(str::to_owned)?;
        rest = after;
        if kind != CHUNK_TYPE_CHANGE && kind != CHUNK_TYPE_COMPRESSED {
            return Err(format!("chunk type {kind} is not a change"));
        }
        out.push(parse_change(piece)?);
    }
    Ok(out)
}

/// Ids of the messages whose records the changes in `bytes` write (appends and overwrites), in
/// order; an error for a document chunk (a snapshot) or bytes that do not parse. Reads the
/// changes without a document, so a checker can tell what reached a disk without trusting the
/// document code it checks (the simulator's acknowledged-is-durable check).
pub fn recorded_message_ids(bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for change in changes_in(bytes)? {
        for op in change.decode().operations {
            let is_record =
                matches!(&op.key, automerge::legacy::Key::Map(k) if k == super::record::KEY_RECORD);
            if let (true, automerge::legacy::OpType::Put(ScalarValue::Bytes(record))) =
                (is_record, &op.action)
            {
                out.push(super::record::Entry::from_bytes(record)?.id.into());
            }
        }
    }
    Ok(out)
}

/// Splits the first Automerge chunk off `bytes`: (type, the whole chunk, the rest).
fn split_chunk(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
    let header = MAGIC_BYTES.len() + CHECKSUM_BYTES;
    if bytes.len() < header + 2 {
        return Err("truncated chunk header");
    }
    if bytes[..MAGIC_BYTES.len()] != MAGIC_BYTES {
        return Err("not an Automerge chunk (bad magic bytes)");
    }
    let kind = bytes[header];
    let mut len: u64 = 0;
    let mut at = header + 1;
    for shift in 0..LEB128_BYTES_MAX {
        let Some(&byte) = bytes.get(at) else {
            return Err("truncated chunk length");
        };
        at += 1;
        len |= u64::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            break;
        }
        if shift + 1 == LEB128_BYTES_MAX {
            return Err("chunk length does not fit in 64 bits");
        }
    }
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| at.checked_add(len))
        .filter(|end| *end <= bytes.len())
        .ok_or("truncated chunk data")?;
    Ok((kind, &bytes[..end], &bytes[end..]))
}

/// The changes in Automerge bytes, best effort: pieces that are not well-formed changes (whole
/// documents, damaged chunks) are left out. Used only as a hint; the document decides what was
/// applied.
pub(crate) fn parse_changes<'b>(pieces: impl IntoIterator<Item = &'b [u8]>) -> Vec<Change> {
    let mut out = Vec::new();
    for bytes in pieces {
        let mut rest = bytes;
        while let Ok((kind, piece, after)) = split_chunk(rest) {
            rest = after;
            if matches!(kind, CHUNK_TYPE_CHANGE | CHUNK_TYPE_COMPRESSED)
                && let Ok(change) = Change::try_from(piece)
            {
                out.push(change);
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    out
}

/// Checks the writer actor the caller passes. Writer actors are longer than genesis actors, so a
/// writer can never impersonate the genesis of a part.
pub(crate) fn writer_actor_id(actor: &[u8]) -> Result<ActorId, DocError> {
    if !(WRITER_ACTOR_BYTES_MIN..=WRITER_ACTOR_BYTES_MAX).contains(&actor.len()) {
        return Err(DocError::ActorLength { len: actor.len() });
    }
    Ok(ActorId::from(actor))
}

/// The fixed actor of a part's first change: blake3 of the part identity, truncated.
fn genesis_actor(key: &SessionKey, part: &PartId) -> ActorId {
    let mut hasher = blake3::Hasher::new();
    match part {
        PartId::Manifest => {
            hasher.update(b"beamclaw/genesis/manifest\0");
            hasher.update(key.as_str().as_bytes());
        }
        PartId::Segment { session_id, index } => {
            hasher.update(b"beamclaw/genesis/segment\0");
            hasher.update(session_id.as_bytes());
            hasher.update(b"\0");
            hasher.update(&index.to_le_bytes());
        }
    }
    let hash = hasher.finalize();
    ActorId::from(&hash.as_bytes()[..GENESIS_ACTOR_BYTES])
}

/// An Automerge document plus the heads that were last handed out as chunks.
#[derive(Debug)]
pub(crate) struct Part {
    pub(crate) doc: AutoCommit,
    /// Heads covered by the chunks already returned from `take_chunk`/`snapshot` (or loaded).
    saved_heads: Vec<ChangeHash>,
}

impl Part {
    /// A part holding only its genesis change, switched to `writer` for everything after.
    pub(crate) fn genesis(
        key: &SessionKey,
        part: &PartId,
        writer: &ActorId,
    ) -> Result<Part, DocError> {
        let mut doc = AutoCommit::new().with_actor(genesis_actor(key, part));
        let wrap = DocError::automerge(part);
        (|| {
            doc.put(ROOT, KEY_VERSION, FORMAT_VERSION)?;
            match part {
                PartId::Manifest => {
                    let meta = doc.put_object(ROOT, KEY_META, ObjType::Map)?;
                    for field in MANIFEST_COUNTER_FIELDS {
                        doc.put(&meta, field, ScalarValue::counter(0))?;
                    }
                    doc.put_object(ROOT, KEY_ARCHIVES, ObjType::List)?;
                }
                PartId::Segment { .. } => {
                    doc.put_object(ROOT, KEY_MESSAGES, ObjType::List)?;
                    let usage = doc.put_object(ROOT, KEY_USAGE, ObjType::Map)?;
                    for field in USAGE_COUNTER_FIELDS {
                        doc.put(&usage, field, ScalarValue::counter(0))?;
                    }
                }
            }
            Ok(())
        })()
        .map_err(wrap)?;
        doc.commit_with(CommitOptions::default().with_time(0));
        doc.set_actor(writer.clone());
        Ok(Part { doc, saved_heads: Vec::new() })
    }

    /// A part with nothing in it yet, for loading: its stored chunks hold its genesis change
    /// (the first chunk of every part does), so building the genesis here would be wasted work,
    /// and a part's genesis costs more than applying it. [`Self::ensure_genesis`] adds it when
    /// the chunks did not.
    pub(crate) fn empty(writer: &ActorId) -> Part {
        Part { doc: AutoCommit::new().with_actor(writer.clone()), saved_heads: Vec::new() }
    }

    /// Adds the part's genesis change when the loaded chunks lack it: the root's format version
    /// is missing or was not written by this part's genesis actor (chunks of another part or
    /// session: the readers then find two genesis changes and refuse the part), or changes wait
    /// for a dependency (which may be the genesis).
    pub(crate) fn ensure_genesis(
        &mut self,
        key: &SessionKey,
        part: &PartId,
    ) -> Result<(), DocError> {
        let ours = genesis_actor(key, part);
        let versions = self.doc.get_all(ROOT, KEY_VERSION).unwrap_or_default();
        let only_ours = !versions.is_empty()
            && versions
                .iter()
                .all(|(_, id)| matches!(id, ObjId::Id(_, actor, _) if *actor == ours));
        if only_ours && !self.waiting_for_dependencies() {
            return Ok(());
        }
        let mut genesis = Part::genesis(key, part, self.doc.get_actor())?;
        let changes = genesis.doc.get_changes(&[]);
        self.apply_changes(part, changes)
    }

    /// Runs `f` as one Automerge change: committed when it succeeds, rolled back when it fails,
    /// so that a failed write never leaves half a message behind.
    pub(crate) fn transact<T>(
        &mut self,
        f: impl FnOnce(&mut AutoCommit) -> Result<T, DocError>,
    ) -> Result<T, DocError> {
        match f(&mut self.doc) {
            Ok(value) => {
                self.doc.commit();
                Ok(value)
            }
            Err(error) => {
                self.doc.rollback();
                Err(error)
            }
        }
    }

    pub(crate) fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Applies Automerge bytes (a `save()` or incremental changes). Returns whether the document
    /// changed; changes whose dependencies are missing are queued by Automerge.
    #[cfg(test)]
    pub(crate) fn apply(&mut self, part: &PartId, bytes: &[u8]) -> Result<bool, DocError> {
        self.apply_many(part, &[bytes]).map(|(changed, _)| changed)
    }

    /// Applies several pieces of Automerge bytes in one Automerge call (its cost per call is
    /// high). Returns whether the document changed, and the changes parsed from the pieces: a
    /// hint that spares [`super::segment::Segment::refresh_since`] rebuilding them from the op
    /// set (changes inside whole documents are not in it).
    pub(crate) fn apply_many(
        &mut self,
        part: &PartId,
        pieces: &[&[u8]],
    ) -> Result<(bool, Vec<Change>), DocError> {
        let before = self.doc.get_heads();
        let mut changes = Vec::new();
        for bytes in pieces {
            self.ingest(part, bytes, &mut changes)?;
        }
        let parsed = changes.clone();
        self.apply_changes(part, changes)?;
        Ok((self.doc.get_heads() != before, parsed))
    }

    /// Parses Automerge bytes: whole documents are taken in at once, changes are added to
    /// `changes` for one `apply_changes` later (Automerge's cost per call is high, so a load
    /// applies each part's changes in one batch).
    ///
    /// Stricter than Automerge's `load_incremental`, which skips a chunk that fails to parse or
    /// to match its checksum and loads the rest: here any such chunk is an error naming the part,
    /// so a truncated or bit-flipped chunk on disk is never silently half-loaded.
    pub(crate) fn ingest(
        &mut self,
        part: &PartId,
        bytes: &[u8],
        changes: &mut Vec<Change>,
    ) -> Result<(), DocError> {
        let decode = |reason: String| DocError::ChunkDecode { part: part.clone(), reason };
        let mut rest = bytes;
        while !rest.is_empty() {
            let (kind, piece, after) = split_chunk(rest).map_err(|r| decode(r.to_owned()))?;
            rest = after;
            match kind {
                CHUNK_TYPE_DOCUMENT => {
                    self.apply_changes(part, std::mem::take(changes))?;
                    let options = LoadOptions::new()
                        .on_partial_load(OnPartialLoad::Error)
                        .verification_mode(VerificationMode::Check);
                    let loaded = AutoCommit::load_with_options(piece, options)
                        .map_err(|e| decode(e.to_string()))?;
                    self.absorb(part, loaded)?;
                }
                CHUNK_TYPE_CHANGE | CHUNK_TYPE_COMPRESSED => {
                    let change = parse_change(piece).map_err(decode)?;
                    changes.push(change);
                }
                other => return Err(decode(format!("unexpected chunk type {other}"))),
            }
        }
        Ok(())
    }

    pub(crate) fn apply_changes(
        &mut self,
        part: &PartId,
        changes: Vec<Change>,
    ) -> Result<(), DocError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.doc.apply_changes(changes).map_err(DocError::automerge(part))
    }

    /// Takes in a whole document loaded from a snapshot: it replaces ours when it already holds
    /// everything we have (the usual case when loading: genesis, then the snapshot), else the
    /// two are merged.
    fn absorb(&mut self, part: &PartId, mut loaded: AutoCommit) -> Result<(), DocError> {
        let ours = self.doc.get_heads();
        let nothing_queued = self.doc.get_missing_deps(&[]).is_empty();
        if nothing_queued && ours.iter().all(|head| loaded.get_change_meta_by_hash(head).is_some())
        {
            loaded.set_actor(self.doc.get_actor().clone());
            self.doc = loaded;
            Ok(())
        } else {
            self.doc.merge(&mut loaded).map(|_| ()).map_err(DocError::automerge(part))
        }
    }

    /// Whether Automerge holds changes of this part whose dependencies have not arrived.
    pub(crate) fn waiting_for_dependencies(&mut self) -> bool {
        !self.doc.get_missing_deps(&[]).is_empty()
    }

    /// The changes made since the last chunk was taken, or `None` when there are none.
    pub(crate) fn take_chunk(&mut self) -> Option<Vec<u8>> {
        let heads = self.doc.get_heads();
        if heads == self.saved_heads {
            return None;
        }
        let bytes = self.doc.save_after(&self.saved_heads);
        self.saved_heads = heads;
        if bytes.is_empty() { None } else { Some(bytes) }
    }

    /// The whole part, compacted; everything up to now counts as handed out.
    pub(crate) fn snapshot(&mut self) -> Vec<u8> {
        let bytes = self.doc.save();
        self.saved_heads = self.doc.get_heads();
        bytes
    }

    /// Whether every change of the part is in a chunk handed out already.
    pub(crate) fn is_saved(&mut self) -> bool {
        self.doc.get_heads() == self.saved_heads
    }

    /// Marks the current state as already persisted (after a load from chunks).
    pub(crate) fn mark_saved(&mut self) {
        self.saved_heads = self.doc.get_heads();
    }
}

/// The root object `key` of a part, which its genesis created. More than one value means the
/// part holds two genesis changes: chunks of another part or session were applied to it.
pub(crate) fn genesis_object(
    doc: &AutoCommit,
    id: &PartId,
    key: &str,
    ty: ObjType,
) -> Result<automerge::ObjId, DocError> {
    let values = doc.get_all(ROOT, key).map_err(DocError::automerge(id))?;
    match values.as_slice() {
        [(automerge::Value::Object(found), obj)] if *found == ty => Ok(obj.clone()),
        [] | [_] => Err(DocError::MalformedPart {
            part: id.clone(),
            reason: format!("no {key} {ty:?} at the root"),
        }),
        _ => Err(DocError::MalformedPart {
            part: id.clone(),
            reason: format!(
                "{} genesis changes: it was given chunks of another part or session",
                values.len()
            ),
        }),
    }
}

/// Reads a string scalar.
pub(crate) fn scalar_str(value: &automerge::Value<'_>) -> Option<String> {
    match value {
        automerge::Value::Scalar(s) => s.as_str().map(str::to_owned),
        automerge::Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey::new("agent:main:main").unwrap()
    }

    #[test]
    fn genesis_is_byte_identical_whoever_creates_it() {
        let part = PartId::Segment { session_id: "s1".into(), index: 3 };
        let mut a = Part::genesis(&key(), &part, &ActorId::from([1u8; 16].as_slice())).unwrap();
        let mut b = Part::genesis(&key(), &part, &ActorId::from([2u8; 16].as_slice())).unwrap();
        assert_eq!(a.take_chunk(), b.take_chunk());
        assert_eq!(a.heads(), b.heads());
    }

    #[test]
    fn genesis_differs_between_parts() {
        let writer = ActorId::from([1u8; 16].as_slice());
        let mut a =
            Part::genesis(&key(), &PartId::Segment { session_id: "s".into(), index: 0 }, &writer)
                .unwrap();
        let mut b =
            Part::genesis(&key(), &PartId::Segment { session_id: "s".into(), index: 1 }, &writer)
                .unwrap();
        assert_ne!(a.heads(), b.heads());
    }

    #[test]
    fn writer_actor_must_be_longer_than_genesis_actor() {
        assert!(matches!(
            writer_actor_id(&[0; GENESIS_ACTOR_BYTES]),
            Err(DocError::ActorLength { len: 4 })
        ));
        assert!(writer_actor_id(&[0; 16]).is_ok());
        assert!(matches!(writer_actor_id(&[0; 33]), Err(DocError::ActorLength { len: 33 })));
    }

    #[test]
    fn a_loaded_part_without_its_genesis_gets_it_and_one_with_a_foreign_genesis_is_exposed() {
        let writer = ActorId::from([1u8; 16].as_slice());
        let mut original = Part::genesis(&key(), &PartId::Manifest, &writer).unwrap();
        original.take_chunk();
        original.doc.put(ROOT, "x", 1).unwrap();
        original.doc.commit();
        let later = original.take_chunk().unwrap();
        let mut loaded = Part::empty(&writer);
        assert!(!loaded.apply(&PartId::Manifest, &later).unwrap(), "waits for genesis");
        loaded.ensure_genesis(&key(), &PartId::Manifest).unwrap();
        assert_eq!(loaded.heads(), original.heads());

        let other = SessionKey::new("agent:main:other").unwrap();
        let mut foreign = Part::genesis(&other, &PartId::Manifest, &writer).unwrap();
        let mut loaded = Part::empty(&writer);
        loaded.apply(&PartId::Manifest, &foreign.take_chunk().unwrap()).unwrap();
        loaded.ensure_genesis(&key(), &PartId::Manifest).unwrap();
        let err = genesis_object(&loaded.doc, &PartId::Manifest, KEY_META, ObjType::Map);
        assert!(err.unwrap_err().to_string().contains("2 genesis changes"));
    }

    #[test]
    fn take_chunk_returns_each_change_once() {
        let writer = ActorId::from([1u8; 16].as_slice());
        let mut part = Part::genesis(&key(), &PartId::Manifest, &writer).unwrap();
        assert!(part.take_chunk().is_some());
        assert!(part.take_chunk().is_none());
        part.doc.put(ROOT, "x", 1).unwrap();
        part.doc.commit();
        let chunk = part.take_chunk().unwrap();
        let mut other = Part::genesis(&key(), &PartId::Manifest, &writer).unwrap();
        assert!(other.apply(&PartId::Manifest, &chunk).unwrap());
        assert_eq!(other.heads(), part.heads());
    }
}
