//! The bounded queue of frames waiting to be written to one client.
//!
//! Producers (request handlers, session feeds, broadcasts) push without waiting; one writer task
//! pops and writes. The queue is bounded in bytes (`maxBufferedBytes`) and in frames: a client
//! that does not read fast enough is closed with 1008 instead of growing server memory. Event
//! frames get their per-connection `seq` here, under the queue lock, so `seq` always increases
//! in the order frames reach the socket.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::protocol::frames::{StateVersion, event_frame};

/// Frames queued towards one client at most, whatever their size.
pub(crate) const OUTBOUND_FRAMES_MAX: usize = 100_000;

/// WebSocket close code for a policy violation (RFC 6455).
pub(crate) const CLOSE_POLICY: u16 = 1008;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Text(String),
    Close { code: u16, reason: String },
}

#[derive(Debug)]
struct State {
    frames: VecDeque<String>,
    bytes: usize,
    next_seq: u64,
    /// Set once the connection is closing; no more frames are accepted.
    close: Option<(u16, String)>,
    close_taken: bool,
}

#[derive(Debug)]
pub(crate) struct Outbound {
    state: Mutex<State>,
    ready: Notify,
    max_bytes: usize,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The connection is closing (or just started closing because of this frame).
    Closed,
    /// This frame pushed the queue past its byte or frame limit: the connection is now closing
    /// with 1008.
    Overflow,
}

impl Outbound {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Outbound {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                close: None,
                close_taken: false,
            }),
            ready: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent at every await-free step; a poisoned lock only means another
        // thread panicked between two of them, and the data is still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a ready-made text frame (responses).
    pub(crate) fn push(&self, text: String) -> Result<(), PushError> {
        let mut state = self.lock();
        self.push_locked(&mut state, text)
    }

    /// Queues an event frame, assigning the next `seq` of this connection.
    pub(crate) fn push_event(
        &self,
        event: &'static str,
        payload_json: &str,
        state_version: Option<StateVersion>,
    ) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.close.is_some() {
            return Err(PushError::Closed);
        }
        let seq = state.next_seq;
        let text = event_frame(event, payload_json, Some(seq), state_version);
        self.push_locked(&mut state, text)?;
        state.next_seq += 1;
        Ok(())
    }

    fn push_locked(&self, state: &mut State, text: String) -> Result<(), PushError> {
        if state.close.is_some() {
            return Err(PushError::Closed);
        }
        if state.bytes + text.len() > self.max_bytes || state.frames.len() >= OUTBOUND_FRAMES_MAX {
            let reason = format!(
                "slow consumer: more than {} bytes or {OUTBOUND_FRAMES_MAX} frames queued",
                self.max_bytes
            );
            // Free the memory now; the client gets the close frame next.
            state.frames.clear();
            state.bytes = 0;
            state.close = Some((CLOSE_POLICY, reason));
            drop(text);
            self.ready.notify_one();
            return Err(PushError::Overflow);
        }
        state.bytes += text.len();
        state.frames.push_back(text);
        self.ready.notify_one();
        Ok(())
    }

    /// Starts closing: frames already queued are still written, then the close frame.
    pub(crate) fn close(&self, code: u16, reason: impl Into<String>) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some((code, reason.into()));
            self.ready.notify_one();
        }
    }

    /// The next frame to write; waits when there is none. After the close frame it returns
    /// `None` forever.
    pub(crate) async fn pop(&self) -> Option<Frame> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if let Some(text) = state.frames.pop_front() {
                    state.bytes -= text.len();
                    return Some(Frame::Text(text));
                }
                if let Some((code, reason)) = state.close.clone() {
                    if state.close_taken {
                        return None;
                    }
                    state.close_taken = true;
                    return Some(Frame::Close { code, reason });
                }
            }
            notified.await;
        }
    }

    /// The next text frame if one is queued now (never the close frame, never waits): the writer
    /// takes what is already queued after [`Self::pop`] and writes it with one flush.
    pub(crate) fn try_pop_text(&self) -> Option<String> {
        let mut state = self.lock();
        let text = state.frames.pop_front()?;
        state.bytes -= text.len();
        Some(text)
    }

    /// Bytes currently queued.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_then_the_close() {
        let out = Outbound::new(1024);
        out.push("a".into()).unwrap();
        out.push_event("tick", "{}", None).unwrap();
        out.close(1000, "bye");
        assert_eq!(out.push("late".into()), Err(PushError::Closed));
        assert_eq!(out.pop().await, Some(Frame::Text("a".into())));
        match out.pop().await {
            Some(Frame::Text(text)) => assert!(text.contains("\"seq\":1")),
            other => panic!("expected the event, got {other:?}"),
        }
        assert_eq!(out.pop().await, Some(Frame::Close { code: 1000, reason: "bye".into() }));
        assert_eq!(out.pop().await, None);
    }

    #[tokio::test]
    async fn try_pop_text_takes_only_queued_text_and_leaves_the_close_to_pop() {
        let out = Outbound::new(1024);
        assert_eq!(out.try_pop_text(), None);
        out.push("a".into()).unwrap();
        out.push("b".into()).unwrap();
        out.close(1000, "bye");
        assert_eq!(out.try_pop_text().as_deref(), Some("a"));
        assert_eq!(out.try_pop_text().as_deref(), Some("b"));
        assert_eq!(out.queued_bytes(), 0);
        assert_eq!(out.try_pop_text(), None);
        assert_eq!(out.pop().await, Some(Frame::Close { code: 1000, reason: "bye".into() }));
    }

    #[tokio::test]
    async fn exceeding_the_byte_limit_drops_the_queue_and_closes_with_1008() {
        let out = Outbound::new(100);
        out.push("x".repeat(60)).unwrap();
        assert_eq!(out.push("y".repeat(60)), Err(PushError::Overflow));
        assert_eq!(out.queued_bytes(), 0);
        match out.pop().await {
            Some(Frame::Close { code, reason }) => {
                assert_eq!(code, 1008);
                assert!(reason.contains("slow consumer"));
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn seq_increases_only_for_delivered_events() {
        let out = Outbound::new(1024);
        out.push_event("a", "{}", None).unwrap();
        out.push_event("b", "{}", None).unwrap();
        let first = out.pop().await;
        let second = out.pop().await;
        assert!(matches!(first, Some(Frame::Text(t)) if t.contains("\"seq\":1")));
        assert!(matches!(second, Some(Frame::Text(t)) if t.contains("\"seq\":2")));
    }
}
