//! `beamclaw import openclaw` and `beamclaw sessions list|show|export`: the sessions of a data
//! directory, read and written through its store directly, without a node.
//!
//! The store is locked by the node that runs on the data directory (redb allows one process), so
//! these commands answer "stop the node first" while one runs. Conversion to and from OpenClaw's
//! files is in [`crate::transcript`]; this module does the files, the store and the printing.
//!
//! Import writes each session in one commit (chunks and index entry together), so a session is
//! either imported or not; only a session whose messages exceed [`IMPORT_COMMIT_BYTES_MAX`] is
//! committed in several steps, and importing again completes one interrupted half-way.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use beamclaw_crdt::doc::{HISTORY_LIMIT_MAX, META_VALUE_BYTES_MAX, writer_actor};
use beamclaw_crdt::store::STORE_FILE_NAME;
use beamclaw_crdt::{
    AppendOutcome, ContentPart, DocError, FieldPatch, IndexEntry, Message, OwnerRecord, Role,
    SessionDoc, SessionKey, SessionKeyError, Store, StoreError, StoreOptions, Usage, WriteBatch,
    WriteOp,
};
use serde_json::Value;

use crate::transcript::read::{ImportedMessage, json_problem};
use crate::transcript::write::{ExportSession, ExportStats, stop_reason_name};
use crate::transcript::{
    Issue, IssueReason, SESSIONS_FILE_BYTES_MAX, SessionSettings, Severity,
    TRANSCRIPT_FILE_BYTES_MAX, Transcript, parse_transcript, patch_changes, read_session_entry,
    write_transcript,
};

/// The store's directory inside a data directory (as `beamclaw up` opens it).
pub const STORE_DIR_NAME: &str = "store";
/// Sessions `beamclaw sessions list` shows when `--limit` is not given.
pub const LIST_LIMIT_DEFAULT: usize = 50;
/// Messages `beamclaw sessions show` prints when `--limit` is not given.
pub const SHOW_LIMIT_DEFAULT: usize = 20;
/// Characters of one content part `sessions show` prints; the rest is counted, not shown.
pub const SHOW_PART_CHARS_MAX: usize = 2_000;
/// Message bytes (of their transcript lines) after which an import commits what it has and
/// goes on: one store batch holds at most `BATCH_BYTES_MAX` (64 MiB), and Automerge's encoding of
/// a message is close to its JSON size.
pub const IMPORT_COMMIT_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most compactions an import counts for one session (the counter takes one change per count).
pub const IMPORT_COMPACTIONS_MAX: u64 = 1_000;
/// The node name in the writer actor of imports (with a random incarnation per run).
pub const IMPORT_WRITER_NODE: &str = "import";
/// The archive reason recorded when an import replaces a session's current transcript.
pub const ARCHIVE_REASON_IMPORT: &str = "import";
/// The sessions file of an OpenClaw agent.
pub const OPENCLAW_SESSIONS_FILE: &str = "sessions.json";
/// Longest OpenClaw agent id (`[a-z0-9][a-z0-9_-]{0,63}`).
pub const OPENCLAW_AGENT_ID_CHARS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    #[error(
        "the data directory {} is in use by a running node: its store {} is locked by {}; stop \
         the node first (while it runs, use the gateway: `beamclaw status`)",
        data_dir.display(),
        store_file.display(),
        describe_holders(holders)
    )]
    NodeRunning { data_dir: PathBuf, store_file: PathBuf, holders: Vec<StoreHolder> },
    #[error("no sessions in {}: it has no store yet (no node has run there and nothing was imported)", data_dir.display())]
    NoStore { data_dir: PathBuf },
    #[error("no session {key:?} in {}; `beamclaw sessions list` shows the sessions there", data_dir.display())]
    UnknownSession { key: String, data_dir: PathBuf },
    #[error("{key:?} is not a session key: {source}")]
    Key { key: String, source: SessionKeyError },
    #[error("store of {}: {source}", data_dir.display())]
    Store { data_dir: PathBuf, source: StoreError },
    #[error("session {key}: {source}")]
    Doc { key: String, source: DocError },
    #[error("no OpenClaw sessions under {}: expected agents/<agentId>/sessions/{OPENCLAW_SESSIONS_FILE}", state_dir.display())]
    NothingToImport { state_dir: PathBuf },
    #[error(
        "{id:?} is not an OpenClaw agent id: 1 to {OPENCLAW_AGENT_ID_CHARS_MAX} characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
    )]
    AgentId { id: String },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

fn store_error(data_dir: &Path) -> impl Fn(StoreError) -> SessionsError + '_ {
    move |source| match source {
        StoreError::InUse { path } => SessionsError::NodeRunning {
            data_dir: data_dir.to_path_buf(),
            holders: store_holders(&path),
            store_file: path,
        },
        source => SessionsError::Store { data_dir: data_dir.to_path_buf(), source },
    }
}

/// A process that has the store file open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreHolder {
    pub pid: u32,
    /// Its command line, when readable (shortened to [`HOLDER_COMMAND_CHARS_MAX`]).
    pub command: Option<String>,
}

