//! A small deterministic harness for core tests: N nodes, an in-memory disk per node, a network
//! with fixed latency and optional partitions, and a scripted runtime that answers every turn.
//! The full simulator (simulations/) adds faults, invariants and many seeds; this is for quick,
//! readable scenario tests of single behaviours.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::rc::Rc;

use beamclaw_crdt::doc::SessionDoc;
use beamclaw_crdt::store::{WriteBatch, WriteOp};
use beamclaw_crdt::{Chunk, IndexEntry, Message, Role, SessionKey, StopReason, Usage};
use beamclaw_mesh::core::storage::{Disk, DiskError};
use beamclaw_mesh::core::{
    Command, Effect, Event, Input, Millis, Node, NodeConfig, NodeId, RequestBody, RequestError,
    Response, RunRef, Timer, TurnInput, generation_for_start,
};

pub const LATENCY_MS: u64 = 1;
pub const FSYNC_MS: u64 = 1;
pub const TURN_MS: u64 = 20;

#[derive(Default)]
pub struct DiskState {
    pub chunks: BTreeMap<SessionKey, Vec<Chunk>>,
    pub index: BTreeMap<SessionKey, IndexEntry>,
    pub sync: BTreeMap<(String, SessionKey), Vec<u8>>,
    pub starts: u64,
}

#[derive(Clone, Default)]
pub struct MemDisk(pub Rc<RefCell<DiskState>>);

impl Disk for MemDisk {
    fn load_session(
        &self,
        key: &SessionKey,
        actor: &[u8],
    ) -> Result<Option<SessionDoc>, DiskError> {
        let state = self.0.borrow();
        match state.chunks.get(key) {
            None => Ok(None),
            Some(chunks) => SessionDoc::load(key, actor, chunks.clone())
                .map(Some)
                .map_err(|e| DiskError::Io(e.to_string())),
        }
    }

    fn index_page(
        &self,
        after: Option<&SessionKey>,
        limit: usize,
    ) -> Result<Vec<(SessionKey, IndexEntry)>, DiskError> {
        let state = self.0.borrow();
        Ok(state
            .index
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| *k > a))
            .take(limit)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect())
    }

    fn sync_state(&self, peer: &NodeId, key: &SessionKey) -> Result<Option<Vec<u8>>, DiskError> {
        Ok(self.0.borrow().sync.get(&(hex::encode(peer.0), key.clone())).cloned())
    }
}

impl MemDisk {
    fn apply(&self, batch: WriteBatch) {
        let mut s = self.0.borrow_mut();
        for op in batch.ops {
            match op {
                WriteOp::AppendChunks { key, chunks } => {
                    s.chunks.entry(key).or_default().extend(chunks)
                }
                WriteOp::PutIndex { key, entry } => {
                    s.index.insert(key, *entry);
                }
                WriteOp::PutSyncState { peer, key, bytes } => {
                    s.sync.insert((peer, key), bytes);
                }
                WriteOp::DeleteSession { key } => {
                    s.chunks.remove(&key);
                    s.index.remove(&key);
                }
                WriteOp::PutNodeMeta { .. } => {}
            }
        }
    }
}

enum Ev {
    Deliver(usize, u64, Input),
    Persisted(usize, u64, u64),
    TurnDone(usize, u64, RunRef, Box<Message>),
}

pub struct Harness {
    pub now: Millis,
    pub nodes: Vec<Option<Node<MemDisk>>>,
    pub disks: Vec<MemDisk>,
    pub ids: Vec<NodeId>,
    instance: Vec<u64>,
    queue: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    events: BTreeMap<u64, Ev>,
    seq: u64,
    pending_writes: Vec<Vec<(u64, WriteBatch)>>,
    /// Pairs (from, to) that cannot talk.
    pub cut: BTreeSet<(usize, usize)>,
    pub delivered: Vec<(usize, Event)>,
    pub started: Vec<(usize, RunRef, Message)>,
    pub side_effects: Vec<(usize, RunRef)>,
    next_req: u64,
    /// Whether the scripted runtime answers turns.
    pub answer_turns: bool,
}

