//! File tools confined to the agent workspace: `read`, `write`, `edit`, `apply_patch`.
//!
//! Every path a model names is relative to the workspace. Refused, with a tool error that says
//! why: absolute paths, `~`, any `..` component, and anything that leads outside the workspace
//! through a symlink (a symlinked directory, a symlinked file, a new file under a symlinked
//! directory). Symlinks that stay inside the workspace are followed.
//!
//! How a path is opened (the order matters against races):
//! 1. The parent directory is resolved by canonicalizing its deepest existing ancestor, which
//!    must lie under the canonical workspace; missing directories (writes only) are then made
//!    one at a time with `mkdirat` under the directory descriptor already opened, each opened
//!    with `O_NOFOLLOW`.
//! 2. The parent directory is opened as a descriptor and, on Linux, the descriptor's real path
//!    (`/proc/self/fd/N`) is checked to be under the workspace: a directory swapped for a symlink
//!    after step 1 is caught here.
//! 3. The file itself is opened relative to that descriptor with `openat(.., O_NOFOLLOW)`; a
//!    final symlink is read with `readlinkat`, checked, and resolved again (bounded hops).
//!
//! This confines the file tools, not the agent: `exec` can read anything the node's user can.
//! Deny `group:runtime` (or use `security: "deny"`) when the workspace must be a boundary.

use super::{Tool, ToolContext, ToolOutput};
use futures::future::BoxFuture;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use serde_json::{Value, json};
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

/// Longest path a model may name, in bytes.
pub const PATH_BYTES_MAX: usize = 4096;
/// Symlinks followed while opening one path.
pub const SYMLINK_HOPS_MAX: usize = 16;
/// Largest file `read` opens, in bytes (use `exec` with `head`/`sed` for larger ones).
pub const READ_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Most text one `read` returns, in bytes; the rest is reachable with `offset`.
pub const READ_OUTPUT_BYTES_MAX: usize = 128 * 1024;
/// Lines one `read` returns when no `limit` is given.
pub const READ_LINES_DEFAULT: usize = 2000;
/// Bytes sniffed for NUL to call a file binary.
pub const BINARY_SNIFF_BYTES: usize = 8 * 1024;
/// Largest content `write` writes, in bytes.
pub const WRITE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest file `edit` and `apply_patch` change, in bytes.
pub const EDIT_FILE_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Largest patch `apply_patch` accepts, in bytes.
pub const PATCH_BYTES_MAX: usize = 1024 * 1024;
/// Files one patch may touch.
pub const PATCH_FILES_MAX: usize = 100;

/// Why a file tool refused or failed; the message is what the model sees.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("path {path:?} is refused: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error(
        "path {path:?} leads outside the workspace (through a symlink); file tools only work inside the workspace"
    )]
    Outside { path: String },
    #[error("{path:?} does not exist")]
    NotFound { path: String },
    #[error("{path:?} is a directory, not a file")]
    IsDirectory { path: String },
    #[error("{path:?} is not a regular file")]
    NotRegular { path: String },
    #[error("{path:?}: a parent of it is not a directory")]
    NotADirectory { path: String },
    #[error("{path:?} is a symlink that does not resolve inside the workspace")]
    BadSymlink { path: String },
    #[error("{path:?} passes through more than {SYMLINK_HOPS_MAX} symlinks")]
    TooManySymlinks { path: String },
    #[error("{path:?} is {bytes} bytes; at most {max} are allowed")]
    TooLarge { path: String, bytes: u64, max: u64 },
    #[error("{path:?}: {message}")]
    Io { path: String, message: String },
    #[error("the workspace {path} cannot be used: {message}")]
    Workspace { path: String, message: String },
}

fn io_error(path: &str, e: impl std::fmt::Display) -> FsError {
    FsError::Io { path: path.to_string(), message: e.to_string() }
}

fn errno_error(path: &str, e: Errno) -> FsError {
    match e {
        Errno::ENOENT => FsError::NotFound { path: path.to_string() },
        Errno::ELOOP => FsError::BadSymlink { path: path.to_string() },
        Errno::ENOTDIR => FsError::NotADirectory { path: path.to_string() },
        Errno::EISDIR => FsError::IsDirectory { path: path.to_string() },
        other => io_error(path, other.desc()),
    }
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    Read,
    /// Create or truncate; missing parent directories are made.
    Write,
}

/// The canonical workspace root, and opening paths beneath it.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
}