/// Characters of a holder's command line that an error message shows.
pub const HOLDER_COMMAND_CHARS_MAX: usize = 120;

/// Most processes looked at to find who holds the store.
pub const HOLDER_SCAN_PROCESSES_MAX: usize = 65_536;

fn describe_holders(holders: &[StoreHolder]) -> String {
    if holders.is_empty() {
        return "another process".to_owned();
    }
    let each: Vec<String> = holders
        .iter()
        .map(|h| match &h.command {
            Some(command) => format!("process {} ({command})", h.pid),
            None => format!("process {}", h.pid),
        })
        .collect();
    each.join(", ")
}

/// The other processes that have `store_file` open, found through `/proc/<pid>/fd` (Linux; empty
/// elsewhere, and for processes of other users, whose descriptors cannot be read).
pub fn store_holders(store_file: &Path) -> Vec<StoreHolder> {
    let Ok(target) = std::fs::canonicalize(store_file) else { return Vec::new() };
    let Ok(processes) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id();
    let mut holders = Vec::new();
    for process in processes.flatten().take(HOLDER_SCAN_PROCESSES_MAX) {
        let Some(pid) = process.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else { continue };
        let holds =
            fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == target));
        if !holds {
            continue;
        }
        let command = std::fs::read(process.path().join("cmdline")).ok().and_then(|raw| {
            let words: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            let joined = words.join(" ");
            match joined.char_indices().nth(HOLDER_COMMAND_CHARS_MAX) {
                None if joined.is_empty() => None,
                None => Some(joined),
                Some((at, _)) => Some(format!("{}...", &joined[..at])),
            }
        });
        holders.push(StoreHolder { pid, command });
    }
    holders
}

fn doc_error(key: &SessionKey) -> impl Fn(DocError) -> SessionsError + '_ {
    move |source| SessionsError::Doc { key: key.to_string(), source }
}

fn output(what: &str) -> impl Fn(io::Error) -> SessionsError + '_ {
    move |source| SessionsError::Write { path: PathBuf::from(what), source }
}

/// Opens the data directory's store. `create`: make one when there is none (import); otherwise a
/// missing store is [`SessionsError::NoStore`] rather than an empty new one.
fn open_store(data_dir: &Path, create: bool) -> Result<Store, SessionsError> {
    let dir = data_dir.join(STORE_DIR_NAME);
    if !create && !dir.join(STORE_FILE_NAME).is_file() {
        return Err(SessionsError::NoStore { data_dir: data_dir.to_path_buf() });
    }
    Store::open(&dir, &StoreOptions::default()).map_err(store_error(data_dir))
}

/// A writer actor for this process: a random incarnation, so two runs never reuse one.
fn tool_actor() -> [u8; beamclaw_crdt::doc::WRITER_ACTOR_BYTES] {
    let (incarnation, _) = uuid::Uuid::new_v4().as_u64_pair();
    writer_actor(IMPORT_WRITER_NODE, incarnation)
}

fn parse_key(key: &str) -> Result<SessionKey, SessionsError> {
    SessionKey::new(key).map_err(|source| SessionsError::Key { key: key.to_owned(), source })
}

/// Runs `f` with warnings-only logging unless `RUST_LOG` says otherwise: the store and the
/// document log every session opened at info, which would bury what these commands print.
pub fn quiet_logs<R>(f: impl FnOnce() -> R) -> R {
    if std::env::var_os("RUST_LOG").is_some() {
        return f();
    }
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(io::stderr)
        .finish();
    tracing::subscriber::with_default(subscriber, f)
}

fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---- import ------------------------------------------------------------------------------------

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub sessions_new: usize,
    pub sessions_updated: usize,
    pub sessions_unchanged: usize,
    pub messages_added: usize,
    pub messages_present: usize,
    /// Lines, parts and sessions not imported (each reported as `file:line: reason`).
    pub skipped: usize,
    pub notes: usize,
}

/// Prints issues as they are found and counts them.
struct Reporter<'a> {
    err: &'a mut dyn Write,
    skipped: usize,
    notes: usize,
}

impl Reporter<'_> {
    fn issue(&mut self, issue: &Issue) {
        match issue.severity {
            Severity::Skipped => {
                self.skipped += 1;
                let _ = writeln!(self.err, "{issue}");
            }
            Severity::Note => {
                self.notes += 1;
                let _ = writeln!(self.err, "{issue} (note)");
            }
        }
    }
}

fn is_openclaw_agent_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && id.len() <= OPENCLAW_AGENT_ID_CHARS_MAX
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// The agents to import: `(agent id, its sessions directory)`.
fn find_agents(
    state_dir: &Path,
    agent: Option<&str>,
) -> Result<Vec<(String, PathBuf)>, SessionsError> {
    let agents_dir = state_dir.join("agents");
    let nothing = || SessionsError::NothingToImport { state_dir: state_dir.to_path_buf() };
    let sessions_of = |id: &str| agents_dir.join(id).join("sessions");
    if let Some(id) = agent {
        if !is_openclaw_agent_id(id) {
            return Err(SessionsError::AgentId { id: id.to_owned() });
        }
        let dir = sessions_of(id);
        if !dir.join(OPENCLAW_SESSIONS_FILE).is_file() {
            return Err(nothing());
        }
        return Ok(vec![(id.to_owned(), dir)]);
    }
    let entries = std::fs::read_dir(&agents_dir).map_err(|_| nothing())?;
    let mut found = BTreeSet::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else { continue };
        if is_openclaw_agent_id(&name) && sessions_of(&name).join(OPENCLAW_SESSIONS_FILE).is_file()
        {
            found.insert(name);
        }
    }
    if found.is_empty() {
        return Err(nothing());
    }
    Ok(found
        .into_iter()
        .map(|id| {
            let dir = sessions_of(&id);
            (id, dir)
        })
        .collect())
}

