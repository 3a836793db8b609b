//! The in-memory index of one transcript (the messages of one session id, across its segments):
//! which stored element shows each message id, idempotency key -> message id, and which user
//! messages have been answered. It is derived from the segments' slots, never stored.
//!
//! Idempotency keys are taken from every stored element, shown or not: a hidden duplicate has the
//! same id as the shown one, so its key still names the right message. When two different ids
//! carry the same key (two replicas accepted the same client request), the first in reading order
//! wins.
//!
//! Dedup rule: when the same id is stored more than once (two replicas appended it concurrently),
//! the element shown is the first non-partial one in reading order (segment index, list order),
//! or the first one when all are partial. Every replica applies the same rule to the same merged
//! lists, so every replica shows the same element, and no id is shown twice.

use super::error::DocError;
use super::record::Entry;
use super::segment::Segment;
use crate::message::{Message, Role};
use crate::types::PartId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Most history slots reserved up front, however large the requested limit.
const HISTORY_PREALLOCATE_MAX: usize = 256;

/// Where a stored element is: (segment index, list position). Orders as reading order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Loc {
    pub(crate) segment: u32,
    pub(crate) pos: u32,
}

#[derive(Clone, Copy, Debug)]
struct Shown {
    loc: Loc,
    partial: bool,
}

impl Shown {
    /// Whether an element with `partial` at `loc` is preferred over this one.
    fn is_beaten_by(&self, partial: bool, loc: Loc) -> bool {
        (partial, loc) < (self.partial, self.loc)
    }
}

/// The segments of one transcript, by segment index.
pub(crate) type Segments = BTreeMap<u32, Segment>;

pub(crate) fn part_id(session_id: &str, index: u32) -> PartId {
    PartId::Segment { session_id: session_id.to_owned(), index }
}

fn slot_at(segments: &Segments, loc: Loc) -> Option<&Entry> {
    segments.get(&loc.segment)?.slots.get(loc.pos as usize)?.as_ref()
}

fn locs(segments: &Segments) -> impl DoubleEndedIterator<Item = (Loc, &Entry)> {
    segments.iter().flat_map(|(&segment, seg)| {
        seg.slots.iter().enumerate().filter_map(move |(pos, slot)| {
            let pos = u32::try_from(pos).ok()?;
            slot.as_ref().map(|entry| (Loc { segment, pos }, entry))
        })
    })
}

#[derive(Debug, Default)]
pub(crate) struct Transcript {
    shown: HashMap<Box<str>, Shown>,
    by_idempotency_key: HashMap<Box<str>, Loc>,
    answered: HashSet<Box<str>>,
}

impl Transcript {
    /// Builds the index from the segments' slots (no document reads).
    pub(crate) fn build(segments: &Segments) -> Transcript {
        let mut index = Transcript::default();
        for (loc, entry) in locs(segments) {
            match index.shown.get_mut(&entry.id) {
                None => {
                    index.shown.insert(entry.id.clone(), Shown { loc, partial: entry.partial });
                }
                Some(shown) => {
                    if shown.is_beaten_by(entry.partial, loc) {
                        *shown = Shown { loc, partial: entry.partial };
                    }
                }
            }
        }
        for (loc, entry) in locs(segments) {
            if let Some(key) = &entry.idempotency_key {
                index.by_idempotency_key.entry(key.clone()).or_insert(loc);
            }
            if index.is_shown(entry, loc) {
                index.contribute(entry);
            }
        }
        index
    }

    fn is_shown(&self, entry: &Entry, loc: Loc) -> bool {
        self.shown.get(&entry.id).is_some_and(|shown| shown.loc == loc)
    }

    /// Adds what a shown element says: for a final assistant message, the user messages it
    /// answers.
    fn contribute(&mut self, entry: &Entry) {
        if entry.role == Role::Assistant && !entry.partial {
            self.answered.extend(entry.reply_to.iter().cloned());
        }
    }

    /// Accounts for an element stored at `loc`, which is after every other element of its segment
    /// while no other slot moved. Returns false when the index must be rebuilt instead (the new
    /// element displaces one that was shown, or precedes the holder of its idempotency key).
    #[must_use]
    pub(crate) fn add(&mut self, entry: &Entry, loc: Loc) -> bool {
        if let Some(key) = &entry.idempotency_key {
            match self.by_idempotency_key.get(key) {
                Some(held) if *held > loc => return false,
                Some(_) => {}
                None => {
                    self.by_idempotency_key.insert(key.clone(), loc);
                }
            }
        }
        if let Some(shown) = self.shown.get(&entry.id) {
            return !shown.is_beaten_by(entry.partial, loc);
        }
        self.shown.insert(entry.id.clone(), Shown { loc, partial: entry.partial });
        self.contribute(entry);
        true
    }

