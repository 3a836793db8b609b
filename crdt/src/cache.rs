//! The hydrated-session cache: which sessions are in memory as documents, under a byte budget.
//!
//! Idle sessions live only as bytes in the store; a session is hydrated (loaded into a document)
//! when it is needed and hibernated (dropped from memory) when the cache is over its budget,
//! least recently used first. A session with a running turn (pinned) or with changes not yet
//! durable (dirty) is never hibernated: it is held outside the LRU until released.
//!
//! Owned by the mesh core, which is single-threaded and sans-IO: no locks and no I/O here;
//! hydration calls the loader the caller passes.

use std::collections::HashMap;

use lru::LruCache;

use crate::types::SessionKey;

/// Default memory budget for hydrated documents, in bytes.
pub const HYDRATED_BYTES_BUDGET: usize = 256 * 1024 * 1024;

/// What the cache needs to know about a document: roughly how much memory it holds.
pub trait HydratedDoc {
    fn approx_bytes(&self) -> usize;
}

impl HydratedDoc for crate::doc::SessionDoc {
    fn approx_bytes(&self) -> usize {
        crate::doc::SessionDoc::approx_bytes(self)
    }
}

/// Counters of a cache, for metrics and the status page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Sessions in memory, held or idle.
    pub hydrated: usize,
    /// Sum of their `approx_bytes()`, as last measured.
    pub hydrated_bytes: usize,
    /// Sessions pinned or dirty, which are never hibernated.
    pub held: usize,
    pub budget_bytes: usize,
    /// Sessions hydrated by a loader since the cache was made.
    pub hydrations: u64,
    /// Sessions dropped from memory to stay under the budget.
    pub hibernations: u64,
}

struct Slot<D> {
    doc: D,
    bytes: usize,
    pins: u32,
    dirty: bool,
}

impl<D> Slot<D> {
    fn is_held(&self) -> bool {
        self.pins > 0 || self.dirty
    }
}

/// Hydrated sessions under an LRU byte budget.
pub struct SessionCache<D> {
    /// Neither pinned nor dirty: hibernated least recently used first.
    idle: LruCache<SessionKey, Slot<D>>,
    /// Pinned or dirty: never hibernated.
    held: HashMap<SessionKey, Slot<D>>,
    bytes: usize,
    budget_bytes: usize,
    hydrations: u64,
    hibernations: u64,
}