/// Splits a model-given path into its normal components, refusing what may not be named.
pub fn relative_components(raw: &str) -> Result<Vec<OsString>, FsError> {
    let bad = |reason| Err(FsError::BadPath { path: raw.to_string(), reason });
    if raw.is_empty() {
        return bad("it is empty");
    }
    if raw.len() > PATH_BYTES_MAX {
        return bad("it is longer than 4096 bytes");
    }
    if raw.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if raw.starts_with('~') {
        return bad("~ is not expanded; use a path relative to the workspace");
    }
    let path = Path::new(raw);
    if path.is_absolute() {
        return bad("absolute paths are not allowed; use a path relative to the workspace");
    }
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                return bad("\"..\" is not allowed; use a path inside the workspace");
            }
            Component::RootDir | Component::Prefix(_) => {
                return bad("absolute paths are not allowed; use a path relative to the workspace");
            }
        }
    }
    if out.is_empty() {
        return bad("it names the workspace itself, not a file in it");
    }
    Ok(out)
}

impl Workspace {
    /// The workspace at `path`, made if missing, canonicalized.
    pub fn open(path: &Path) -> Result<Workspace, FsError> {
        let shown = path.display().to_string();
        std::fs::create_dir_all(path)
            .map_err(|e| FsError::Workspace { path: shown.clone(), message: e.to_string() })?;
        let root = std::fs::canonicalize(path)
            .map_err(|e| FsError::Workspace { path: shown, message: e.to_string() })?;
        Ok(Workspace { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn inside(&self, path: &Path) -> bool {
        path.starts_with(&self.root)
    }

    /// Checks that an opened descriptor really is under the workspace (Linux: its
    /// `/proc/self/fd` link; elsewhere the path-based checks stand alone).
    fn verify_fd(&self, fd: &impl std::os::fd::AsRawFd, shown: &str) -> Result<(), FsError> {
        #[cfg(target_os = "linux")]
        {
            let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
            if let Ok(real) = std::fs::read_link(&link)
                && !self.inside(&real)
            {
                return Err(FsError::Outside { path: shown.to_string() });
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (fd, shown);
        Ok(())
    }

    /// Opens the directory `comps` (relative to the root) as a descriptor, making missing
    /// directories when `create`. Returns the descriptor and its canonical path.
    fn open_dir(
        &self,
        comps: &[OsString],
        create: bool,
        shown: &str,
    ) -> Result<(OwnedFd, PathBuf), FsError> {
        let (existing, canonical) = self.existing_ancestor(comps, shown)?;
        if existing < comps.len() && !create {
            return Err(FsError::NotFound { path: shown.to_string() });
        }
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut fd = nix::fcntl::open(&canonical, dir_flags, Mode::empty())
            .map_err(|e| errno_error(shown, e))?;
        self.verify_fd(&fd, shown)?;
        let mut path = canonical;
        for comp in &comps[existing..] {
            match nix::sys::stat::mkdirat(&fd, comp.as_os_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(errno_error(shown, e)),
            }
            // O_NOFOLLOW: a symlink planted where the directory was just made is refused.
            fd = nix::fcntl::openat(&fd, comp.as_os_str(), dir_flags, Mode::empty())
                .map_err(|e| errno_error(shown, e))?;
            path.push(comp);
        }
        Ok((fd, path))
    }

    /// How many leading `comps` exist, and the canonical path of that deepest existing
    /// ancestor, which must be under the root.
    fn existing_ancestor(
        &self,
        comps: &[OsString],
        shown: &str,
    ) -> Result<(usize, PathBuf), FsError> {
        let mut existing = comps.len();
        let canonical = loop {
            let candidate: PathBuf =
                comps[..existing].iter().fold(self.root.clone(), |p, c| p.join(c));
            match std::fs::canonicalize(&candidate) {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && existing > 0 => {
                    existing -= 1;
                }
                Err(e) if e.raw_os_error() == Some(Errno::ENOTDIR as i32) => {
                    return Err(FsError::NotADirectory { path: shown.to_string() });
                }
                Err(e) => return Err(io_error(shown, e)),
            }
        };
        if !self.inside(&canonical) {
            return Err(FsError::Outside { path: shown.to_string() });
        }
        Ok((existing, canonical))
    }

    /// Checks, changing nothing, that `raw` could be written inside the workspace (so a patch
    /// is refused whole before any file changes). The write itself checks again.
    pub fn check_write(&self, raw: &str) -> Result<(), FsError> {
        let comps = relative_components(raw)?;
        let Some((name, parent)) = comps.split_last() else {
            return Err(FsError::BadPath { path: raw.to_string(), reason: "it is empty" });
        };
        let (existing, canonical) = self.existing_ancestor(parent, raw)?;
        if existing < parent.len() {
            return Ok(()); // the file's directory is still to be made, under the root
        }
        let full = canonical.join(name);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(&full) {
                Ok(real) if self.inside(&real) => Ok(()),
                Ok(_) => Err(FsError::Outside { path: raw.to_string() }),
                Err(_) => Err(FsError::BadSymlink { path: raw.to_string() }),
            },
            Ok(m) if m.is_dir() => Err(FsError::IsDirectory { path: raw.to_string() }),
            _ => Ok(()),
        }
    }

    /// The canonical path of the existing directory `raw` (relative to the workspace).
    pub fn dir(&self, raw: &str) -> Result<PathBuf, FsError> {
        let comps = relative_components(raw)?;
        let (_, path) = self.open_dir(&comps, false, raw)?;
        Ok(path)
    }

    /// Opens the file `raw` (relative to the workspace) for reading or writing; returns it with
    /// its canonical path.
    pub fn open_file(&self, raw: &str, mode: OpenMode) -> Result<(File, PathBuf), FsError> {
        let mut comps = relative_components(raw)?;
        for _ in 0..SYMLINK_HOPS_MAX {
            let Some((name, parent)) = comps.split_last() else {
                return Err(FsError::BadPath { path: raw.to_string(), reason: "it is empty" });
            };
            let (dir, dir_path) = self.open_dir(parent, mode == OpenMode::Write, raw)?;
            let stat =
                nix::sys::stat::fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
            match stat {
                Ok(st) => {
                    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
                    if kind == SFlag::S_IFLNK {
                        let target = nix::fcntl::readlinkat(&dir, name.as_os_str())
                            .map_err(|e| errno_error(raw, e))?;
                        let full = dir_path.join(target);
                        let resolved = std::fs::canonicalize(&full)
                            .map_err(|_| FsError::BadSymlink { path: raw.to_string() })?;
                        let Ok(rest) = resolved.strip_prefix(&self.root) else {
                            return Err(FsError::Outside { path: raw.to_string() });
                        };
                        comps = rest.components().map(|c| c.as_os_str().to_os_string()).collect();
                        if comps.is_empty() {
                            return Err(FsError::IsDirectory { path: raw.to_string() });
                        }
                        continue;
                    }
                    if kind == SFlag::S_IFDIR {
                        return Err(FsError::IsDirectory { path: raw.to_string() });
                    }
                    if kind != SFlag::S_IFREG {
                        return Err(FsError::NotRegular { path: raw.to_string() });
                    }
                }
                Err(Errno::ENOENT) if mode == OpenMode::Write => {}
                Err(e) => return Err(errno_error(raw, e)),
            }
            // O_NONBLOCK: a FIFO swapped in after the check cannot hang the tool.
            let base = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
            let flags = match mode {
                OpenMode::Read => base | OFlag::O_RDONLY,
                OpenMode::Write => base | OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
            };
            let fd =
                nix::fcntl::openat(&dir, name.as_os_str(), flags, Mode::from_bits_truncate(0o644))
                    .map_err(|e| errno_error(raw, e))?;
            let file = File::from(fd);
            let meta = file.metadata().map_err(|e| io_error(raw, e))?;
            if !meta.is_file() {
                return Err(FsError::NotRegular { path: raw.to_string() });
            }
            return Ok((file, dir_path.join(name)));
        }
        Err(FsError::TooManySymlinks { path: raw.to_string() })
    }

    /// Removes the file `raw` (never a directory; a symlink itself is removed, not its target).
    pub fn remove_file(&self, raw: &str) -> Result<(), FsError> {
        let comps = relative_components(raw)?;
        let Some((name, parent)) = comps.split_last() else {
            return Err(FsError::BadPath { path: raw.to_string(), reason: "it is empty" });
        };
        let (dir, _) = self.open_dir(parent, false, raw)?;
        let st = nix::sys::stat::fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| errno_error(raw, e))?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR {
            return Err(FsError::IsDirectory { path: raw.to_string() });
        }
        nix::unistd::unlinkat(&dir, name.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(|e| errno_error(raw, e))
    }

    /// Reads a whole text file of at most `max` bytes.
    pub fn read_text(&self, raw: &str, max: u64) -> Result<String, FsError> {
        let (file, _) = self.open_file(raw, OpenMode::Read)?;
        let bytes = file.metadata().map_err(|e| io_error(raw, e))?.len();
        if bytes > max {
            return Err(FsError::TooLarge { path: raw.to_string(), bytes, max });
        }
        let mut data = Vec::with_capacity(bytes as usize);
        file.take(max + 1).read_to_end(&mut data).map_err(|e| io_error(raw, e))?;
        if data.len() as u64 > max {
            return Err(FsError::TooLarge { path: raw.to_string(), bytes: data.len() as u64, max });
        }
        if data.iter().take(BINARY_SNIFF_BYTES).any(|b| *b == 0) {
            return Err(io_error(raw, "is a binary file; only text files can be read"));
        }
        String::from_utf8(data).map_err(|_| io_error(raw, "is not valid UTF-8 text"))
    }

    /// Writes `content` to `raw`, creating parent directories.
    pub fn write_text(&self, raw: &str, content: &str) -> Result<(), FsError> {
        let (mut file, _) = self.open_file(raw, OpenMode::Write)?;
        file.write_all(content.as_bytes()).map_err(|e| io_error(raw, e))?;
        file.flush().map_err(|e| io_error(raw, e))
    }
}

/// Runs blocking file work off the async runtime, with the workspace of the call.
async fn blocking<T: Send + 'static>(
    ctx: &ToolContext,
    work: impl FnOnce(Workspace) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let root = ctx.workspace.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let ws = Workspace::open(&root).map_err(|e| e.to_string())?;
        work(ws)
    })
    .await;
    joined.map_err(|e| format!("the file operation did not complete: {e}"))?
}

fn string_arg(args: &Value, names: &[&str]) -> Result<String, String> {
    names
        .iter()
        .find_map(|n| args.get(*n).and_then(Value::as_str))
        .map(str::to_string)
        .ok_or_else(|| format!("missing string argument {:?}", names[0]))
}

fn opt_usize(args: &Value, name: &str) -> Result<Option<usize>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("argument {name:?} must be a non-negative integer")),
    }
}

