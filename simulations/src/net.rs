//! The network model: latency, loss, duplication, reordering, partitions and per-link queues.
//!
//! Datagrams (SWIM) are unreliable: each may be lost, duplicated, and overtaken by a later one.
//! Frames ride reliable QUIC streams in production: they are reordered by latency (one stream
//! per frame, so no order between frames) but lost only when their link is cut while they are
//! in flight, when an end crashes, or at a low rate under the `loss` fault (a connection reset).
//! Each directed link has a transmit queue drained at [`LINK_BYTES_PER_MS`]; above
//! [`LINK_QUEUE_BYTES_HIGH`] the sender is told it is congested (`Input::Congestion`), below
//! [`LINK_QUEUE_BYTES_LOW`] that it is not any more, and a frame that would push the queue past
//! [`LINK_QUEUE_BYTES_MAX`] is dropped and reported as a queue-bound violation.

use std::collections::{BTreeMap, VecDeque};

use crate::clock::Micros;
use crate::rng::{SimRng, between, chance};

/// LAN latency: most packets take [`LAN_LATENCY_US_MIN`]..=[`LAN_LATENCY_US_MAX`].
pub const LAN_LATENCY_US_MIN: Micros = 200;
pub const LAN_LATENCY_US_MAX: Micros = 2_000;
/// A share of packets meets a busy switch or a descheduled receiver: [`LAN_TAIL_US_MAX`] at most.
pub const LAN_TAIL_PER_MILLE: u64 = 20;
pub const LAN_TAIL_US_MAX: Micros = 20_000;
/// And a few meet a much longer stall (retransmission, GC on the receiver).
pub const LAN_STALL_PER_100K: u64 = 100;
pub const LAN_STALL_US_MAX: Micros = 100_000;

/// Link bandwidth: 1 Gbit/s, in bytes per millisecond.
pub const LINK_BYTES_PER_MS: u64 = 125_000;
/// Queued bytes on a link above which its sender is congested.
pub const LINK_QUEUE_BYTES_HIGH: usize = 8 * 1024 * 1024;
/// Queued bytes below which a congested link is clear again.
pub const LINK_QUEUE_BYTES_LOW: usize = 2 * 1024 * 1024;
/// Hard bound of a link's queue: the transport refuses frames beyond it.
pub const LINK_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Loss rates in force (the `loss` fault raises them for a while).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossRates {
    /// Probability that a datagram is lost.
    pub datagram_loss: f64,
    /// Probability that a datagram is delivered twice.
    pub datagram_dup: f64,
    /// Probability that a frame is lost (its connection was reset).
    pub frame_loss: f64,
}

/// Why a frame or datagram was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    Partition,
    Random,
    QueueFull,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub datagrams_sent: u64,
    pub datagrams_lost: u64,
    pub datagrams_duplicated: u64,
    pub frames_sent: u64,
    pub frames_lost_partition: u64,
    pub frames_lost_random: u64,
    pub frames_dropped_queue_full: u64,
    pub frame_bytes: u64,
    pub link_queue_bytes_peak: usize,
    pub congestion_signals: u64,
}

#[derive(Default)]
struct Link {
    /// (departure time, bytes) of frames not yet on the wire, oldest first.
    queue: VecDeque<(Micros, usize)>,
    queued: usize,
    busy_until: Micros,
    congested: bool,
}

impl Link {
    fn settle(&mut self, now: Micros) {
        while let Some(&(depart, bytes)) = self.queue.front() {
            if depart > now {
                break;
            }
            self.queue.pop_front();
            self.queued -= bytes;
        }
    }

    /// When the queue will have drained to [`LINK_QUEUE_BYTES_LOW`].
    fn clear_at(&self) -> Micros {
        let mut left = self.queued;
        for &(depart, bytes) in &self.queue {
            left -= bytes;
            if left <= LINK_QUEUE_BYTES_LOW {
                return depart;
            }
        }
        self.busy_until
    }
}

/// What became of a frame handed to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSend {
    /// When it arrives (if not lost on the way, see [`Network::cut`]).
    pub arrive: Result<Micros, Loss>,
    /// The link just became congested: tell the sender, and check again at this time.
    pub congested_until: Option<Micros>,
}

pub struct Network {
    rng: SimRng,
    /// Directed links cut, with how many faults cut each (faults may overlap).
    cut: BTreeMap<(usize, usize), u32>,
    links: BTreeMap<(usize, usize), Link>,
    pub rates: LossRates,
    pub stats: NetStats,
}

impl Network {
    pub fn new(rng: SimRng) -> Self {
        Network {
            rng,
            cut: BTreeMap::new(),
            links: BTreeMap::new(),
            rates: LossRates::default(),
            stats: NetStats::default(),
        }
    }

    /// One-way latency of a LAN packet.
    pub fn latency(&mut self) -> Micros {
        let roll = between(&mut self.rng, 0, 99_999);
        if roll < LAN_STALL_PER_100K {
            between(&mut self.rng, LAN_TAIL_US_MAX, LAN_STALL_US_MAX)
        } else if roll < LAN_STALL_PER_100K + LAN_TAIL_PER_MILLE * 100 {
            between(&mut self.rng, LAN_LATENCY_US_MAX, LAN_TAIL_US_MAX)
        } else {
            between(&mut self.rng, LAN_LATENCY_US_MIN, LAN_LATENCY_US_MAX)
        }
    }