/// Reads a whole file of at most `max` bytes.
fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, Issue> {
    let unreadable =
        |e: io::Error| Issue::skipped(path, None, IssueReason::Unreadable(e.to_string()));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    if len > max {
        return Err(Issue::skipped(path, None, IssueReason::FileTooLarge { len, max }));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > max {
        let len = bytes.len() as u64;
        return Err(Issue::skipped(path, None, IssueReason::FileTooLarge { len, max }));
    }
    Ok(bytes)
}

/// The transcript file of a session: `sessionFile` when it exists, else
/// `<sessionId>-topic-<threadId>.jsonl` for a Telegram topic, else `<sessionId>.jsonl`.
fn transcript_path(sessions_dir: &Path, key: &str, settings: &SessionSettings) -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(file) = &settings.session_file {
        candidates.push(sessions_dir.join(file));
    }
    if let Some((_, rest)) = key.rsplit_once(":topic:") {
        let topic = rest.split(':').next().unwrap_or(rest);
        candidates.push(sessions_dir.join(format!("{}-topic-{topic}.jsonl", settings.session_id)));
    }
    let default = sessions_dir.join(format!("{}.jsonl", settings.session_id));
    candidates.into_iter().find(|path| path.is_file()).unwrap_or(default)
}

/// `beamclaw import openclaw <state-dir> [--agent ID]`. Issues go to `err` as they are found;
/// one line per session and the summary to `out`. An `Err` is a failure that stopped the import
/// (no store, a disk error); what was committed before it stays.
pub fn import_openclaw(
    data_dir: &Path,
    state_dir: &Path,
    agent: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<ImportSummary, SessionsError> {
    let agents = find_agents(state_dir, agent)?;
    let store = open_store(data_dir, true)?;
    let actor = tool_actor();
    let mut summary = ImportSummary::default();
    let mut reporter = Reporter { err, skipped: 0, notes: 0 };
    let mut result = Ok(());
    for (agent_id, sessions_dir) in &agents {
        let mut run = AgentImport {
            store: &store,
            data_dir,
            actor: &actor,
            agent_id,
            sessions_dir,
            out: &mut *out,
            reporter: &mut reporter,
            summary: &mut summary,
        };
        if let Err(error) = run.run() {
            result = Err(error);
            break;
        }
    }
    let closed = store.shutdown().map_err(store_error(data_dir));
    result?;
    closed?;
    summary.skipped = reporter.skipped;
    summary.notes = reporter.notes;
    let s = &summary;
    let _ = writeln!(
        out,
        "imported from {}: {} sessions ({} new, {} updated, {} unchanged), {} messages added, {} already present, {} skipped",
        state_dir.display(),
        s.sessions_new + s.sessions_updated + s.sessions_unchanged,
        s.sessions_new,
        s.sessions_updated,
        s.sessions_unchanged,
        s.messages_added,
        s.messages_present,
        s.skipped,
    );
    Ok(summary)
}

/// One agent's sessions.json and transcripts.
struct AgentImport<'a, 'r> {
    store: &'a Store,
    data_dir: &'a Path,
    actor: &'a [u8],
    agent_id: &'a str,
    sessions_dir: &'a Path,
    out: &'a mut dyn Write,
    reporter: &'a mut Reporter<'r>,
    summary: &'a mut ImportSummary,
}

/// How one session came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    New,
    Updated,
    Unchanged,
}