fn finish(result: Result<String, String>) -> ToolOutput {
    match result {
        Ok(text) => ToolOutput::ok(text),
        Err(e) => ToolOutput::error(e),
    }
}

/// `read {path, offset?, limit?}`: a text file's lines (1-based `offset`).
pub struct ReadTool;

impl Tool for ReadTool {
    fn name(&self) -> &str {
        "read"
    }
    fn description(&self) -> &str {
        "Read a text file in the workspace. Paths are relative to the workspace. Returns up to 2000 lines (or 128 KiB); use offset (1-based line) and limit to read further."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File path relative to the workspace"},
                "offset": {"type": "integer", "minimum": 1, "description": "First line to return (1-based)"},
                "limit": {"type": "integer", "minimum": 1, "description": "Lines to return"}
            },
            "required": ["path"]
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let result = async {
                let path = string_arg(&args, &["path", "file_path"])?;
                let offset = opt_usize(&args, "offset")?.unwrap_or(1).max(1);
                let limit = opt_usize(&args, "limit")?.unwrap_or(READ_LINES_DEFAULT).max(1);
                let text = blocking(ctx, move |ws| {
                    ws.read_text(&path, READ_FILE_BYTES_MAX).map_err(|e| e.to_string())
                })
                .await?;
                Ok(page_lines(&text, offset, limit))
            }
            .await;
            finish(result)
        })
    }
}

