//! The node core: a sans-IO state machine. No tokio, clock, sockets, threads or OS entropy here.

pub mod turn;