impl AgentImport<'_, '_> {
    fn run(&mut self) -> Result<(), SessionsError> {
        let file = self.sessions_dir.join(OPENCLAW_SESSIONS_FILE);
        let bytes = match read_limited(&file, SESSIONS_FILE_BYTES_MAX) {
            Ok(bytes) => bytes,
            Err(issue) => {
                self.reporter.issue(&issue);
                return Ok(());
            }
        };
        let sessions = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(sessions)) => sessions,
            Ok(_) => {
                let reason = IssueReason::BadEntry("not an object of session entries".into());
                self.reporter.issue(&Issue::skipped(&file, None, reason));
                return Ok(());
            }
            Err(e) => {
                let reason = IssueReason::InvalidJson(json_problem(&e));
                self.reporter.issue(&Issue::skipped(&file, Some(e.line()), reason));
                return Ok(());
            }
        };
        let mut referenced = BTreeSet::new();
        for (key, value) in &sessions {
            let skip = |problem: String| {
                Issue::skipped(&file, None, IssueReason::Session { key: key.clone(), problem })
            };
            let settings = match read_session_entry(&file, key, value) {
                Ok(settings) => settings,
                Err(issue) => {
                    self.reporter.issue(&issue);
                    continue;
                }
            };
            settings.notes.iter().for_each(|note| self.reporter.issue(note));
            let session_key = match SessionKey::new(key.as_str()) {
                Ok(session_key) => session_key,
                Err(e) => {
                    self.reporter.issue(&skip(format!("not a session key BeamClaw accepts: {e}")));
                    continue;
                }
            };
            let id = &settings.session_id;
            if id.contains(['/', '\\']) || id == "." || id == ".." {
                self.reporter.issue(&skip(format!("sessionId {id:?} is not a file name")));
                continue;
            }
            let path = transcript_path(self.sessions_dir, key, &settings);
            referenced.insert(path.clone());
            let transcript = if path.is_file() {
                let parsed = read_limited(&path, TRANSCRIPT_FILE_BYTES_MAX)
                    .and_then(|bytes| parse_transcript(&path, &bytes));
                match parsed {
                    Ok(transcript) => Some(transcript),
                    Err(issue) => {
                        self.reporter.issue(&issue);
                        continue;
                    }
                }
            } else {
                let problem = format!(
                    "no transcript {}; its settings are imported without messages",
                    path.display()
                );
                let reason = IssueReason::Session { key: key.clone(), problem };
                self.reporter.issue(&Issue::note(&file, None, reason));
                None
            };
            if let Some(transcript) = &transcript {
                transcript.issues.iter().for_each(|issue| self.reporter.issue(issue));
                if transcript.header.id != settings.session_id {
                    let reason = IssueReason::HeaderIdMismatch {
                        header: transcript.header.id.clone(),
                        expected: settings.session_id.clone(),
                    };
                    self.reporter.issue(&Issue::note(&path, Some(1), reason));
                }
            }
            let source = transcript.as_ref().map_or(file.as_path(), |_| path.as_path());
            match self.session(&session_key, &settings, transcript.as_ref(), source) {
                Ok((outcome, added, present)) => {
                    match outcome {
                        Outcome::New => self.summary.sessions_new += 1,
                        Outcome::Updated => self.summary.sessions_updated += 1,
                        Outcome::Unchanged => self.summary.sessions_unchanged += 1,
                    }
                    self.summary.messages_added += added;
                    self.summary.messages_present += present;
                    let state = match outcome {
                        Outcome::New => "new",
                        Outcome::Updated => "updated",
                        Outcome::Unchanged => "unchanged",
                    };
                    let _ = writeln!(
                        self.out,
                        "{key}: {state}, {added} messages added, {present} already present"
                    );
                }
                Err(SessionFailure::Skip(problem)) => self.reporter.issue(&skip(problem)),
                Err(SessionFailure::Fatal(error)) => return Err(error),
            }
        }
        self.note_unreferenced(&referenced);
        Ok(())
    }

    /// Transcripts sessions.json does not name (older sessions, forks) are left alone: says so.
    fn note_unreferenced(&mut self, referenced: &BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(self.sessions_dir) else { return };
        let count = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
            .filter(|path| !referenced.contains(path))
            .count();
        if count > 0 {
            let reason = IssueReason::Session {
                key: format!("agent {}", self.agent_id),
                problem: format!(
                    "{count} transcript files that {OPENCLAW_SESSIONS_FILE} does not name were not imported"
                ),
            };
            self.reporter.issue(&Issue::note(self.sessions_dir, None, reason));
        }
    }

    /// Imports one session; returns how it came out and the messages added and already present.
    fn session(
        &mut self,
        key: &SessionKey,
        settings: &SessionSettings,
        transcript: Option<&Transcript>,
        source: &Path,
    ) -> Result<(Outcome, usize, usize), SessionFailure> {
        let data_dir = self.data_dir;
        let store_failure = |e: StoreError| match e {
            // One session that does not load must not stop the others.
            StoreError::Quarantined { .. } | StoreError::Load { .. } => {
                SessionFailure::Skip(e.to_string())
            }
            e => SessionFailure::Fatal(store_error(data_dir)(e)),
        };
        let doc_failure = |e: DocError| SessionFailure::Skip(e.to_string());
        let now_ms = chrono::Utc::now().timestamp_millis();
        let messages: &[ImportedMessage] = transcript.map_or(&[], |t| &t.messages);
        let owner = self.store.index_entry(key).map_err(store_failure)?.and_then(|e| e.owner);
        let existing = self.store.load_session(key, self.actor).map_err(store_failure)?;
        let started_at_ms = settings
            .started_at_ms
            .or(transcript.and_then(|t| t.header.timestamp_ms))
            .or(messages.first().map(|m| m.message.timestamp_ms))
            .or(settings.updated_at_ms)
            .unwrap_or(now_ms);
        let (mut doc, mut outcome) = match existing {
            None => {
                let doc = SessionDoc::create(
                    key.clone(),
                    self.agent_id,
                    &settings.session_id,
                    self.actor,
                    started_at_ms,
                )
                .map_err(doc_failure)?;
                (doc, Outcome::New)
            }
            Some(doc) if doc.session_id() == settings.session_id => (doc, Outcome::Unchanged),
            Some(mut doc) => {
                let archives = doc.archives().map_err(doc_failure)?;
                if archives.iter().any(|a| a.session_id == settings.session_id) {
                    let problem = format!(
                        "transcript {} was imported before and BeamClaw has since moved on to {}; not imported again",
                        settings.session_id,
                        doc.session_id()
                    );
                    self.note(key, problem);
                    return Ok((Outcome::Unchanged, 0, 0));
                }
                let old = doc.session_id().to_owned();
                doc.reset(&settings.session_id, ARCHIVE_REASON_IMPORT, now_ms)
                    .map_err(doc_failure)?;
                self.note(
                    key,
                    format!(
                        "its transcript {old} was archived: OpenClaw's session is now {}",
                        settings.session_id
                    ),
                );
                (doc, Outcome::Updated)
            }
        };
        let meta = doc.meta().map_err(doc_failure)?;
        if meta.agent_id != self.agent_id {
            self.note(
                key,
                format!("belongs to agent {:?} in this data directory; kept", meta.agent_id),
            );
        }
        let mut patch = settings.patch.clone();
        if let Some(transcript) = transcript {
            let fits = |s: &String| s.len() <= META_VALUE_BYTES_MAX;
            if patch.display_name == FieldPatch::Leave
                && let Some(name) = transcript.session_name.clone().filter(fits)
            {
                patch.display_name = FieldPatch::Set(name);
            }
            if patch.thinking_level == FieldPatch::Leave
                && let Some(level) = transcript.thinking_level.clone().filter(fits)
            {
                patch.thinking_level = FieldPatch::Set(level);
            }
        }
        doc.patch_meta(&patch_changes(&patch, &meta)).map_err(doc_failure)?;

        let (mut added, mut present, mut pending_bytes) = (0, 0, 0usize);
        let mut usage = Usage::default();
        let mut committed = false;
        // Messages appended before one that was already present: they belong earlier in the
        // transcript than where the document now has them (at its end).
        let mut first_appended_line: Option<usize> = None;
        let mut out_of_place = 0usize;
        for imported in messages {
            match doc.append(&imported.message) {
                Ok(AppendOutcome::Appended) => {
                    added += 1;
                    first_appended_line.get_or_insert(imported.line);
                    if let Some(u) = imported.message.usage {
                        usage.input = usage.input.saturating_add(u.input);
                        usage.output = usage.output.saturating_add(u.output);
                        usage.cache_read = usage.cache_read.saturating_add(u.cache_read);
                        usage.cache_write = usage.cache_write.saturating_add(u.cache_write);
                    }
                    pending_bytes = pending_bytes.saturating_add(imported.source_bytes);
                    if pending_bytes >= IMPORT_COMMIT_BYTES_MAX {
                        doc.add_usage(&std::mem::take(&mut usage)).map_err(doc_failure)?;
                        committed |= self.commit(&mut doc, key, &owner)?;
                        pending_bytes = 0;
                    }
                }
                Ok(AppendOutcome::Duplicate | AppendOutcome::Replaced) => {
                    present += 1;
                    if first_appended_line.is_some() {
                        out_of_place += 1;
                    }
                }
                Err(e) => {
                    let reason = IssueReason::NotStored(e.to_string());
                    self.reporter.issue(&Issue::skipped(source, Some(imported.line), reason));
                }
            }
        }
        if usage != Usage::default() {
            doc.add_usage(&usage).map_err(doc_failure)?;
        }
        if let Some(line) = first_appended_line.filter(|_| out_of_place > 0) {
            let reason = IssueReason::OutOfPlace { present: out_of_place };
            self.reporter.issue(&Issue::note(source, Some(line), reason));
        }
        let compactions = settings
            .compaction_count
            .unwrap_or(transcript.map_or(0, |t| t.compactions))
            .min(IMPORT_COMPACTIONS_MAX);
        let counted = doc.meta().map_err(doc_failure)?.compaction_count;
        for _ in counted..compactions {
            doc.record_compaction().map_err(doc_failure)?;
        }
        committed |= self.commit(&mut doc, key, &owner)?;
        if outcome == Outcome::Unchanged && committed {
            outcome = Outcome::Updated;
        }
        Ok((outcome, added, present))
    }

    fn note(&mut self, key: &SessionKey, problem: String) {
        let file = self.sessions_dir.join(OPENCLAW_SESSIONS_FILE);
        let reason = IssueReason::Session { key: key.to_string(), problem };
        self.reporter.issue(&Issue::note(&file, None, reason));
    }

    /// Commits the document's new chunks with its index entry; false when there was nothing.
    fn commit(
        &self,
        doc: &mut SessionDoc,
        key: &SessionKey,
        owner: &Option<OwnerRecord>,
    ) -> Result<bool, SessionFailure> {
        let chunks = doc.take_chunks();
        if chunks.is_empty() {
            return Ok(false);
        }
        let mut entry = index_entry_of(doc);
        entry.heads = doc.heads_digest();
        entry.owner = owner.clone();
        let batch = WriteBatch::new(vec![
            WriteOp::AppendChunks { key: key.clone(), chunks },
            WriteOp::PutIndex { key: key.clone(), entry: Box::new(entry) },
        ]);
        self.store
            .commit(batch)
            .map_err(|e| SessionFailure::Fatal(store_error(self.data_dir)(e)))?;
        Ok(true)
    }
}

