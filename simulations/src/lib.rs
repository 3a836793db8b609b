//! beamclaw-sim: the deterministic simulator.
//!
//! Will own: a seeded discrete-event loop over N real mesh cores with a simulated network, disk,
//! provider and clients, fault injection (partitions, crashes, deploys, loss, drift), the
//! invariant checker and planted bugs.
