//! A segment: one part holding a run of messages of one transcript, plus the in-memory index view
//! of its list (one slot per list element, in list order).

use super::error::DocError;
use super::part::{KEY_MESSAGES, Part};
use super::record::{Encoded, Entry, message_from_map};
use crate::message::Message;
use crate::types::PartId;
use automerge::{ObjId, ObjType, ROOT, ReadDoc, Value, hydrate};

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
    /// One slot per list element; `None` for an element that is not a well-formed message.
    pub(crate) slots: Vec<Option<Entry>>,
    /// Sum of the stored bytes of the slots.
    pub(crate) bytes: usize,
}

impl Segment {
    pub(crate) fn new(part: Part, id: &PartId) -> Result<Segment, DocError> {
        let list = match part.doc.get(ROOT, KEY_MESSAGES).map_err(DocError::automerge(id))? {
            Some((Value::Object(ObjType::List), list)) => list,
            _ => {
                return Err(DocError::MalformedPart {
                    part: id.clone(),
                    reason: "no messages list at the root".into(),
                });
            }
        };
        let mut segment = Segment { part, list, slots: Vec::new(), bytes: 0 };
        segment.refresh(id)?;
        Ok(segment)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Re-reads the index view from the document (after remote changes).
    pub(crate) fn refresh(&mut self, id: &PartId) -> Result<Refresh, DocError> {
        let hydrated = self.part.doc.hydrate(&self.list, None).map_err(DocError::automerge(id))?;
        let hydrate::Value::List(list) = hydrated else {
            return Err(DocError::MalformedPart {
                part: id.clone(),
                reason: "messages is not a list".into(),
            });
        };
        let mut slots = Vec::with_capacity(list.len());
        for (pos, element) in list.iter().enumerate() {
            let slot = match &element.value {
                hydrate::Value::Map(map) => Entry::from_map(map),
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
        let refresh = if slots.len() >= self.slots.len() && slots[..self.slots.len()] == self.slots
        {
            Refresh::Appended { from: self.slots.len() }
        } else {
            Refresh::Rewritten
        };
        self.bytes = slots.iter().flatten().map(|e| e.bytes as usize).sum();
        self.slots = slots;
        Ok(refresh)
    }

    /// Appends a message at the end of the list (one Automerge change).
    pub(crate) fn append(&mut self, id: &PartId, encoded: &Encoded<'_>) -> Result<(), DocError> {
        let pos = self.slots.len();
        let list = &self.list;
        self.part
            .transact(|doc| encoded.insert(doc, list, pos).map_err(DocError::automerge(id)))?;
        let entry = encoded.entry();
        self.bytes += entry.bytes as usize;
        self.slots.push(Some(entry));
        Ok(())
    }

    /// Overwrites the message at `pos` in place (one Automerge change).
    pub(crate) fn overwrite(
        &mut self,
        id: &PartId,
        pos: usize,
        encoded: &Encoded<'_>,
    ) -> Result<(), DocError> {
        let obj = self.element(id, pos)?;
        self.part.transact(|doc| encoded.overwrite(doc, &obj).map_err(DocError::automerge(id)))?;
        let entry = encoded.entry();
        if let Some(Some(old)) = self.slots.get(pos) {
            self.bytes -= old.bytes as usize;
        }
        self.bytes += entry.bytes as usize;
        if let Some(slot) = self.slots.get_mut(pos) {
            *slot = Some(entry);
        }
        Ok(())
    }

    fn element(&self, id: &PartId, pos: usize) -> Result<ObjId, DocError> {
        match self.part.doc.get(&self.list, pos).map_err(DocError::automerge(id))? {
            Some((Value::Object(ObjType::Map), obj)) => Ok(obj),
            _ => Err(DocError::MalformedPart {
                part: id.clone(),
                reason: format!("element {pos} of messages is not a map"),
            }),
        }
    }

    /// Reads the whole message at `pos`; `Ok(None)` when the element is malformed (logged).
    pub(crate) fn read(&self, id: &PartId, pos: usize) -> Result<Option<Message>, DocError> {
        let obj = self.element(id, pos)?;
        let hydrated = self.part.doc.hydrate(&obj, None).map_err(DocError::automerge(id))?;
        let hydrate::Value::Map(map) = hydrated else {
            return Ok(None);
        };
        match message_from_map(&map) {
            Ok(message) => Ok(Some(message)),
            Err(reason) => {
                tracing::warn!(part = %id, pos, %reason, "skipping malformed message");
                Ok(None)
            }
        }
    }
}