/// Lines `offset..offset+limit` of `text`, capped at [`READ_OUTPUT_BYTES_MAX`], with a note on
/// how to continue.
pub fn page_lines(text: &str, offset: usize, limit: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let total = lines.len();
    if total == 0 {
        return String::new();
    }
    if offset > total {
        return format!("[offset {offset} is past the end: the file has {total} lines]");
    }
    let mut out = String::new();
    let mut last = offset - 1;
    for (i, line) in lines.iter().enumerate().skip(offset - 1).take(limit) {
        if out.len() + line.len() + 1 > READ_OUTPUT_BYTES_MAX {
            break;
        }
        out.push_str(line);
        out.push('\n');
        last = i + 1;
    }
    if last < total {
        if last < offset {
            return format!(
                "[line {offset} alone is longer than {READ_OUTPUT_BYTES_MAX} bytes; use exec to read it]"
            );
        }
        out.push_str(&format!(
            "\n[showing lines {offset}-{last} of {total}; use offset={} to continue]",
            last + 1
        ));
    }
    out
}

/// `write {path, content}`: creates or replaces a file.
pub struct WriteTool;

impl Tool for WriteTool {
    fn name(&self) -> &str {
        "write"
    }
    fn description(&self) -> &str {
        "Create or overwrite a file in the workspace with the given content. Parent directories are created."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File path relative to the workspace"},
                "content": {"type": "string", "description": "The whole new content"}
            },
            "required": ["path", "content"]
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let result = async {
                let path = string_arg(&args, &["path", "file_path"])?;
                let content = string_arg(&args, &["content"])?;
                if content.len() > WRITE_BYTES_MAX {
                    return Err(format!(
                        "content is {} bytes; at most {WRITE_BYTES_MAX} can be written at once",
                        content.len()
                    ));
                }
                let bytes = content.len();
                let shown = path.clone();
                blocking(ctx, move |ws| ws.write_text(&path, &content).map_err(|e| e.to_string()))
                    .await?;
                Ok(format!("wrote {bytes} bytes to {shown}"))
            }
            .await;
            finish(result)
        })
    }
}