impl<D: HydratedDoc> SessionCache<D> {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            idle: LruCache::unbounded(),
            held: HashMap::new(),
            bytes: 0,
            budget_bytes,
            hydrations: 0,
            hibernations: 0,
        }
    }

    /// The hydrated document, marking it most recently used.
    pub fn get(&mut self, key: &SessionKey) -> Option<&D> {
        if let Some(slot) = self.held.get(key) {
            return Some(&slot.doc);
        }
        self.idle.get(key).map(|slot| &slot.doc)
    }

    pub fn contains(&self, key: &SessionKey) -> bool {
        self.held.contains_key(key) || self.idle.contains(key)
    }

    /// The hydrated document, or the one `load` returns (inserted, then others hibernated if the
    /// cache is over budget; never the one just loaded).
    pub fn get_or_hydrate<E>(
        &mut self,
        key: &SessionKey,
        load: impl FnOnce(&SessionKey) -> Result<D, E>,
    ) -> Result<&D, E> {
        if !self.contains(key) {
            let doc = load(key)?;
            self.hydrations += 1;
            tracing::debug!(%key, bytes = doc.approx_bytes(), "session hydrated");
            self.insert(key.clone(), doc);
        }
        // Present: found above or inserted (an insert never hibernates its own key).
        match self.held.get(key) {
            Some(slot) => Ok(&slot.doc),
            None => match self.idle.get(key) {
                Some(slot) => Ok(&slot.doc),
                None => unreachable!("a session inserted under the budget rule stays hydrated"),
            },
        }
    }

    /// Puts a document in the cache (a new session, or a fresh load), keeping the pins and dirty
    /// mark of a document it replaces.
    pub fn insert(&mut self, key: SessionKey, doc: D) {
        let bytes = doc.approx_bytes();
        if let Some(slot) = self.held.get_mut(&key) {
            self.bytes = self.bytes - slot.bytes + bytes;
            slot.doc = doc;
            slot.bytes = bytes;
        } else {
            let replaced = self.idle.put(key.clone(), Slot { doc, bytes, pins: 0, dirty: false });
            self.bytes = self.bytes + bytes - replaced.map_or(0, |slot| slot.bytes);
        }
        self.enforce_budget(Some(&key));
    }

    /// Runs `change` on the hydrated document and re-measures it. `None` when not hydrated.
    pub fn update<R>(&mut self, key: &SessionKey, change: impl FnOnce(&mut D) -> R) -> Option<R> {
        let slot = match self.held.get_mut(key) {
            Some(slot) => slot,
            None => self.idle.get_mut(key)?,
        };
        let result = change(&mut slot.doc);
        let bytes = slot.doc.approx_bytes();
        self.bytes = self.bytes - slot.bytes + bytes;
        slot.bytes = bytes;
        self.enforce_budget(Some(key));
        Some(result)
    }

    /// Keeps the session hydrated until as many `unpin`s (a running turn, a handoff in
    /// progress). False when it is not hydrated.
    pub fn pin(&mut self, key: &SessionKey) -> bool {
        self.hold(key, |slot| slot.pins = slot.pins.saturating_add(1))
    }

    pub fn unpin(&mut self, key: &SessionKey) {
        self.release(key, |slot| slot.pins = slot.pins.saturating_sub(1));
    }

    /// Keeps the session hydrated until `mark_clean`: it has changes not yet durable. False when
    /// it is not hydrated.
    pub fn mark_dirty(&mut self, key: &SessionKey) -> bool {
        self.hold(key, |slot| slot.dirty = true)
    }

    /// The session's changes are durable; it may be hibernated again (unless pinned).
    pub fn mark_clean(&mut self, key: &SessionKey) {
        self.release(key, |slot| slot.dirty = false);
    }

    /// Drops the session from memory regardless of pins (deleted, or handed to another node).
    pub fn remove(&mut self, key: &SessionKey) -> Option<D> {
        let slot = self.held.remove(key).or_else(|| self.idle.pop(key))?;
        self.bytes -= slot.bytes;
        Some(slot.doc)
    }

    /// Changes the budget, hibernating idle sessions if now over it.
    pub fn set_budget(&mut self, budget_bytes: usize) {
        self.budget_bytes = budget_bytes;
        self.enforce_budget(None);
    }

    pub fn hydrated_count(&self) -> usize {
        self.held.len() + self.idle.len()
    }

    pub fn hydrated_bytes(&self) -> usize {
        self.bytes
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hydrated: self.hydrated_count(),
            hydrated_bytes: self.bytes,
            held: self.held.len(),
            budget_bytes: self.budget_bytes,
            hydrations: self.hydrations,
            hibernations: self.hibernations,
        }
    }

    fn hold(&mut self, key: &SessionKey, mark: impl FnOnce(&mut Slot<D>)) -> bool {
        if let Some(slot) = self.held.get_mut(key) {
            mark(slot);
            return true;
        }
        let Some(mut slot) = self.idle.pop(key) else { return false };
        mark(&mut slot);
        self.held.insert(key.clone(), slot);
        true
    }

    fn release(&mut self, key: &SessionKey, unmark: impl FnOnce(&mut Slot<D>)) {
        let Some(slot) = self.held.get_mut(key) else { return };
        unmark(slot);
        if slot.is_held() {
            return;
        }
        if let Some(slot) = self.held.remove(key) {
            self.idle.put(key.clone(), slot);
        }
        self.enforce_budget(None);
    }

    /// Hibernates idle sessions, least recently used first, until under budget. `keep` is never
    /// hibernated (the session the caller is about to use). Held sessions can keep the cache over
    /// budget; that is reported, not hidden.
    fn enforce_budget(&mut self, keep: Option<&SessionKey>) {
        while self.bytes > self.budget_bytes {
            let Some((lru_key, _)) = self.idle.peek_lru() else { break };
            if Some(lru_key) == keep {
                break;
            }
            let Some((key, slot)) = self.idle.pop_lru() else { break };
            self.bytes -= slot.bytes;
            self.hibernations += 1;
            tracing::debug!(%key, bytes = slot.bytes, "session hibernated");
        }
        if self.bytes > self.budget_bytes {
            tracing::debug!(
                bytes = self.bytes,
                budget_bytes = self.budget_bytes,
                held = self.held.len(),
                "hydrated sessions over budget: the rest are pinned, dirty or in use"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document that weighs what it says.
    #[derive(Debug, PartialEq)]
    struct Weighed(usize);

    impl HydratedDoc for Weighed {
        fn approx_bytes(&self) -> usize {
            self.0
        }
    }

    fn key(n: usize) -> SessionKey {
        SessionKey::new(format!("agent:main:k{n}")).unwrap()
    }

    fn cache_with(budget: usize, sizes: &[usize]) -> SessionCache<Weighed> {
        let mut cache = SessionCache::new(budget);
        for (n, size) in sizes.iter().enumerate() {
            cache.insert(key(n), Weighed(*size));
        }
        cache
    }

    #[test]
    fn the_least_recently_used_idle_session_is_hibernated_first() {
        let mut cache = cache_with(300, &[100, 100, 100]);
        assert!(cache.get(&key(0)).is_some()); // 1 is now the least recently used
        cache.insert(key(3), Weighed(100));
        assert!(!cache.contains(&key(1)));
        assert!(cache.contains(&key(0)) && cache.contains(&key(2)) && cache.contains(&key(3)));
        assert_eq!(cache.stats().hydrated_bytes, 300);
        assert_eq!(cache.stats().hibernations, 1);
    }

    #[test]
    fn pinned_and_dirty_sessions_are_never_hibernated() {
        let mut cache = cache_with(1000, &[100, 100, 100]);
        assert!(cache.pin(&key(0)));
        assert!(cache.mark_dirty(&key(1)));
        cache.set_budget(50);
        assert_eq!(cache.hydrated_count(), 2, "only the idle session goes");
        assert!(cache.contains(&key(0)) && cache.contains(&key(1)));
        assert_eq!(cache.stats().held, 2);
        assert_eq!(cache.hydrated_bytes(), 200, "over budget, and reported so");

        cache.unpin(&key(0));
        assert!(!cache.contains(&key(0)), "released and over budget: hibernated");
        cache.mark_clean(&key(1));
        assert_eq!(cache.hydrated_count(), 0);
        assert!(!cache.pin(&key(9)), "cannot pin what is not hydrated");
    }

    #[test]
    fn pins_are_counted() {
        let mut cache = cache_with(1000, &[100]);
        cache.pin(&key(0));
        cache.pin(&key(0));
        cache.unpin(&key(0));
        cache.set_budget(0);
        assert!(cache.contains(&key(0)), "still pinned once");
        cache.unpin(&key(0));
        assert!(!cache.contains(&key(0)));
    }

    #[test]
    fn updates_are_remeasured_and_never_hibernate_the_updated_session() {
        let mut cache = cache_with(250, &[100, 100]);
        let grown = cache.update(&key(0), |doc| {
            doc.0 = 240;
            doc.0
        });
        assert_eq!(grown, Some(240));
        assert_eq!(cache.hydrated_bytes(), 240);
        assert!(cache.contains(&key(0)) && !cache.contains(&key(1)));
        assert_eq!(cache.update(&key(1), |_| ()), None);
    }

    #[test]
    fn hydration_calls_the_loader_only_on_a_miss() {
        let mut cache: SessionCache<Weighed> = SessionCache::new(1000);
        let mut loads = 0;
        for _ in 0..3 {
            let doc = cache
                .get_or_hydrate(&key(0), |_| {
                    loads += 1;
                    Ok::<_, String>(Weighed(10))
                })
                .unwrap();
            assert_eq!(doc, &Weighed(10));
        }
        assert_eq!(loads, 1);
        let failed = cache.get_or_hydrate(&key(1), |_| Err("no such session".to_owned()));
        assert_eq!(failed.unwrap_err(), "no such session");
        assert_eq!(cache.stats().hydrations, 1);
        assert_eq!(cache.hydrated_count(), 1);
    }

    #[test]
    fn a_session_larger_than_the_budget_stays_while_in_use() {
        let mut cache: SessionCache<Weighed> = SessionCache::new(50);
        let doc = cache.get_or_hydrate(&key(0), |_| Ok::<_, ()>(Weighed(80))).unwrap();
        assert_eq!(doc.0, 80);
        cache.insert(key(1), Weighed(10));
        assert!(!cache.contains(&key(0)), "the next insert hibernates it");
        assert_eq!(cache.remove(&key(1)), Some(Weighed(10)));
        assert_eq!(cache.hydrated_bytes(), 0);
    }

    #[test]
    fn replacing_a_held_session_keeps_it_held() {
        let mut cache = cache_with(1000, &[100]);
        cache.mark_dirty(&key(0));
        cache.insert(key(0), Weighed(300));
        cache.set_budget(0);
        assert_eq!(cache.get(&key(0)), Some(&Weighed(300)));
        assert_eq!(cache.hydrated_bytes(), 300);
    }
}