/// Why one session was not imported.
enum SessionFailure {
    /// Reported, and the import goes on with the next session.
    Skip(String),
    /// Stops the import (the store failed).
    Fatal(SessionsError),
}

/// The index entry of a document, by the rule the mesh uses (`index_entry_of` in
/// `beamclaw_mesh::core::node`, crate-private there): updated at its newest message (or its
/// start), its message count and the metadata listings show. The caller sets heads and owner.
fn index_entry_of(doc: &SessionDoc) -> IndexEntry {
    let meta = doc.meta().unwrap_or_default();
    let updated_at_ms = doc
        .history(1, None)
        .ok()
        .and_then(|m| m.last().map(|m| m.timestamp_ms))
        .unwrap_or(meta.session_started_at_ms)
        .max(meta.created_at_ms);
    IndexEntry {
        session_id: doc.session_id().to_string(),
        agent_id: meta.agent_id,
        updated_at_ms,
        message_count: doc.message_count() as u64,
        owner: None,
        heads: Default::default(),
        label: meta.label,
        display_name: meta.display_name,
        channel: meta.channel,
        model: meta.model_override,
        input_tokens: meta.input_tokens,
        output_tokens: meta.output_tokens,
        total_tokens: meta.total_tokens,
        spawned_by: meta.spawned_by,
        deleted_at_ms: meta.deleted_at.and_then(|t| i64::try_from(t).ok()),
    }
}

