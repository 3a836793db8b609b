//! A segment: one part holding a run of messages of one transcript, plus the in-memory index view
//! of its list (one slot per list element, in list order).
//!
//! Reading an element out of Automerge costs tens of microseconds, so the view is read whole only
//! when a segment is loaded. After that, local writes update it directly, and remote changes are
//! inspected op by op: elements they append are read, elements they overwrite are re-read, and
//! only changes that insert before or delete existing elements make it re-read everything.

use super::error::DocError;
use super::meta::{UsageIncrements, read_counter};
use super::part::{KEY_MESSAGES, KEY_USAGE, Part, USAGE_COUNTER_FIELDS, genesis_object};
use super::record::{Encoded, Entry, KEY_RECORD, message_from_bytes, pick_record, record_of};
use crate::message::Message;
use crate::types::PartId;
use automerge::legacy::{ObjectId, OpId, OpType};
use automerge::{ActorId, Change, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, hydrate};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How the index view of a segment changed after remote changes were applied.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// The old slots are unchanged; slots from this position on are new.
    Appended { from: usize },
    /// Slots were inserted before others, replaced or removed.
    Rewritten,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) part: Part,
    list: ObjId,
    /// The token counters map (see [`super::part::USAGE_COUNTER_FIELDS`]).
    usage: ObjId,
    /// Its values, (input, output, total): read when the segment is read whole or remote changes
    /// touch the counters, added to by local writes (reading counters out of Automerge on every
    /// commit was a tenth of a simulated turn).
    usage_counts: [u64; 3],
    /// One slot per list element; `None` for an element that is not a well-formed message.
    pub(crate) slots: Vec<Option<Entry>>,
    /// The Automerge object of each list element, parallel to `slots`.
    objs: Vec<ObjId>,
    /// Sum of the stored bytes of the slots.
    pub(crate) bytes: usize,
    /// Messages already read out of Automerge, by position: every turn reads its history, and
    /// hydrating a message costs tens of microseconds while cloning it costs well under one.
    /// An entry is dropped whenever its slot changes; see [`Decoded`].
    decoded: std::sync::Mutex<Decoded>,
}

/// The decoded copies of a segment's messages (`None`: not read yet, or changed since).
#[derive(Debug, Default)]
struct Decoded {
    messages: Vec<Option<Arc<Message>>>,
    /// Stored bytes of the messages held (the slots' `bytes`), for the memory estimate.
    bytes: usize,
}

impl Decoded {
    fn forget(&mut self, pos: usize, slot_bytes: usize) {
        if let Some(m) = self.messages.get_mut(pos)
            && m.take().is_some()
        {
            self.bytes -= slot_bytes;
        }
    }

    fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }
}

fn same_object(exid: &ObjId, ctr: u64, actor: &ActorId) -> bool {
    matches!(exid, ObjId::Id(c, a, _) if *c == ctr && a == actor)
}

