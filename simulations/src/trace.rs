//! The trace: one line per simulated event. `replay --trace` prints it; the determinism test
//! hashes it (two runs of one seed must produce the same bytes). When off, no line is ever
//! formatted.

use std::hash::Hasher;
use std::io::Write;

use crate::clock::{Micros, US_PER_MS};

pub enum Trace {
    Off,
    /// Hash every line (SipHash with fixed keys: stable within one build).
    Hash(std::hash::DefaultHasher, u64),
    /// Print every line to stdout.
    Print(std::io::BufWriter<std::io::Stdout>),
}

impl Trace {
    pub fn hashing() -> Self {
        Trace::Hash(std::hash::DefaultHasher::new(), 0)
    }

    pub fn printing() -> Self {
        Trace::Print(std::io::BufWriter::new(std::io::stdout()))
    }

    pub fn on(&self) -> bool {
        !matches!(self, Trace::Off)
    }

    /// Records a line at `now`; `f` formats it (only called when the trace is on).
    pub fn line(&mut self, now: Micros, f: impl FnOnce() -> String) {
        if !self.on() {
            return;
        }
        let text = format!("{:>6}.{:03} {}\n", now / US_PER_MS, now % US_PER_MS, f());
        match self {
            Trace::Off => {}
            Trace::Hash(h, lines) => {
                h.write(text.as_bytes());
                *lines += 1;
            }
            Trace::Print(out) => {
                // A closed stdout (`| head`) must not abort the run.
                let _ = out.write_all(text.as_bytes());
            }
        }
    }

    /// The hash and line count so far (hashing mode), for the determinism check.
    pub fn digest(&self) -> Option<(u64, u64)> {
        match self {
            Trace::Hash(h, lines) => Some((h.finish(), *lines)),
            _ => None,
        }
    }

    pub fn flush(&mut self) {
        if let Trace::Print(out) = self {
            let _ = out.flush();
        }
    }
}