// ---- list, show, export ------------------------------------------------------------------------

/// `beamclaw sessions list`: the most recently updated sessions, from the index only.
pub fn list(
    data_dir: &Path,
    limit: usize,
    agent: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), SessionsError> {
    let store = open_store(data_dir, false)?;
    let mut rows = Vec::new();
    let mut more = false;
    let mut cursor = None;
    'pages: loop {
        let page = store
            .list_by_updated(beamclaw_crdt::store::LIST_PAGE_SESSIONS_MAX, cursor.as_ref())
            .map_err(store_error(data_dir))?;
        for listed in page.sessions {
            if listed.entry.deleted_at_ms.is_some()
                || agent.is_some_and(|a| a != listed.entry.agent_id)
            {
                continue;
            }
            if rows.len() == limit {
                more = true;
                break 'pages;
            }
            rows.push(listed);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let w = output("stdout");
    if rows.is_empty() {
        writeln!(out, "no sessions").map_err(&w)?;
        return Ok(());
    }
    let key_width = rows.iter().map(|r| r.key.as_str().chars().count()).max().unwrap_or(3).max(3);
    let id_width =
        rows.iter().map(|r| r.entry.session_id.chars().count()).max().unwrap_or(10).max(10);
    let agent_width =
        rows.iter().map(|r| r.entry.agent_id.chars().count()).max().unwrap_or(5).max(5);
    writeln!(
        out,
        "{:<key_width$}  {:<id_width$}  {:<agent_width$}  {:<20}  {:>8}  LABEL",
        "KEY", "SESSION ID", "AGENT", "UPDATED", "MESSAGES"
    )
    .map_err(&w)?;
    for row in &rows {
        let e = &row.entry;
        writeln!(
            out,
            "{:<key_width$}  {:<id_width$}  {:<agent_width$}  {:<20}  {:>8}  {}",
            row.key.as_str(),
            e.session_id,
            e.agent_id,
            utc(e.updated_at_ms),
            e.message_count,
            e.label.as_deref().or(e.display_name.as_deref()).unwrap_or("-"),
        )
        .map_err(&w)?;
    }
    if more {
        writeln!(out, "(more sessions; raise --limit to see them)").map_err(&w)?;
    }
    Ok(())
}

fn load(store: &Store, data_dir: &Path, key: &SessionKey) -> Result<SessionDoc, SessionsError> {
    store.load_session(key, &tool_actor()).map_err(store_error(data_dir))?.ok_or_else(|| {
        SessionsError::UnknownSession { key: key.to_string(), data_dir: data_dir.to_path_buf() }
    })
}

/// The newest `limit` messages of the current transcript (all when `None`), oldest first, read
/// in pages of [`HISTORY_LIMIT_MAX`].
fn messages(doc: &SessionDoc, limit: Option<usize>) -> Result<Vec<Message>, DocError> {
    let mut pages: Vec<Vec<Message>> = Vec::new();
    let mut count = 0;
    let mut before: Option<String> = None;
    while limit.is_none_or(|limit| count < limit) {
        let page = doc.history(HISTORY_LIMIT_MAX, before.as_deref())?;
        let Some(first) = page.first() else { break };
        before = Some(first.id.clone());
        let full = page.len() == HISTORY_LIMIT_MAX;
        count += page.len();
        pages.push(page.into_iter().map(std::sync::Arc::unwrap_or_clone).collect());
        if !full {
            break;
        }
    }
    let mut all: Vec<Message> = pages.into_iter().rev().flatten().collect();
    if let Some(limit) = limit {
        let excess = all.len().saturating_sub(limit);
        all.drain(..excess);
    }
    Ok(all)
}

fn clip(text: &str) -> String {
    let mut chars = text.char_indices();
    match chars.nth(SHOW_PART_CHARS_MAX) {
        None => text.to_owned(),
        Some((at, _)) => {
            let rest = text[at..].chars().count();
            format!("{}... ({rest} more characters)", &text[..at])
        }
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

fn describe(message: &Message) -> String {
    let mut text = format!("[{}] {}", utc(message.timestamp_ms), message.role.as_str());
    if message.role == Role::Assistant {
        let model = match (&message.provider, &message.model) {
            (Some(p), Some(m)) => format!("{p}/{m}"),
            (None, Some(m)) => m.clone(),
            _ => String::new(),
        };
        let stop = message.stop_reason.map(|s| stop_reason_name(s).to_owned());
        let details: Vec<String> =
            [Some(model).filter(|m| !m.is_empty()), stop].into_iter().flatten().collect();
        if !details.is_empty() {
            let _ = write!(text, " ({})", details.join(", "));
        }
    }
    if message.partial {
        text.push_str(" (partial)");
    }
    text.push_str(&format!("  {}", message.id));
    for part in &message.content {
        let line = match part {
            ContentPart::Text { text } => indent(&clip(text)),
            ContentPart::Thinking { thinking, .. } => {
                indent(&format!("(thinking) {}", clip(thinking)))
            }
            ContentPart::ToolCall { id, name, arguments } => {
                format!("    -> {name} {} [{id}]", clip(&arguments.to_string()))
            }
            ContentPart::ToolResult { tool_call_id, tool_name, content, is_error } => {
                let error = if *is_error { " (error)" } else { "" };
                format!("    <- {tool_name}{error} [{tool_call_id}]\n{}", indent(&clip(content)))
            }
            ContentPart::Image { mime_type, reference } => {
                let reference = if reference.starts_with("data:") {
                    format!("{} bytes inline", reference.len())
                } else {
                    reference.clone()
                };
                format!("    [image {mime_type}: {reference}]")
            }
        };
        text.push('\n');
        text.push_str(&line);
    }
    text
}

/// `beamclaw sessions show <key>`: the metadata and the last messages, readable.
pub fn show(
    data_dir: &Path,
    key: &str,
    limit: usize,
    out: &mut dyn Write,
) -> Result<(), SessionsError> {
    let key = parse_key(key)?;
    let store = open_store(data_dir, false)?;
    let doc = load(&store, data_dir, &key)?;
    let meta = doc.meta().map_err(doc_error(&key))?;
    let shown = messages(&doc, Some(limit)).map_err(doc_error(&key))?;
    let archives = doc.archives().map_err(doc_error(&key))?;
    let mut text = String::new();
    let mut field = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            let _ = writeln!(text, "{name:<13}{value}");
        }
    };
    field("session", Some(key.to_string()));
    field("session id", Some(meta.session_id.clone()));
    field("agent", Some(meta.agent_id.clone()));
    field("created", Some(utc(meta.created_at_ms)));
    field("started", Some(utc(meta.session_started_at_ms)));
    field("messages", Some(doc.message_count().to_string()));
    field("label", meta.label.clone());
    field("display name", meta.display_name.clone());
    let model = match (&meta.provider_override, &meta.model_override) {
        (Some(p), Some(m)) => Some(format!("{p}/{m}")),
        (None, Some(m)) => Some(m.clone()),
        (Some(p), None) => Some(format!("{p}/(default model)")),
        (None, None) => None,
    };
    field("model", model);
    field("thinking", meta.thinking_level.clone());
    field("queue mode", meta.queue_mode.clone());
    let channel = match (&meta.channel, &meta.chat_type) {
        (Some(c), Some(t)) => Some(format!("{c} ({t})")),
        (Some(c), None) => Some(c.clone()),
        (None, Some(t)) => Some(format!("({t})")),
        (None, None) => None,
    };
    field("channel", channel);
    field("spawned by", meta.spawned_by.clone());
    field(
        "tokens",
        Some(format!(
            "input {}, output {}, total {}",
            meta.input_tokens, meta.output_tokens, meta.total_tokens
        )),
    );
    field("compactions", (meta.compaction_count > 0).then(|| meta.compaction_count.to_string()));
    field("deleted", meta.deleted_at.and_then(|t| i64::try_from(t).ok()).map(utc));
    for archive in &archives {
        field(
            "archived",
            Some(format!(
                "{} ({}, {})",
                archive.session_id,
                archive.reason,
                utc(archive.archived_at_ms)
            )),
        );
    }
    let _ = writeln!(text, "\n--- last {} of {} messages ---", shown.len(), doc.message_count());
    for message in &shown {
        let _ = writeln!(text, "{}", describe(message));
    }
    out.write_all(text.as_bytes()).map_err(output("stdout"))
}

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// The pi transcript JSONL that OpenClaw reads.
    Jsonl,
}