/// `edit {path, oldText, newText}`: replaces one exact, unique occurrence.
pub struct EditTool;

impl Tool for EditTool {
    fn name(&self) -> &str {
        "edit"
    }
    fn description(&self) -> &str {
        "Edit a file in the workspace by replacing oldText with newText. oldText must match exactly (including whitespace) and occur exactly once."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File path relative to the workspace"},
                "oldText": {"type": "string", "description": "Exact text to replace (must be unique in the file)"},
                "newText": {"type": "string", "description": "The replacement"}
            },
            "required": ["path", "oldText", "newText"]
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let result = async {
                let path = string_arg(&args, &["path", "file_path"])?;
                let old = string_arg(&args, &["oldText", "old_string"])?;
                let new = string_arg(&args, &["newText", "new_string"])?;
                if old.is_empty() {
                    return Err("oldText is empty; use write to create a file".to_string());
                }
                let shown = path.clone();
                blocking(ctx, move |ws| {
                    let text = ws.read_text(&path, EDIT_FILE_BYTES_MAX).map_err(|e| e.to_string())?;
                    let count = text.matches(old.as_str()).count();
                    match count {
                        0 => Err(format!(
                            "oldText was not found in {path}; it must match exactly, including whitespace and indentation"
                        )),
                        1 => {
                            let changed = text.replacen(old.as_str(), &new, 1);
                            if changed.len() as u64 > EDIT_FILE_BYTES_MAX {
                                return Err(format!(
                                    "the edited file would be {} bytes; at most {EDIT_FILE_BYTES_MAX} are allowed",
                                    changed.len()
                                ));
                            }
                            ws.write_text(&path, &changed).map_err(|e| e.to_string())
                        }
                        n => Err(format!(
                            "oldText occurs {n} times in {path}; add surrounding lines so it matches exactly once"
                        )),
                    }
                })
                .await?;
                Ok(format!("edited {shown}: replaced 1 occurrence"))
            }
            .await;
            finish(result)
        })
    }
}

/// `apply_patch {input}`: OpenAI's patch format (`*** Begin Patch` ... `*** End Patch`) with
/// Add, Delete and Update (optionally `*** Move to:`) sections.
pub struct ApplyPatchTool;

impl Tool for ApplyPatchTool {
    fn name(&self) -> &str {
        "apply_patch"
    }
    fn description(&self) -> &str {
        "Apply a patch to files in the workspace. Format: '*** Begin Patch', then sections '*** Add File: <path>' (lines prefixed '+'), '*** Delete File: <path>', '*** Update File: <path>' (optional '*** Move to: <path>', hunks starting with '@@' whose lines start with ' ', '-' or '+'), then '*** End Patch'."
    }
    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "input": {"type": "string", "description": "The whole patch, from *** Begin Patch to *** End Patch"}
            },
            "required": ["input"]
        })
    }
    fn run<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let result = async {
                let input = string_arg(&args, &["input", "patch"])?;
                if input.len() > PATCH_BYTES_MAX {
                    return Err(format!(
                        "the patch is {} bytes; at most {PATCH_BYTES_MAX} are allowed",
                        input.len()
                    ));
                }
                let patch = parse_patch(&input)?;
                blocking(ctx, move |ws| apply_patch(&ws, &patch)).await
            }
            .await;
            finish(result)
        })
    }
}

/// One file section of a patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchOp {
    Add { path: String, content: String },
    Delete { path: String },
    Update { path: String, move_to: Option<String>, hunks: Vec<Hunk> },
}

/// One `@@` hunk: optional context header, the lines before and after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hunk {
    pub header: Option<String>,
    pub old: Vec<String>,
    pub new: Vec<String>,
    /// `*** End of File`: the old lines end the file.
    pub at_end: bool,
}

