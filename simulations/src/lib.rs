//! beamclaw-sim: a deterministic simulator that runs real mesh cores under faults.
//!
//! A seeded discrete-event loop ([`world`]) drives N `beamclaw_mesh::core::Node`s over a
//! simulated network ([`net`]), disk ([`disk`]) and agent runtime ([`runtime`]), with clients
//! ([`workload`]) and a fault schedule ([`faults`]) drawn from the seed, and checks the
//! invariants of DESIGN.md continuously and at quiescence ([`checker`]). [`swim`] measures the
//! membership layer at scale. Everything random comes from the seed ([`rng`]): one seed is one
//! scenario, replayed byte for byte.

pub mod checker;
pub mod clock;
pub mod disk;
pub mod faults;
pub mod frames;
pub mod metrics;
pub mod net;
pub mod rng;
pub mod runner;
pub mod runtime;
pub mod swim;
pub mod trace;
pub mod workload;
pub mod world;

use std::cell::RefCell;

thread_local! {
    /// Where the last panic on this thread happened (the hook records it; `catch_unwind` only
    /// returns the payload).
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the default panic hook (which would print over the progress bar) with one that
/// records the location for the violation message. Panics outside the simulator's
/// `catch_unwind` still abort the run with their message, printed by the runner.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            PANIC_LOCATION.with(|p| *p.borrow_mut() = location);
        }));
    });
}

/// The text of a caught panic, with its location when the hook saw it.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_string());
    match PANIC_LOCATION.with(|p| p.borrow_mut().take()) {
        Some(at) => format!("{message} at {at}"),
        None => message,
    }
}
