//! The mesh core is sans-IO: no tokio, clock, sockets, threads or OS entropy in
//! `mesh/src/core/`, nor in the crates it uses. This test fails the build when that slips.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Text that must not appear in core code (outside comments).
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "the async runtime belongs to the driver"),
    ("Instant::now", "the core takes `now` as an argument"),
    ("SystemTime", "the core takes `now` as an argument"),
    ("std::thread", "the core is single-threaded"),
    ("thread::spawn", "the core is single-threaded"),
    ("thread_rng", "the core uses its injected seeded RNG"),
    ("rand::rng(", "the core uses its injected seeded RNG"),
    ("OsRng", "the core uses its injected seeded RNG"),
    ("getrandom", "the core uses its injected seeded RNG"),
    ("from_os_rng", "the core uses its injected seeded RNG"),
    ("from_entropy", "the core uses its injected seeded RNG"),
    ("std::net::UdpSocket", "sockets belong to the driver"),
    ("std::net::TcpStream", "sockets belong to the driver"),
    ("TcpListener", "sockets belong to the driver"),
    ("std::fs", "storage writes are effects; reads go through the Disk trait"),
    ("quinn", "the transport belongs to the driver"),
    ("Store::open", "storage writes are effects; reads go through the Disk trait"),
];

/// Crates core code may name; each one's dependency closure is checked for tokio and friends.
const CORE_CRATES: &[&str] = &[
    "beamclaw-crdt",
    "foca",
    "rand",
    "rand_chacha",
    "serde",
    "postcard",
    "blake3",
    "hex",
    "libp2p-identity",
    "tracing",
    "thiserror",
    "serde_json",
];

/// Crates that must not be in the dependency closure of any crate the core uses.
const FORBIDDEN_CRATES: &[&str] = &["tokio", "quinn", "mio", "async-std", "smol"];

fn core_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join("core")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line without its `//` comment (string literals are rare enough in the core
/// that a `//` inside one is not worth a real lexer; a false positive would only fail loudly).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

#[test]
fn core_code_reaches_no_clock_socket_thread_runtime_or_entropy() {
    let mut files = Vec::new();
    rust_files(&core_dir(), &mut files);
    assert!(files.len() >= 10, "expected the core's modules, found {files:?}");
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            for (pattern, why) in FORBIDDEN {
                if code.contains(pattern) {
                    violations.push(format!("{}:{}: `{pattern}` ({why})", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "sans-IO violations in mesh/src/core:\n{}",
        violations.join("\n")
    );
}

#[test]
fn core_names_only_allowed_crates() {
    let mut files = Vec::new();
    rust_files(&core_dir(), &mut files);
    let mut allowed: BTreeSet<String> = CORE_CRATES.iter().map(|c| c.replace('-', "_")).collect();
    // The core's own modules (re-exported from mod.rs) and test-only crates.
    for file in &files {
        if let Some(stem) = file.file_stem() {
            allowed.insert(stem.to_string_lossy().into_owned());
        }
    }
    allowed.insert("proptest".into());
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line).trim_start();
            let Some(rest) = code.strip_prefix("use ").or_else(|| code.strip_prefix("pub use "))
            else {
                continue;
            };
            let root = rest.split([':', ';', ' ', '{']).next().unwrap_or("");
            if matches!(root, "std" | "core" | "alloc" | "super" | "crate" | "self") {
                continue;
            }
            if !allowed.contains(root) {
                violations.push(format!("{}:{}: uses crate `{root}`", file.display(), n + 1));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "core uses crates outside its allow-list:\n{}",
        violations.join("\n")
    );
}

#[test]
fn crates_the_core_uses_do_not_depend_on_an_async_runtime() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc).arg("-vV").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    let host = version.lines().find_map(|l| l.strip_prefix("host: ")).unwrap().trim().to_string();
    // Only this platform's packages: the others' manifests may not be downloaded (offline CI).
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // package id -> (name, normal dependency ids) from the resolved graph.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        names.insert(p["id"].as_str().unwrap().into(), p["name"].as_str().unwrap().into());
    }
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap().to_string();
        let normal: Vec<String> = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null()))
            .map(|d| d["pkg"].as_str().unwrap().to_string())
            .collect();
        deps.insert(id, normal);
    }
    let mut violations = Vec::new();
    for krate in CORE_CRATES {
        let roots: Vec<&String> =
            names.iter().filter(|(_, n)| n == krate).map(|(id, _)| id).collect();
        assert!(!roots.is_empty(), "{krate} not found in cargo metadata");
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = roots.into_iter().cloned().collect();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let name = &names[&id];
            if FORBIDDEN_CRATES.contains(&name.as_str()) {
                violations.push(format!("{krate} depends on {name}"));
            }
            stack.extend(deps.get(&id).cloned().unwrap_or_default());
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