pub fn addr(i: usize) -> SocketAddr {
    format!("10.0.0.{}:7000", i + 1).parse().unwrap()
}

pub fn node_id(i: usize) -> NodeId {
    let secret = [i as u8 + 1; 32];
    let mut s = secret;
    let sk = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut s).unwrap();
    let kp = libp2p_identity::ed25519::Keypair::from(sk);
    NodeId(kp.public().to_bytes())
}

pub fn key(s: &str) -> SessionKey {
    SessionKey::new(format!("agent:main:{s}")).unwrap()
}

impl Harness {
    /// `n` nodes; node 0 starts alone, the others join through it.
    pub fn new(n: usize) -> Harness {
        let mut h = Harness {
            now: 0,
            nodes: (0..n).map(|_| None).collect(),
            disks: (0..n).map(|_| MemDisk::default()).collect(),
            ids: (0..n).map(node_id).collect(),
            instance: vec![0; n],
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            pending_writes: (0..n).map(|_| Vec::new()).collect(),
            cut: BTreeSet::new(),
            delivered: Vec::new(),
            started: Vec::new(),
            side_effects: Vec::new(),
            next_req: 1,
            answer_turns: true,
        };
        for i in 0..n {
            h.start(i);
        }
        h
    }

    pub fn start(&mut self, i: usize) {
        let starts = {
            let mut d = self.disks[i].0.borrow_mut();
            d.starts += 1;
            d.starts
        };
        self.instance[i] += 1;
        let mut cfg =
            NodeConfig::new(self.ids[i], addr(i), generation_for_start(starts), [i as u8; 32]);
        if i > 0 {
            cfg.seeds = vec![addr(0)];
        }
        let mut node = Node::new(cfg, self.disks[i].clone());
        let effects = node.start(self.now).unwrap();
        self.nodes[i] = Some(node);
        self.pending_writes[i].clear();
        self.execute(i, effects);
    }