/// Parses a patch in OpenAI's apply_patch format.
pub fn parse_patch(input: &str) -> Result<Vec<PatchOp>, String> {
    let lines: Vec<&str> = input.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "*** Begin Patch")
        .ok_or("the patch must start with \"*** Begin Patch\"")?;
    let mut ops = Vec::new();
    let mut i = start + 1;
    let mut ended = false;
    while i < lines.len() {
        let line = lines[i];
        if line.trim() == "*** End Patch" {
            ended = true;
            break;
        }
        if let Some(path) = line.strip_prefix("*** Add File: ") {
            i += 1;
            let mut content = String::new();
            while i < lines.len() && !lines[i].starts_with("*** ") {
                let Some(rest) = lines[i].strip_prefix('+') else {
                    return Err(format!(
                        "line {}: lines of an added file must start with '+'",
                        i + 1
                    ));
                };
                content.push_str(rest);
                content.push('\n');
                i += 1;
            }
            ops.push(PatchOp::Add { path: path.trim().to_string(), content });
        } else if let Some(path) = line.strip_prefix("*** Delete File: ") {
            ops.push(PatchOp::Delete { path: path.trim().to_string() });
            i += 1;
        } else if let Some(path) = line.strip_prefix("*** Update File: ") {
            i += 1;
            let mut move_to = None;
            if let Some(to) = lines.get(i).and_then(|l| l.strip_prefix("*** Move to: ")) {
                move_to = Some(to.trim().to_string());
                i += 1;
            }
            let mut hunks: Vec<Hunk> = Vec::new();
            let mut current: Option<Hunk> = None;
            while i < lines.len() {
                let l = lines[i];
                if l.trim() == "*** End of File" {
                    if let Some(h) = current.as_mut() {
                        h.at_end = true;
                    }
                    i += 1;
                    continue;
                }
                if l.starts_with("*** ") {
                    break;
                }
                if let Some(header) = l.strip_prefix("@@") {
                    if let Some(h) = current.take() {
                        hunks.push(h);
                    }
                    let header = header.trim();
                    current = Some(Hunk {
                        header: (!header.is_empty()).then(|| header.to_string()),
                        ..Hunk::default()
                    });
                    i += 1;
                    continue;
                }
                let h = current.get_or_insert_with(Hunk::default);
                match l.chars().next() {
                    Some('+') => h.new.push(l[1..].to_string()),
                    Some('-') => h.old.push(l[1..].to_string()),
                    Some(' ') => {
                        h.old.push(l[1..].to_string());
                        h.new.push(l[1..].to_string());
                    }
                    None => {
                        // An empty line inside a hunk is an empty context line.
                        h.old.push(String::new());
                        h.new.push(String::new());
                    }
                    Some(_) => {
                        return Err(format!(
                            "line {}: hunk lines must start with ' ', '-' or '+': {l:?}",
                            i + 1
                        ));
                    }
                }
                i += 1;
            }
            if let Some(h) = current.take() {
                hunks.push(h);
            }
            if hunks.is_empty() && move_to.is_none() {
                return Err(format!("*** Update File: {} has no hunks", path.trim()));
            }
            ops.push(PatchOp::Update { path: path.trim().to_string(), move_to, hunks });
        } else if line.trim().is_empty() {
            i += 1;
        } else {
            return Err(format!(
                "line {}: expected \"*** Add File:\", \"*** Delete File:\", \"*** Update File:\" or \"*** End Patch\", found {line:?}",
                i + 1
            ));
        }
        if ops.len() > PATCH_FILES_MAX {
            return Err(format!("the patch touches more than {PATCH_FILES_MAX} files"));
        }
    }
    if !ended {
        return Err("the patch must end with \"*** End Patch\"".into());
    }
    if ops.is_empty() {
        return Err("the patch changes no file".into());
    }
    Ok(ops)
}

/// Where `needle` occurs in `hay` at or after `from`: exact first, then ignoring trailing
/// whitespace, then ignoring surrounding whitespace (models often get indentation slightly off).
fn seek(hay: &[String], needle: &[String], from: usize, at_end: bool) -> Option<usize> {
    if needle.is_empty() {
        return Some(hay.len());
    }
    let norms: [fn(&str) -> &str; 3] = [|s| s, str::trim_end, str::trim];
    for norm in norms {
        let matches_at =
            |start: usize| needle.iter().enumerate().all(|(k, n)| norm(&hay[start + k]) == norm(n));
        if hay.len() < needle.len() {
            return None;
        }
        let last = hay.len() - needle.len();
        if at_end {
            if last >= from && matches_at(last) {
                return Some(last);
            }
            continue;
        }
        if let Some(found) = (from..=last).find(|s| matches_at(*s)) {
            return Some(found);
        }
    }
    None
}

/// Applies the hunks of one Update section to `text`.
pub fn apply_hunks(text: &str, hunks: &[Hunk], path: &str) -> Result<String, String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut cursor = 0usize;
    for (n, hunk) in hunks.iter().enumerate() {
        if let Some(header) = &hunk.header
            && let Some(at) = lines.iter().skip(cursor).position(|l| l.trim() == header.trim())
        {
            cursor += at + 1;
        }
        let at = seek(&lines, &hunk.old, cursor, hunk.at_end)
            .or_else(|| seek(&lines, &hunk.old, 0, hunk.at_end))
            .ok_or_else(|| {
                format!(
                    "hunk {} of {path} does not apply: its context/removed lines were not found:\n{}",
                    n + 1,
                    hunk.old.join("\n")
                )
            })?;
        lines.splice(at..at + hunk.old.len(), hunk.new.iter().cloned());
        cursor = at + hunk.new.len();
    }
    let mut out = lines.join("\n");
    if !lines.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