/// `beamclaw sessions export <key> --format jsonl [--out FILE]`: the current transcript, to
/// `out_file` (written whole, then renamed into place) or to `stdout`.
pub fn export(
    data_dir: &Path,
    key: &str,
    format: ExportFormat,
    out_file: Option<&Path>,
    stdout: &mut dyn Write,
) -> Result<ExportStats, SessionsError> {
    let ExportFormat::Jsonl = format;
    let key = parse_key(key)?;
    let store = open_store(data_dir, false)?;
    let doc = load(&store, data_dir, &key)?;
    drop(store);
    let meta = doc.meta().map_err(doc_error(&key))?;
    let all = messages(&doc, None).map_err(doc_error(&key))?;
    let session = ExportSession {
        session_id: doc.session_id(),
        started_at_ms: meta.session_started_at_ms,
        messages: &all,
    };
    let Some(path) = out_file else {
        let mut buffered = io::BufWriter::new(stdout);
        let stats = write_transcript(&session, &mut buffered).map_err(output("stdout"))?;
        buffered.flush().map_err(output("stdout"))?;
        return Ok(stats);
    };
    let write_error = |source| SessionsError::Write { path: path.to_path_buf(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> io::Result<ExportStats> {
        let file = std::fs::File::create(&temporary)?;
        let mut buffered = io::BufWriter::new(file);
        let stats = write_transcript(&session, &mut buffered)?;
        buffered.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
        std::fs::rename(&temporary, path)?;
        Ok(stats)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(write_error)
}

// ---- dispatch from the command line -------------------------------------------------------

/// A `beamclaw sessions ...` command.
#[derive(Clone, Debug)]
pub enum SessionsAction {
    List { limit: usize, agent: Option<String> },
    Show { key: String, limit: usize },
    Export { key: String, format: ExportFormat, out: Option<PathBuf> },
}

/// Runs a `beamclaw sessions ...` command on `data_dir`; the error is the message to print.
pub fn sessions_command(data_dir: &Path, action: SessionsAction) -> Result<(), String> {
    quiet_logs(|| {
        let mut stdout = io::stdout();
        match action {
            SessionsAction::List { limit, agent } => {
                list(data_dir, limit, agent.as_deref(), &mut stdout)
            }
            SessionsAction::Show { key, limit } => show(data_dir, &key, limit, &mut stdout),
            SessionsAction::Export { key, format, out } => {
                export(data_dir, &key, format, out.as_deref(), &mut stdout).map(|stats| {
                    if let Some(path) = &out {
                        eprintln!(
                            "exported {key}: {} entries to {}",
                            stats.entries,
                            path.display()
                        );
                    }
                })
            }
        }
    })
    .or_else(|e| match e {
        // The reader went away (`beamclaw sessions list | head`): not a failure.
        SessionsError::Write { source, .. } if source.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        e => Err(e.to_string()),
    })
}

/// Runs `beamclaw import openclaw` on `data_dir`: success only when nothing was skipped.
pub fn import_command(data_dir: &Path, state_dir: &Path, agent: Option<&str>) -> ExitCode {
    let result = quiet_logs(|| {
        import_openclaw(data_dir, state_dir, agent, &mut io::stdout(), &mut io::stderr())
    });
    match result {
        Ok(summary) if summary.skipped == 0 => ExitCode::SUCCESS,
        Ok(summary) => {
            eprintln!(
                "{} lines, parts or sessions were skipped (listed above); everything else was imported",
                summary.skipped
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openclaw_agent_ids_follow_its_rule() {
        assert!(is_openclaw_agent_id("main"));
        assert!(is_openclaw_agent_id("a1_b-c"));
        assert!(!is_openclaw_agent_id(""));
        assert!(!is_openclaw_agent_id("-a"));
        assert!(!is_openclaw_agent_id("Main"));
        assert!(!is_openclaw_agent_id("../x"));
        assert!(!is_openclaw_agent_id(&"a".repeat(65)));
    }

    #[test]
    fn clip_counts_what_it_leaves_out() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(SHOW_PART_CHARS_MAX + 3);
        let clipped = clip(&long);
        assert!(clipped.ends_with("... (3 more characters)"), "{clipped}");
    }

    #[test]
    fn a_topic_session_reads_its_topic_transcript_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SessionSettings { session_id: "s1".into(), ..SessionSettings::default() };
        let key = "agent:main:telegram:group:5:topic:77";
        assert_eq!(transcript_path(dir.path(), key, &settings), dir.path().join("s1.jsonl"));
        std::fs::write(dir.path().join("s1-topic-77.jsonl"), "").unwrap();
        assert_eq!(
            transcript_path(dir.path(), key, &settings),
            dir.path().join("s1-topic-77.jsonl")
        );
        let settings = SessionSettings { session_file: Some("custom.jsonl".into()), ..settings };
        std::fs::write(dir.path().join("custom.jsonl"), "").unwrap();
        assert_eq!(transcript_path(dir.path(), key, &settings), dir.path().join("custom.jsonl"));
    }
}