    /// Kills node `i`: volatile state and unsynced writes are lost.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
        self.pending_writes[i].clear();
        self.instance[i] += 1;
    }

    fn push(&mut self, at: Millis, target: usize, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, target)));
        self.events.insert(self.seq, ev);
    }

    fn index_of(&self, node: &NodeId) -> Option<usize> {
        self.ids.iter().position(|n| n == node)
    }

    fn execute(&mut self, i: usize, effects: Vec<Effect>) {
        let inst = self.instance[i];
        for e in effects {
            match e {
                Effect::SendDatagram { to, bytes, .. } => {
                    let Some(j) = (0..self.nodes.len()).find(|j| addr(*j) == to) else { continue };
                    if self.cut.contains(&(i, j)) {
                        continue;
                    }
                    let input = Input::Datagram { from: addr(i), bytes };
                    let inst_j = self.instance[j];
                    self.push(self.now + LATENCY_MS, j, Ev::Deliver(j, inst_j, input));
                }
                Effect::SendFrame { to, bytes, .. } => {
                    let Some(j) = self.index_of(&to) else { continue };
                    if self.cut.contains(&(i, j)) {
                        continue;
                    }
                    let input = Input::Frame { from: self.ids[i], bytes };
                    let inst_j = self.instance[j];
                    self.push(self.now + LATENCY_MS, j, Ev::Deliver(j, inst_j, input));
                }
                Effect::SetTimer { at, timer } => {
                    self.push(at.max(self.now), i, Ev::Deliver(i, inst, Input::Timer(timer)));
                }
                Effect::Persist { batch, writes } => {
                    self.pending_writes[i].push((batch, writes));
                    self.push(self.now + FSYNC_MS, i, Ev::Persisted(i, inst, batch));
                }
                Effect::StartTurn { run, input, .. } => {
                    self.started.push((i, run.clone(), (*input).clone()));
                    if self.answer_turns {
                        self.push(self.now + TURN_MS, i, Ev::TurnDone(i, inst, run, input));
                    }
                }
                Effect::DrainTurns { .. } | Effect::AbortTurns { .. } => {}
                Effect::Deliver(ev) => self.delivered.push((i, ev)),
            }
        }
    }

    fn feed(&mut self, i: usize, input: Input) {
        let now = self.now;
        let Some(node) = self.nodes[i].as_mut() else { return };
        let effects = node.handle(now, input);
        self.execute(i, effects);
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Millis) {
        while let Some(Reverse((at, seq, _))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some(ev) = self.events.remove(&seq) else { continue };
            match ev {
                Ev::Deliver(i, inst, input) => {
                    if self.instance[i] == inst {
                        self.feed(i, input);
                    }
                }
                Ev::Persisted(i, inst, batch) => {
                    if self.instance[i] != inst {
                        continue;
                    }
                    // Batches complete in order.
                    let pos = self.pending_writes[i].iter().position(|(b, _)| *b == batch);
                    if let Some(pos) = pos {
                        let done: Vec<_> = self.pending_writes[i].drain(..=pos).collect();
                        for (b, w) in done {
                            self.disks[i].apply(w);
                            self.feed(i, Input::Persisted { batch: b, result: Ok(()) });
                        }
                    }
                }
                Ev::TurnDone(i, inst, run, input) => {
                    if self.instance[i] != inst {
                        continue;
                    }
                    let current = self.nodes[i]
                        .as_ref()
                        .is_some_and(|n| n.check_epoch(&run.session, run.epoch));
                    if !current {
                        continue;
                    }
                    self.side_effects.push((i, run.clone()));
                    let mut reply = Message::text(
                        format!("r:{}", input.id),
                        Role::Assistant,
                        format!("echo {}", input.text_content()),
                        0,
                    );
                    reply.reply_to = vec![input.id.clone()];
                    reply.run_id = Some(run.run_id.clone());
                    reply.stop_reason = Some(StopReason::Stop);
                    let out = TurnInput::Output {
                        run,
                        messages: vec![reply],
                        usage: Usage { input: 1, output: 1, ..Default::default() },
                        done: true,
                        reply: None,
                    };
                    self.feed(i, Input::Turn(out));
                }
            }
        }
        self.now = until;
    }

    pub fn run_for(&mut self, ms: Millis) {
        let until = self.now + ms;
        self.run_until(until);
    }

    /// Sends a client request to node `i`; returns the request id.
    pub fn request(&mut self, i: usize, session: &SessionKey, body: RequestBody) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        self.feed(i, Input::Command(Command::Request { req, session: session.clone(), body }));
        req
    }

    pub fn submit(&mut self, i: usize, session: &SessionKey, text: &str, idem: &str) -> u64 {
        let body = RequestBody::Submit {
            agent_id: "main".into(),
            message: Box::new(Message::user_text("", text, 0)),
            idempotency_key: idem.into(),
        };
        self.request(i, session, body)
    }

    pub fn response(&self, req: u64) -> Option<&Result<Response, RequestError>> {
        self.delivered.iter().find_map(|(_, e)| match e {
            Event::Response { req: r, result } if *r == req => Some(result),
            _ => None,
        })
    }

    pub fn node(&mut self, i: usize) -> &mut Node<MemDisk> {
        self.nodes[i].as_mut().unwrap()
    }

    /// History of `session` as node `i` holds it.
    pub fn history(&mut self, i: usize, session: &SessionKey) -> Vec<std::sync::Arc<Message>> {
        self.node(i).read_doc(session, |d| d.history(1000, None).unwrap()).unwrap_or_default()
    }

    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for x in a {
            for y in b {
                self.cut.insert((*x, *y));
                self.cut.insert((*y, *x));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn drain(&mut self, i: usize, deadline_in: Millis) {
        let deadline = self.now + deadline_in;
        self.feed(i, Input::Command(Command::Drain { deadline }));
    }

    pub fn broadcast(&mut self, i: usize, topic: &str, payload: Vec<u8>) {
        self.feed(i, Input::Command(Command::Broadcast { topic: topic.into(), payload }));
    }

    pub fn drained(&self, i: usize) -> bool {
        self.delivered.iter().any(|(n, e)| *n == i && matches!(e, Event::Drained { .. }))
    }

    pub fn unused_timer() -> Timer {
        Timer::AntiEntropy
    }
}