    /// Accounts for the shown element at `loc` overwritten in place from `old` to `new`. Returns
    /// false when the index must be rebuilt instead.
    #[must_use]
    pub(crate) fn replaced(&mut self, loc: Loc, old: &Entry, new: &Entry) -> bool {
        let Some(shown) = self.shown.get_mut(&new.id) else {
            return false;
        };
        if shown.loc != loc
            || old.id != new.id
            || old.role != new.role
            || old.idempotency_key != new.idempotency_key
        {
            return false;
        }
        match (old.partial, new.partial) {
            // Still a checkpoint: nothing the index keeps has changed.
            (true, true) => true,
            // A final message replaces its checkpoint: every other copy is partial (or this one
            // would not have been shown), so it stays shown.
            (true, false) => {
                shown.partial = false;
                self.contribute(new);
                true
            }
            (false, false) => {
                let keeps_answers = old.reply_to.iter().all(|id| new.reply_to.contains(id));
                if keeps_answers {
                    self.contribute(new);
                }
                keeps_answers
            }
            // A final message turned back into a checkpoint may hand the place to another copy.
            (false, true) => false,
        }
    }

    pub(crate) fn message_count(&self) -> usize {
        self.shown.len()
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.shown.contains_key(id)
    }

    /// Where the element shown for `id` is.
    pub(crate) fn locate(&self, id: &str) -> Option<Loc> {
        self.shown.get(id).map(|shown| shown.loc)
    }

    pub(crate) fn find_by_idempotency_key<'s>(
        &self,
        segments: &'s Segments,
        key: &str,
    ) -> Option<&'s str> {
        let loc = *self.by_idempotency_key.get(key)?;
        slot_at(segments, loc).map(|entry| &*entry.id)
    }

    pub(crate) fn read(
        segments: &Segments,
        session_id: &str,
        loc: Loc,
    ) -> Result<Option<Arc<Message>>, DocError> {
        match segments.get(&loc.segment) {
            Some(segment) => segment.read(&part_id(session_id, loc.segment), loc.pos as usize),
            None => Ok(None),
        }
    }

    /// User messages that no final assistant message lists in `reply_to`, in reading order.
    pub(crate) fn unanswered_user_messages(
        &self,
        segments: &Segments,
        session_id: &str,
    ) -> Result<Vec<Message>, DocError> {
        let mut out = Vec::new();
        for (loc, entry) in locs(segments) {
            if entry.role == Role::User
                && self.is_shown(entry, loc)
                && !self.answered.contains(&entry.id)
                && let Some(message) = Self::read(segments, session_id, loc)?
            {
                out.push(Arc::unwrap_or_clone(message));
            }
        }
        Ok(out)
    }

    /// Up to `limit` shown messages strictly before the element shown for `before` (or the newest
    /// when `None`), oldest first.
    pub(crate) fn history(
        &self,
        segments: &Segments,
        session_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<Arc<Message>>, DocError> {
        let end = match before {
            None => None,
            Some(id) => Some(self.locate(id).ok_or_else(|| DocError::UnknownMessage {
                id: id.to_owned(),
                session_id: session_id.to_owned(),
            })?),
        };
        let mut picked = Vec::with_capacity(limit.min(HISTORY_PREALLOCATE_MAX));
        let last_segment = end.map_or(u32::MAX, |end| end.segment);
        'segments: for (&segment, seg) in segments.range(..=last_segment).rev() {
            let stop = match end {
                Some(end) if end.segment == segment => end.pos as usize,
                _ => seg.slots.len(),
            };
            for pos in (0..stop.min(seg.slots.len())).rev() {
                if picked.len() == limit {
                    break 'segments;
                }
                let Some(entry) = &seg.slots[pos] else { continue };
                let Ok(pos) = u32::try_from(pos) else { continue };
                let loc = Loc { segment, pos };
                if self.is_shown(entry, loc) {
                    picked.push(loc);
                }
            }
        }
        let mut out = Vec::with_capacity(picked.len());
        for loc in picked.into_iter().rev() {
            if let Some(message) = Self::read(segments, session_id, loc)? {
                out.push(message);
            }
        }
        Ok(out)
    }

    /// Where the newest shown message is (the one `history(.., 1, None)` returns).
    pub(crate) fn last_shown(&self, segments: &Segments) -> Option<Loc> {
        for (&segment, seg) in segments.iter().rev() {
            for (pos, slot) in seg.slots.iter().enumerate().rev() {
                let Some(entry) = slot else { continue };
                let Ok(pos) = u32::try_from(pos) else { continue };
                let loc = Loc { segment, pos };
                if self.is_shown(entry, loc) {
                    return Some(loc);
                }
            }
        }
        None
    }

    /// Every shown message in reading order (fork copies them).
    pub(crate) fn shown_locs<'s>(
        &'s self,
        segments: &'s Segments,
    ) -> impl Iterator<Item = (Loc, &'s Entry)> + 's {
        locs(segments).filter(|(loc, entry)| self.is_shown(entry, *loc))
    }
}