    /// Whether `from -> to` is cut now.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cut.get(&(from, to)).is_some_and(|n| *n > 0)
    }

    /// Cuts `from -> to` (one more fault holds it cut).
    pub fn cut_link(&mut self, from: usize, to: usize) {
        *self.cut.entry((from, to)).or_default() += 1;
    }

    /// Releases one fault's cut of `from -> to`.
    pub fn heal_link(&mut self, from: usize, to: usize) {
        if let Some(n) = self.cut.get_mut(&(from, to)) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.cut.remove(&(from, to));
            }
        }
    }

    /// Whether any link is cut.
    pub fn any_cut(&self) -> bool {
        !self.cut.is_empty()
    }

    /// Arrival times of a datagram's copies (none when lost, two when duplicated).
    pub fn send_datagram(&mut self, from: usize, to: usize, now: Micros) -> Vec<Micros> {
        self.stats.datagrams_sent += 1;
        if self.is_cut(from, to) || chance(&mut self.rng, self.rates.datagram_loss) {
            self.stats.datagrams_lost += 1;
            return Vec::new();
        }
        let mut out = vec![now + self.latency()];
        if chance(&mut self.rng, self.rates.datagram_dup) {
            self.stats.datagrams_duplicated += 1;
            out.push(now + self.latency());
        }
        out
    }

    /// Queues a frame of `bytes` on `from -> to`.
    pub fn send_frame(&mut self, from: usize, to: usize, bytes: usize, now: Micros) -> FrameSend {
        self.stats.frames_sent += 1;
        self.stats.frame_bytes += bytes as u64;
        if self.is_cut(from, to) {
            self.stats.frames_lost_partition += 1;
            return FrameSend { arrive: Err(Loss::Partition), congested_until: None };
        }
        if chance(&mut self.rng, self.rates.frame_loss) {
            self.stats.frames_lost_random += 1;
            return FrameSend { arrive: Err(Loss::Random), congested_until: None };
        }
        let latency = self.latency();
        let link = self.links.entry((from, to)).or_default();
        link.settle(now);
        if link.queued + bytes > LINK_QUEUE_BYTES_MAX {
            self.stats.frames_dropped_queue_full += 1;
            return FrameSend { arrive: Err(Loss::QueueFull), congested_until: None };
        }
        let transmit = (bytes as u64).saturating_mul(1_000) / LINK_BYTES_PER_MS;
        let depart = link.busy_until.max(now) + transmit;
        link.busy_until = depart;
        link.queue.push_back((depart, bytes));
        link.queued += bytes;
        self.stats.link_queue_bytes_peak = self.stats.link_queue_bytes_peak.max(link.queued);
        let mut congested_until = None;
        if !link.congested && link.queued > LINK_QUEUE_BYTES_HIGH {
            link.congested = true;
            self.stats.congestion_signals += 1;
            congested_until = Some(link.clear_at());
        }
        FrameSend { arrive: Ok(depart + latency), congested_until }
    }

    /// Re-examines a congested link: `Ok(())` when it is clear (tell the sender), or the time to
    /// look again.
    pub fn check_congestion(&mut self, from: usize, to: usize, now: Micros) -> Result<(), Micros> {
        let Some(link) = self.links.get_mut(&(from, to)) else { return Ok(()) };
        link.settle(now);
        if link.queued <= LINK_QUEUE_BYTES_LOW {
            link.congested = false;
            return Ok(());
        }
        Err(link.clear_at().max(now + 1))
    }

    /// Forgets the queues of every link from or to `node` (its connections died with it).
    pub fn reset_node(&mut self, node: usize) {
        self.links.retain(|(a, b), _| *a != node && *b != node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, stream};

    #[test]
    fn lan_latency_stays_within_its_bounds_and_mostly_under_two_ms() {
        let mut net = Network::new(stream(1, Stream::Network));
        let samples: Vec<Micros> = (0..100_000).map(|_| net.latency()).collect();
        assert!(samples.iter().all(|l| (LAN_LATENCY_US_MIN..=LAN_STALL_US_MAX).contains(l)));
        let fast = samples.iter().filter(|l| **l <= LAN_LATENCY_US_MAX).count();
        assert!(fast > 97_000 && fast < 99_000, "{fast}");
    }

    #[test]
    fn cut_links_lose_everything_one_way_only() {
        let mut net = Network::new(stream(1, Stream::Network));
        net.cut_link(0, 1);
        assert!(net.send_datagram(0, 1, 0).is_empty());
        assert_eq!(net.send_frame(0, 1, 10, 0).arrive, Err(Loss::Partition));
        assert_eq!(net.send_datagram(1, 0, 0).len(), 1);
        assert!(net.send_frame(1, 0, 10, 0).arrive.is_ok());
        net.cut_link(0, 1);
        net.heal_link(0, 1);
        assert!(net.is_cut(0, 1), "two faults cut it; one healed");
        net.heal_link(0, 1);
        assert!(!net.is_cut(0, 1));
    }

    #[test]
    fn a_full_queue_signals_congestion_and_clears_as_it_drains() {
        let mut net = Network::new(stream(1, Stream::Network));
        let frame = 1024 * 1024;
        let mut signal = None;
        for _ in 0..9 {
            let sent = net.send_frame(0, 1, frame, 0);
            assert!(sent.arrive.is_ok());
            signal = signal.or(sent.congested_until);
        }
        let at = signal.expect("nine MiB queued is over the high-water mark");
        assert!(net.check_congestion(0, 1, at.saturating_sub(1_000)).is_err());
        assert_eq!(net.check_congestion(0, 1, at), Ok(()));
        let huge = net.send_frame(0, 1, LINK_QUEUE_BYTES_MAX, at);
        assert_eq!(huge.arrive, Err(Loss::QueueFull));
    }
}