impl Segment {
    pub(crate) fn new(part: Part, id: &PartId) -> Result<Segment, DocError> {
        let list = genesis_object(&part.doc, id, KEY_MESSAGES, ObjType::List)?;
        let usage = genesis_object(&part.doc, id, KEY_USAGE, ObjType::Map)?;
        let mut segment = Segment {
            part,
            list,
            usage,
            usage_counts: [0; 3],
            slots: Vec::new(),
            objs: Vec::new(),
            bytes: 0,
            decoded: std::sync::Mutex::default(),
        };
        segment.read_all(id)?;
        Ok(segment)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The record of element `obj` (hydrated as `map`); concurrent values of it are resolved by
    /// [`pick_record`], so that a final reply is never hidden by a concurrent checkpoint.
    fn element_record<'m>(
        &self,
        obj: &ObjId,
        map: &'m hydrate::Map,
    ) -> Result<Cow<'m, [u8]>, String> {
        let (bytes, conflict) = record_of(map)?;
        if !conflict {
            return Ok(Cow::Borrowed(bytes));
        }
        let owned = self.all_records(obj).map_err(|e| e.to_string())?;
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        pick_record(&refs).map(|b| Cow::Owned(b.to_vec())).ok_or_else(|| "no record".to_owned())
    }

    /// Every concurrent value of element `obj`'s record that is bytes, in Automerge's order.
    fn all_records(&self, obj: &ObjId) -> Result<Vec<Vec<u8>>, automerge::AutomergeError> {
        let values = self.part.doc.get_all(obj, KEY_RECORD)?;
        Ok(values
            .into_iter()
            .filter_map(|(value, _)| match value {
                automerge::Value::Scalar(s) => match s.into_owned() {
                    ScalarValue::Bytes(bytes) => Some(bytes),
                    _ => None,
                },
                automerge::Value::Object(_) => None,
            })
            .collect())
    }

    /// Reads the element `obj` into its index view; `None` (logged) when it is malformed.
    fn read_entry(&self, id: &PartId, pos: usize, obj: &ObjId) -> Result<Option<Entry>, DocError> {
        let hydrated = self.part.doc.hydrate(obj, None).map_err(DocError::automerge(id))?;
        let entry = match &hydrated {
            hydrate::Value::Map(map) => {
                self.element_record(obj, map).and_then(|record| Entry::from_bytes(&record))
            }
            _ => Err("element is not a map".to_owned()),
        };
        Ok(entry
            .map_err(
                |reason| tracing::warn!(part = %id, pos, %reason, "skipping malformed message"),
            )
            .ok())
    }

    /// Reads the whole index view from the document.
    fn read_all(&mut self, id: &PartId) -> Result<(), DocError> {
        self.decoded_mut().clear();
        self.usage_counts = self.read_usage();
        genesis_object(&self.part.doc, id, KEY_MESSAGES, ObjType::List)?;
        let objs: Vec<ObjId> =
            self.part.doc.list_range(&self.list, ..).map(|item| item.id()).collect();
        let hydrated = self.part.doc.hydrate(&self.list, None).map_err(DocError::automerge(id))?;
        let hydrate::Value::List(list) = hydrated else {
            return Err(DocError::MalformedPart {
                part: id.clone(),
                reason: "messages is not a list".into(),
            });
        };
        let mut slots = Vec::with_capacity(list.len());
        for (pos, element) in list.iter().enumerate() {
            let slot = match (&element.value, objs.get(pos)) {
                (hydrate::Value::Map(map), Some(obj)) => {
                    self.element_record(obj, map).and_then(|record| Entry::from_bytes(&record))
                }
                (hydrate::Value::Map(_), None) => Err("element has no object id".to_owned()),
                _ => Err("element is not a map".to_owned()),
            };
            match slot {
                Ok(entry) => slots.push(Some(entry)),
                Err(reason) => {
                    tracing::warn!(part = %id, pos, %reason, "skipping malformed message");
                    slots.push(None);
                }
            }
        }
        if objs.len() != slots.len() {
            return Err(DocError::MalformedPart {
                part: id.clone(),
                reason: format!("{} list elements but {} values", objs.len(), slots.len()),
            });
        }
        self.bytes = slots.iter().flatten().map(|e| e.bytes as usize).sum();
        self.slots = slots;
        self.objs = objs;
        Ok(())
    }

    /// Brings the index view up to date after remote changes moved the heads from `before`.
    /// `hint` holds changes the caller just handed to Automerge (parsed from a chunk or sync
    /// message); when it covers every new change they are inspected from it, otherwise the new
    /// changes are rebuilt from the op set (which costs far more).
    pub(crate) fn refresh_since(
        &mut self,
        id: &PartId,
        before: &[ChangeHash],
        hint: &[Change],
    ) -> Result<Refresh, DocError> {
        match self.inspect_changes(id, before, hint)? {
            Some(refresh) => {
                #[cfg(debug_assertions)]
                self.assert_view_is_current(id)?;
                Ok(refresh)
            }
            None => {
                tracing::debug!(part = %id, "re-reading the segment after remote changes");
                let old = std::mem::take(&mut self.slots);
                self.read_all(id)?;
                Ok(if self.slots.len() >= old.len() && self.slots[..old.len()] == old[..] {
                    Refresh::Appended { from: old.len() }
                } else {
                    Refresh::Rewritten
                })
            }
        }
    }

    /// The cheap path of `refresh_since`: when the new changes only append elements at the end
    /// and write fields of elements, reads just those. `None` when everything must be re-read.
    fn inspect_changes(
        &mut self,
        id: &PartId,
        before: &[ChangeHash],
        hint: &[Change],
    ) -> Result<Option<Refresh>, DocError> {
        let ObjId::Id(list_ctr, list_actor, _) = &self.list else {
            return Ok(None);
        };
        let ObjId::Id(usage_ctr, usage_actor, _) = &self.usage else {
            return Ok(None);
        };
        // The hashes of the new changes are cheap to list; the changes themselves are not.
        let new: Vec<ChangeHash> =
            self.part.doc.get_changes_meta(before).into_iter().map(|m| m.hash).collect();
        let hinted: HashMap<ChangeHash, &Change> = hint.iter().map(|c| (c.hash(), c)).collect();
        let rebuilt;
        let changes: Vec<&Change> = if new.iter().all(|h| hinted.contains_key(h)) {
            new.iter().filter_map(|h| hinted.get(h).copied()).collect()
        } else {
            rebuilt = self.part.doc.get_changes(before);
            rebuilt.iter().collect()
        };
        let mut inserted: HashSet<(u64, ActorId)> = HashSet::new();
        let mut written: HashSet<(u64, ActorId)> = HashSet::new();
        let mut counted = false;
        for change in changes {
            let change = change.decode();
            for (offset, op) in change.operations.iter().enumerate() {
                let ObjectId::Id(OpId(ctr, actor)) = &op.obj else {
                    return Ok(None); // a root key changed
                };
                if ctr == usage_ctr && actor == usage_actor {
                    counted = true; // the token counters: not part of the view
                    continue;
                }
                if ctr == list_ctr && actor == list_actor {
                    if !op.insert || !matches!(op.action, OpType::Make(ObjType::Map)) {
                        return Ok(None); // a delete or overwrite of a list element
                    }
                    inserted
                        .insert((change.start_op.get() + offset as u64, change.actor_id.clone()));
                } else {
                    written.insert((*ctr, actor.clone()));
                }
            }
        }
        if counted {
            self.usage_counts = self.read_usage();
        }
        let old_len = self.slots.len();
        let new_len = self.part.doc.length(&self.list);
        if new_len != old_len + inserted.len() {
            return Ok(None);
        }
        let mut new_objs = Vec::with_capacity(inserted.len());
        for item in self.part.doc.list_range(&self.list, old_len..) {
            let obj = item.id();
            match &obj {
                ObjId::Id(ctr, actor, _) if inserted.contains(&(*ctr, actor.clone())) => {}
                _ => return Ok(None), // something was inserted before an old element
            }
            new_objs.push(obj);
        }
        let mut rewritten = Vec::new();
        for (ctr, actor) in written.difference(&inserted) {
            match self.objs.iter().rposition(|obj| same_object(obj, *ctr, actor)) {
                Some(pos) => rewritten.push(pos),
                None => return Ok(None),
            }
        }
        for pos in &rewritten {
            let entry = self.read_entry(id, *pos, &self.objs[*pos])?;
            self.set_slot(*pos, entry);
        }
        for (offset, obj) in new_objs.into_iter().enumerate() {
            let entry = self.read_entry(id, old_len + offset, &obj)?;
            self.bytes += entry.as_ref().map_or(0, |e| e.bytes as usize);
            self.slots.push(entry);
            self.objs.push(obj);
        }
        Ok(Some(if rewritten.is_empty() {
            Refresh::Appended { from: old_len }
        } else {
            Refresh::Rewritten
        }))
    }

    /// Debug builds check the cheap path against a full read after every remote change.
    #[cfg(debug_assertions)]
    fn assert_view_is_current(&mut self, id: &PartId) -> Result<(), DocError> {
        let (slots, objs, bytes) = (self.slots.clone(), self.objs.clone(), self.bytes);
        assert_eq!(self.usage_counts, self.read_usage(), "{id}: token counts differ from a read");
        self.read_all(id)?;
        assert_eq!(slots, self.slots, "{id}: incremental view differs from a full read");
        assert_eq!(objs, self.objs, "{id}: incremental objects differ from a full read");
        assert_eq!(bytes, self.bytes, "{id}: incremental bytes differ from a full read");
        Ok(())
    }

    fn decoded_mut(&mut self) -> &mut Decoded {
        self.decoded.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stored bytes of the messages held decoded (they take about that much memory again).
    pub(crate) fn decoded_bytes(&self) -> usize {
        self.decoded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).bytes
    }

    fn set_slot(&mut self, pos: usize, entry: Option<Entry>) {
        let old_bytes =
            self.slots.get(pos).and_then(|s| s.as_ref()).map_or(0, |e| e.bytes as usize);
        self.decoded_mut().forget(pos, old_bytes);
        let Some(slot) = self.slots.get_mut(pos) else {
            return;
        };
        self.bytes -= slot.as_ref().map_or(0, |e| e.bytes as usize);
        self.bytes += entry.as_ref().map_or(0, |e| e.bytes as usize);
        *slot = entry;
    }

    /// Appends a message at the end of the list (one Automerge change).
    /// The turn's `usage`, if any, is added in the same change.
    pub(crate) fn append(
        &mut self,
        id: &PartId,
        encoded: &Encoded<'_>,
        usage: &UsageIncrements,
    ) -> Result<(), DocError> {
        let pos = self.slots.len();
        let (list, counters) = (&self.list, &self.usage);
        let obj = self.part.transact(|doc| {
            let obj = encoded.insert(doc, list, pos).map_err(DocError::automerge(id))?;
            usage.write(doc, counters).map_err(DocError::automerge(id))?;
            Ok(obj)
        })?;
        usage.add_to(&mut self.usage_counts);
        let entry = encoded.entry();
        self.bytes += entry.bytes as usize;
        self.slots.push(Some(entry));
        self.objs.push(obj);
        Ok(())
    }

    /// Overwrites the message at `pos` in place (one Automerge change, with the turn's `usage`).
    pub(crate) fn overwrite(
        &mut self,
        id: &PartId,
        pos: usize,
        encoded: &Encoded<'_>,
        usage: &UsageIncrements,
    ) -> Result<(), DocError> {
        let obj = self.objs.get(pos).cloned().ok_or_else(|| DocError::MalformedPart {
            part: id.clone(),
            reason: format!("no element {pos} in messages"),
        })?;
        let counters = &self.usage;
        self.part.transact(|doc| {
            encoded.overwrite(doc, &obj).map_err(DocError::automerge(id))?;
            usage.write(doc, counters).map_err(DocError::automerge(id))
        })?;
        usage.add_to(&mut self.usage_counts);
        self.set_slot(pos, Some(encoded.entry()));
        Ok(())
    }

    /// Adds a turn's usage on its own (one Automerge change; none when it is empty).
    pub(crate) fn add_usage(
        &mut self,
        id: &PartId,
        usage: &UsageIncrements,
    ) -> Result<(), DocError> {
        if usage.is_empty() {
            return Ok(());
        }
        let counters = &self.usage;
        self.part.transact(|doc| usage.write(doc, counters).map_err(DocError::automerge(id)))?;
        usage.add_to(&mut self.usage_counts);
        Ok(())
    }

    /// The token counters: (input, output, total).
    pub(crate) fn usage(&self) -> [u64; 3] {
        self.usage_counts
    }

    fn read_usage(&self) -> [u64; 3] {
        USAGE_COUNTER_FIELDS.map(|key| read_counter(&self.part.doc, &self.usage, key))
    }

    /// The timestamp of the message at `pos` (from the index view); `None` when the element is
    /// malformed.
    pub(crate) fn read_timestamp(&self, pos: usize) -> Option<i64> {
        self.slots.get(pos)?.as_ref().map(|entry| entry.timestamp_ms)
    }

    /// Reads the whole message at `pos` (shared with the decoded copy); `Ok(None)` when the
    /// element is malformed (logged).
    pub(crate) fn read(&self, id: &PartId, pos: usize) -> Result<Option<Arc<Message>>, DocError> {
        let mut decoded = self.decoded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(Some(message)) = decoded.messages.get(pos) {
            return Ok(Some(Arc::clone(message)));
        }
        let message = self.read_uncached(id, pos)?.map(Arc::new);
        if let (Some(m), Some(Some(entry))) = (&message, self.slots.get(pos)) {
            if decoded.messages.len() <= pos {
                decoded.messages.resize(pos + 1, None);
            }
            decoded.messages[pos] = Some(Arc::clone(m));
            decoded.bytes += entry.bytes as usize;
        }
        Ok(message)
    }

    fn read_uncached(&self, id: &PartId, pos: usize) -> Result<Option<Message>, DocError> {
        let Some(obj) = self.objs.get(pos) else {
            return Ok(None);
        };
        let hydrated = self.part.doc.hydrate(obj, None).map_err(DocError::automerge(id))?;
        let hydrate::Value::Map(map) = hydrated else {
            return Ok(None);
        };
        match self.element_record(obj, &map).and_then(|record| message_from_bytes(&record)) {
            Ok(message) => Ok(Some(message)),
            Err(reason) => {
                tracing::warn!(part = %id, pos, %reason, "skipping malformed message");
                Ok(None)
            }
        }
    }
}
