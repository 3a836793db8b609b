//! The approval log: requests and decisions as durable records, and the doorbell.
//!
//! Records are appended to one reserved session document ([`APPROVALS_SESSION`]) as system
//! messages whose text is the record's JSON: `req:<id>` for a request, `dec:<id>` for its
//! decision. The mesh replicates that document like any session and any node reads it through
//! its owner, so a request made on node A is visible, and decidable, from node B. Appends of
//! an id already present are no-ops, so the first decision written for a request wins, even
//! when an operator and the timeout race; everyone reads back which one won.
//!
//! The doorbell ([`Notice`], `MeshHandle::broadcast("exec.approval", ..)`) tells every node at
//! once that something changed; it is best effort, the log is the truth.

use crate::config::tools::{ExecAsk, ExecSecurity};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// The reserved session holding the approval log.
pub const APPROVALS_SESSION: &str = "system:exec-approvals";
/// The broadcast topic of approval notices.
pub const NOTICE_TOPIC: &str = "exec.approval";
/// Records read from the log at most (newest first), e.g. to rebuild the allowlist.
pub const RECORDS_READ_MAX: usize = 20_000;
/// Records asked for in the first page of a read that stops at a known id.
pub const FIRST_PAGE_RECORDS: usize = 64;
/// Records per later page.
pub const PAGE_RECORDS: usize = 1_000;
/// Largest command kept in a notice, in bytes (the record in the log has the whole command).
pub const NOTICE_COMMAND_BYTES_MAX: usize = 16 * 1024;

/// An operator's (or the fallback's) answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    #[serde(rename = "allow-once")]
    AllowOnce,
    #[serde(rename = "allow-always")]
    AllowAlways,
    #[serde(rename = "deny")]
    Deny,
}

impl Decision {
    pub fn parse(text: &str) -> Option<Decision> {
        match text.trim().to_ascii_lowercase().as_str() {
            "allow-once" | "allow" | "once" | "approve" | "yes" => Some(Decision::AllowOnce),
            "allow-always" | "always" => Some(Decision::AllowAlways),
            "deny" | "no" | "reject" => Some(Decision::Deny),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::AllowOnce => "allow-once",
            Decision::AllowAlways => "allow-always",
            Decision::Deny => "deny",
        }
    }

    pub fn allows(self) -> bool {
        !matches!(self, Decision::Deny)
    }
}

/// Who or what decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionSource {
    /// An operator (method, CLI or chat command).
    Operator,
    /// Nobody answered in time: `askFallback` applied.
    Timeout,
    /// The turn waiting for it was aborted.
    Cancelled,
}

/// A pending question to operators about one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest {
    pub id: String,
    pub command: String,
    pub cwd: String,
    pub agent_id: String,
    pub session_key: String,
    /// The node the command waits on.
    pub node_id: String,
    /// The binaries the command resolves to (what allow-always adds).
    pub resolved_paths: Vec<String>,
    /// Why the allowlist did not cover it, when it did not.
    pub miss: Option<String>,
    pub security: ExecSecurity,
    pub ask: ExecAsk,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// The decision on one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionRecord {
    pub id: String,
    pub decision: Decision,
    pub source: DecisionSource,
    pub resolved_by: String,
    pub agent_id: String,
    /// Patterns added to the agent's allowlist (allow-always only).
    pub patterns: Vec<String>,
    pub at_ms: i64,
    /// Tells the writer whether the decision read back is its own.
    pub nonce: String,
}

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Record {
    Request(ApprovalRequest),
    Decision(DecisionRecord),
}

impl Record {
    /// The message id the record is stored under.
    pub fn message_id(&self) -> String {
        match self {
            Record::Request(r) => request_message_id(&r.id),
            Record::Decision(d) => decision_message_id(&d.id),
        }
    }
}

pub fn request_message_id(id: &str) -> String {
    format!("req:{id}")
}

pub fn decision_message_id(id: &str) -> String {
    format!("dec:{id}")
}

/// The doorbell: something changed in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Notice {
    Requested { request: ApprovalRequest },
    Resolved { decision: DecisionRecord },
}

impl Notice {
    pub fn id(&self) -> &str {
        match self {
            Notice::Requested { request } => &request.id,
            Notice::Resolved { decision } => &decision.id,
        }
    }

    /// The notice as broadcast bytes (a long command is cut in the notice only).
    pub fn encode(&self) -> Vec<u8> {
        let mut notice = self.clone();
        if let Notice::Requested { request } = &mut notice
            && request.command.len() > NOTICE_COMMAND_BYTES_MAX
        {
            let mut end = NOTICE_COMMAND_BYTES_MAX;
            while !request.command.is_char_boundary(end) {
                end -= 1;
            }
            request.command.truncate(end);
            request.command.push_str(" [...]");
        }
        serde_json::to_vec(&notice).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Notice> {
        serde_json::from_slice(bytes).ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("the approval log is unavailable: {0}")]
    Unavailable(String),
    #[error("the approval log holds something unreadable: {0}")]
    Corrupt(String),
}

/// Where records are kept and how the doorbell rings.
pub trait ApprovalLog: Send + Sync {
    /// Appends a record durably (an id already present is a no-op).
    fn append(&self, record: Record) -> BoxFuture<'_, Result<(), LogError>>;
    /// Records, oldest first, read newest first until the message `stop_at` was seen (or
    /// everything, at most [`RECORDS_READ_MAX`]).
    fn read(&self, stop_at: Option<String>) -> BoxFuture<'_, Result<Vec<Record>, LogError>>;
    /// Rings every node's doorbell (this one's included), best effort.
    fn ring(&self, notice: Notice) -> BoxFuture<'_, ()>;
}

/// Where a [`MemoryLog`] delivers its doorbell.
type Bell = Box<dyn Fn(Notice) + Send + Sync>;

/// An in-memory log for one process (tests, and a node without a mesh). `ring` goes to the
/// given callback.
pub struct MemoryLog {
    records: Mutex<Vec<Record>>,
    bell: Mutex<Option<Bell>>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog { records: Mutex::new(Vec::new()), bell: Mutex::new(None) }
    }
}

impl MemoryLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Where `ring` delivers.
    pub fn on_ring(&self, bell: impl Fn(Notice) + Send + Sync + 'static) {
        *self.bell.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(bell));
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ApprovalLog for MemoryLog {
    fn append(&self, record: Record) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            let id = record.message_id();
            if !records.iter().any(|r| r.message_id() == id) {
                records.push(record);
            }
            Ok(())
        })
    }

    fn read(&self, _stop_at: Option<String>) -> BoxFuture<'_, Result<Vec<Record>, LogError>> {
        Box::pin(async move { Ok(self.records()) })
    }

    fn ring(&self, notice: Notice) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(bell) = self.bell.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                bell(notice);
            }
        })
    }
}