/// Validates the whole patch against the workspace, then writes it; returns a summary.
pub fn apply_patch(ws: &Workspace, ops: &[PatchOp]) -> Result<String, String> {
    // First compute every result, so a hunk that does not apply changes nothing.
    enum Planned {
        Write(String, String),
        Remove(String),
    }
    let mut plan = Vec::new();
    let mut summary = Vec::new();
    for op in ops {
        match op {
            PatchOp::Add { path, content } => {
                ws.check_write(path).map_err(|e| e.to_string())?;
                if content.len() as u64 > EDIT_FILE_BYTES_MAX {
                    return Err(format!(
                        "{path}: the added file exceeds {EDIT_FILE_BYTES_MAX} bytes"
                    ));
                }
                plan.push(Planned::Write(path.clone(), content.clone()));
                summary.push(format!("A {path}"));
            }
            PatchOp::Delete { path } => {
                ws.read_text(path, EDIT_FILE_BYTES_MAX).map_err(|e| e.to_string())?;
                plan.push(Planned::Remove(path.clone()));
                summary.push(format!("D {path}"));
            }
            PatchOp::Update { path, move_to, hunks } => {
                let text = ws.read_text(path, EDIT_FILE_BYTES_MAX).map_err(|e| e.to_string())?;
                let changed = apply_hunks(&text, hunks, path)?;
                if changed.len() as u64 > EDIT_FILE_BYTES_MAX {
                    return Err(format!("{path}: the result exceeds {EDIT_FILE_BYTES_MAX} bytes"));
                }
                match move_to {
                    Some(to) => {
                        ws.check_write(to).map_err(|e| e.to_string())?;
                        plan.push(Planned::Write(to.clone(), changed));
                        plan.push(Planned::Remove(path.clone()));
                        summary.push(format!("M {path} -> {to}"));
                    }
                    None => {
                        plan.push(Planned::Write(path.clone(), changed));
                        summary.push(format!("M {path}"));
                    }
                }
            }
        }
    }
    for step in plan {
        match step {
            Planned::Write(path, content) => {
                ws.write_text(&path, &content).map_err(|e| e.to_string())?
            }
            Planned::Remove(path) => ws.remove_file(&path).map_err(|e| e.to_string())?,
        }
    }
    Ok(format!("applied the patch:\n{}", summary.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::Tool;
    use std::os::unix::fs::symlink;

    /// A workspace and, beside it, a directory with a secret the tools must never touch.
    struct Sandbox {
        _dir: tempfile::TempDir,
        ws: PathBuf,
        outside: PathBuf,
    }

    fn sandbox() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), "top secret\n").unwrap();
        std::fs::write(ws.join("inside.txt"), "hello\n").unwrap();
        // Links out: a directory, a file; a link that stays inside.
        symlink(&outside, ws.join("out_dir")).unwrap();
        symlink(outside.join("secret.txt"), ws.join("out_file")).unwrap();
        symlink("../outside/secret.txt", ws.join("sub").join("rel_out")).unwrap();
        symlink("inside.txt", ws.join("in_link")).unwrap();
        Sandbox { _dir: dir, ws, outside }
    }

    fn ctx(ws: &Path) -> ToolContext {
        ToolContext {
            session: beamclaw_crdt::SessionKey::new("agent:main:main").unwrap(),
            epoch: 1,
            run_id: "r".into(),
            agent_id: "main".into(),
            workspace: ws.to_path_buf(),
            cancel: tokio_util::sync::CancellationToken::new(),
        }
    }

    const ESCAPES: &[&str] = &[
        "../outside/secret.txt",
        "sub/../../outside/secret.txt",
        "/etc/passwd",
        "~/x",
        "out_dir/secret.txt",
        "out_file",
        "sub/rel_out",
        "out_dir/new.txt",
        "out_dir/deeper/new.txt",
    ];

    fn assert_refused(out: &ToolOutput, path: &str) {
        assert!(out.is_error, "{path}: {}", out.content);
        let c = &out.content;
        assert!(
            c.contains("outside the workspace")
                || c.contains("is refused")
                || c.contains("symlink that does not resolve inside"),
            "{path}: the error must say why: {c}"
        );
    }

    fn assert_outside_untouched(sb: &Sandbox) {
        let names: Vec<_> =
            std::fs::read_dir(&sb.outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret.txt")], "nothing new outside");
        assert_eq!(std::fs::read_to_string(sb.outside.join("secret.txt")).unwrap(), "top secret\n");
    }

    #[tokio::test]
    async fn read_refuses_every_escape_and_follows_inside_links() {
        let sb = sandbox();
        let c = ctx(&sb.ws);
        for path in ESCAPES {
            let out = ReadTool.run(json!({"path": path}), &c).await;
            assert_refused(&out, path);
            assert!(!out.content.contains("top secret"), "{path}");
        }
        let ok = ReadTool.run(json!({"path": "in_link"}), &c).await;
        assert_eq!(ok, ToolOutput::ok("hello\n"));
    }

    #[tokio::test]
    async fn write_refuses_every_escape() {
        let sb = sandbox();
        let c = ctx(&sb.ws);
        for path in ESCAPES {
            let out = WriteTool.run(json!({"path": path, "content": "pwned"}), &c).await;
            assert_refused(&out, path);
        }
        assert_outside_untouched(&sb);
        let ok = WriteTool.run(json!({"path": "a/b/c.txt", "content": "x"}), &c).await;
        assert!(!ok.is_error, "{}", ok.content);
        assert_eq!(std::fs::read_to_string(sb.ws.join("a/b/c.txt")).unwrap(), "x");
    }

    #[tokio::test]
    async fn edit_refuses_every_escape() {
        let sb = sandbox();
        let c = ctx(&sb.ws);
        for path in ESCAPES {
            let args = json!({"path": path, "oldText": "top secret", "newText": "pwned"});
            let out = EditTool.run(args, &c).await;
            assert_refused(&out, path);
        }
        assert_outside_untouched(&sb);
        let args = json!({"path": "inside.txt", "oldText": "hello", "newText": "bye"});
        assert!(!EditTool.run(args, &c).await.is_error);
        assert_eq!(std::fs::read_to_string(sb.ws.join("inside.txt")).unwrap(), "bye\n");
    }

    #[tokio::test]
    async fn apply_patch_refuses_every_escape_and_changes_nothing_then() {
        let sb = sandbox();
        let c = ctx(&sb.ws);
        for path in ESCAPES {
            for section in [
                format!("*** Add File: {path}\n+pwned"),
                format!("*** Update File: {path}\n@@\n-top secret\n+pwned"),
                format!("*** Delete File: {path}"),
                format!("*** Update File: inside.txt\n*** Move to: {path}\n@@\n-hello\n+moved"),
            ] {
                // A valid first section proves a refused later one leaves everything unchanged.
                let patch = format!(
                    "*** Begin Patch\n*** Add File: first.txt\n+ok\n{section}\n*** End Patch\n"
                );
                let out = ApplyPatchTool.run(json!({"input": patch}), &c).await;
                assert_refused(&out, path);
                assert!(!sb.ws.join("first.txt").exists(), "{path}: nothing applied");
            }
        }
        assert_outside_untouched(&sb);
        assert_eq!(std::fs::read_to_string(sb.ws.join("inside.txt")).unwrap(), "hello\n");
    }

    #[test]
    fn relative_components_refuse_escapes() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/..", "~/x", ".", "a\0b"] {
            assert!(relative_components(bad).is_err(), "{bad:?} must be refused");
        }
        let ok = relative_components("./a/b.txt").unwrap();
        assert_eq!(ok, vec![OsString::from("a"), OsString::from("b.txt")]);
    }

    #[test]
    fn page_lines_pages_and_says_how_to_continue() {
        let text = "a\nb\nc\nd\n";
        assert_eq!(page_lines(text, 1, 10), "a\nb\nc\nd\n");
        let page = page_lines(text, 2, 2);
        assert!(page.starts_with("b\nc\n"), "{page}");
        assert!(page.contains("lines 2-3 of 4; use offset=4"), "{page}");
        assert!(page_lines(text, 9, 1).contains("past the end"));
    }

    #[test]
    fn patch_parses_and_applies_hunks() {
        let patch = "*** Begin Patch\n*** Add File: new.txt\n+hello\n*** Update File: a.txt\n@@ fn main\n-    old();\n+    new();\n     keep();\n*** Delete File: gone.txt\n*** End Patch\n";
        let ops = parse_patch(patch).unwrap();
        assert_eq!(ops.len(), 3);
        let PatchOp::Update { hunks, .. } = &ops[1] else { panic!("{ops:?}") };
        let text = "x\nfn main\n    old();\n    keep();\n";
        assert_eq!(
            apply_hunks(text, hunks, "a.txt").unwrap(),
            "x\nfn main\n    new();\n    keep();\n"
        );
        assert!(apply_hunks("nothing\n", hunks, "a.txt").unwrap_err().contains("does not apply"));
        assert!(parse_patch("*** Begin Patch\n*** Add File: x\n+a\n").is_err());
        assert!(parse_patch("hello").is_err());
    }
}
