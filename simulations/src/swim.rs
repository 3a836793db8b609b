//! SWIM at scale: failure detection, dissemination and false suspicions of the membership layer
//! (foca through the real node core), on the LAN network model, at 10 to 1,000 nodes.
//!
//! One experiment per cluster size and seed, on full `Node`s without sessions:
//! 1. boot `n` nodes (each joins through the seeds) and wait until every node sees all `n`. The
//!    boot is staged as real clusters are formed: the seeds start, then the other nodes at
//!    [`BOOT_JOINS_PER_S_DEFAULT`] (see [`Boot`]);
//! 2. dissemination: one more node joins; the time until 99.99 % of the members report it up;
//! 3. failure detection: a random member is killed; the time until the first and until every
//!    live member has declared it down;
//! 4. false suspicions: another member stalls for [`STALL_MS`] (a GC pause: it handles no input
//!    meanwhile); how many members declare it down over the next [`STALL_WATCH_MS`].
//!
//! The figures are compared with those published for memberlist (Serf's SWIM library).

use std::collections::{BTreeMap, BTreeSet};

use beamclaw_mesh::core::NodeId;

use crate::clock::{Micros, US_PER_MS};
use crate::faults::FaultSet;
use crate::rng::{Stream, index, stream};
use crate::trace::Trace;
use crate::world::{SEEDS_MAX, SimConfig, World};

/// How long a member stalls in the false-suspicion experiment, in milliseconds.
pub const STALL_MS: u64 = 2_000;
/// How long after the stall begins declarations of its death are counted, in milliseconds.
pub const STALL_WATCH_MS: u64 = 30_000;
/// How long after its start the joining node's own view is counted, in milliseconds.
pub const JOINER_VIEW_MS: u64 = 10_000;
/// Share of members that must have seen a change for it to count as disseminated.
pub const DISSEMINATION_SHARE: f64 = 0.9999;
/// Longest wait for the cluster to form after the last node started, in milliseconds.
pub const BOOT_CONVERGE_MS_MAX: u64 = 1_800_000;
/// Joins per virtual second of the staged boot, when not given: 1,000 nodes start in 10 s.
///
/// Chosen by measurement at 1,000 nodes, seed 0 (2026-11-24): staged at 20, 50 and 100 joins/s
/// every node saw every node 952, 746 and 493 s after the last start (193, 187 and 138 s of
/// CPU). The faster the joins follow each other, the more members learn of each other from the
/// gossip of fresh joins; what is left is a tail of pairs that meet only when a probe round
/// (about n × the 500 ms probe period) brings them together, as foca has no full-state sync.
/// Starting all 1,000 at once floods every member's broadcast queue and no full view formed in
/// 300 s. The join load each member carries does not grow with the cluster (every join is
/// piggybacked `4 * ceil(log10(n + 1))` times by each member, each of which sends a bounded
/// number of packets), so the rate is a constant rather than a share of the cluster.
pub const BOOT_JOINS_PER_S_DEFAULT: u64 = 100;
/// Highest staged-boot rate accepted, in joins per virtual second.
pub const BOOT_JOINS_PER_S_MAX: u64 = 10_000;
/// Longest wait for a join to disseminate or a failure to be detected, in milliseconds.
pub const MEASURE_MS_MAX: u64 = 120_000;
/// Polling step while waiting, in milliseconds.
const POLL_MS: u64 = 100;

/// memberlist's published figures (hashicorp/memberlist and Serf documentation; Serf's
/// convergence simulator): failure detection about 10 s at 100 nodes; 99.99 % dissemination in
/// 2.0 s at 100 nodes and 2.2 s at 1,000 (LAN configuration).
pub const MEMBERLIST_DETECTION_MS_100: u64 = 10_000;
pub const MEMBERLIST_DISSEMINATION_MS_100: u64 = 2_000;
pub const MEMBERLIST_DISSEMINATION_MS_1000: u64 = 2_200;

/// How the cluster is started before the measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// Every node starts at the same instant (a cold start of the whole cluster).
    Simultaneous,
    /// The seeds start first, then one node every `1 / joins_per_s` virtual seconds.
    Staged { joins_per_s: u64 },
}

impl Boot {
    /// From the CLI's rate: 0 means every node at once.
    pub fn from_rate(joins_per_s: u64) -> Self {
        if joins_per_s == 0 { Boot::Simultaneous } else { Boot::Staged { joins_per_s } }
    }

    /// How the boot column of the table names it.
    pub fn describe(self) -> String {
        match self {
            Boot::Simultaneous => "all nodes started at once".into(),
            Boot::Staged { joins_per_s } => format!("staged at {joins_per_s} joins/s"),
        }
    }
}

/// One experiment's results.
#[derive(Clone, Debug, Default)]
pub struct SwimResult {
    pub nodes: usize,
    pub seed: u64,
    /// Time for the cluster to form (every node sees every node) from the first start, in ms.
    pub boot_ms: Option<u64>,
    /// The same, from the last node's start, in ms.
    pub boot_after_last_start_ms: Option<u64>,
    /// Join seen by 99.99 % of members, in ms.
    pub dissemination_ms: Option<u64>,
    /// Members the joining node itself had seen up within [`JOINER_VIEW_MS`] of its start.
    pub joiner_view: usize,
    /// First member to declare the killed node down, in ms after the kill.
    pub detection_first_ms: Option<u64>,
    /// Every live member declared it down, in ms after the kill.
    pub detection_all_ms: Option<u64>,
    /// Members that declared the stalled node down.
    pub false_downs: usize,
    /// Datagrams and frames delivered, and wall time, for the record.
    pub wall_ms: u64,
}

fn ms(us: Micros) -> u64 {
    us / US_PER_MS
}

/// Runs the experiment for `nodes` members with `seed`, the cluster started as `boot` says.
pub fn experiment(nodes: usize, seed: u64, boot: Boot) -> SwimResult {
    let started = std::time::Instant::now();
    let nodes = nodes.max(4);
    let mut cfg = SimConfig::new(seed, nodes + 1, FaultSet::default(), None);
    cfg.workload = false;
    cfg.stop_at_first_violation = false;
    cfg.record_members = true;
    cfg.run_ms = 3_600_000;
    let mut world = World::new(cfg, Trace::Off);
    let mut rng = stream(seed, Stream::Faults);
    let mut result = SwimResult { nodes, seed, ..SwimResult::default() };
    let joiner = nodes;

    // 1. Boot.
    match boot {
        Boot::Simultaneous => (0..nodes).for_each(|i| world.start_node(i)),
        Boot::Staged { joins_per_s } => {
            // Every node joins through the first SEEDS_MAX nodes: they start together first.
            let seeds = SEEDS_MAX.min(nodes);
            (0..seeds).for_each(|i| world.start_node(i));
            let interval_us =
                (1_000 * US_PER_MS / joins_per_s.clamp(1, BOOT_JOINS_PER_S_MAX)).max(1);
            for (k, i) in (seeds..nodes).enumerate() {
                world.run_until((k as u64 + 1) * interval_us);
                world.start_node(i);
            }
        }
    }
    let last_start = world.now();
    let boot_deadline = last_start + BOOT_CONVERGE_MS_MAX * US_PER_MS;
    while world.now() < boot_deadline {
        let t = world.now() + POLL_MS * US_PER_MS;
        world.run_until(t);
        if world.membership_converged() {
            result.boot_ms = Some(ms(world.now()));
            result.boot_after_last_start_ms = Some(ms(world.now() - last_start));
            break;
        }
    }
    if result.boot_ms.is_none() {
        result.wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        return result;
    }
    // Let the join churn settle.
    let settle = world.now() + 5_000 * US_PER_MS;
    world.run_until(settle);

    // 2. Dissemination of a join.
    let t0 = world.now();
    world.start_node(joiner);
    let Some(joiner_id) = world.node_id(joiner) else { return result };
    let needed = ((nodes as f64) * DISSEMINATION_SHARE).ceil() as usize;
    result.dissemination_ms =
        wait_for(&mut world, t0, |w| nth_observer(w, t0, joiner_id, true, needed));
    let settle = world.now() + 5_000 * US_PER_MS;
    world.run_until(settle.max(t0 + JOINER_VIEW_MS * US_PER_MS));
    result.joiner_view = seen_by(&world, t0, joiner);

    // 3. Failure detection. The victim is not a seed (nodes 0..3), as in a real cluster where
    // the seeds are a few well-known hosts.
    let victim = 3 + index(&mut rng, nodes - 3);
    let Some(victim_id) = world.node_id(victim) else { return result };
    let t1 = world.now();
    world.kill(victim, "swim experiment");
    let observers = nodes; // every other member, the joiner included
    result.detection_all_ms =
        wait_for(&mut world, t1, |w| nth_observer(w, t1, victim_id, false, observers));
    result.detection_first_ms = nth_observer(&world, t1, victim_id, false, 1).map(|at| ms(at - t1));

    // 4. A stall.
    let mut stalled = 3 + index(&mut rng, nodes - 3);
    if stalled == victim {
        stalled = if victim + 1 < nodes { victim + 1 } else { 3 };
    }
    let Some(stalled_id) = world.node_id(stalled) else { return result };
    let t2 = world.now();
    world.stall(stalled, t2 + STALL_MS * US_PER_MS);
    world.run_until(t2 + STALL_WATCH_MS * US_PER_MS);
    result.false_downs = world
        .member_notes
        .iter()
        .filter(|n| n.at >= t2 && !n.up && n.subject == stalled_id)
        .map(|n| n.observer)
        .collect::<BTreeSet<_>>()
        .len();
    result.wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    result
}

/// Runs (polling) until `reached` finds the moment a condition became true, at most
/// [`MEASURE_MS_MAX`]; returns that moment's distance from `since`, in milliseconds.
fn wait_for(
    world: &mut World,
    since: Micros,
    reached: impl Fn(&World) -> Option<Micros>,
) -> Option<u64> {
    let deadline = since + MEASURE_MS_MAX * US_PER_MS;
    let mut t = since;
    while t < deadline {
        t += POLL_MS * US_PER_MS;
        world.run_until(t);
        if let Some(at) = reached(world) {
            return Some(ms(at.saturating_sub(since)));
        }
    }
    None
}

/// When `needed` distinct observers had reported `subject` up (or down) since `since`.
fn nth_observer(
    world: &World,
    since: Micros,
    subject: NodeId,
    up: bool,
    needed: usize,
) -> Option<Micros> {
    // Notes are appended in time order: skip those before `since` (a 1,000-node boot leaves a
    // million) instead of scanning them at every poll.
    let notes = &world.member_notes;
    let from = notes.partition_point(|n| n.at < since);
    let mut first_seen: BTreeMap<usize, Micros> = BTreeMap::new();
    for n in notes[from..].iter().filter(|n| n.up == up && n.subject == subject) {
        first_seen.entry(n.observer).or_insert(n.at);
    }
    let mut times: Vec<Micros> = first_seen.into_values().collect();
    times.sort_unstable();
    if needed == 0 { Some(since) } else { times.get(needed - 1).copied() }
}

/// How many members `observer` has seen up since `since`.
fn seen_by(world: &World, since: Micros, observer: usize) -> usize {
    let notes = &world.member_notes;
    let from = notes.partition_point(|n| n.at < since);
    let horizon = since + JOINER_VIEW_MS * US_PER_MS;
    notes[from..]
        .iter()
        .filter(|n| n.observer == observer && n.up && n.at <= horizon)
        .map(|n| n.subject)
        .collect::<BTreeSet<_>>()
        .len()
}

/// The median of the present values.
pub fn median(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    let mut v: Vec<u64> = values.flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// The markdown table of results per cluster size (medians over seeds), the cluster started as
/// `boot` says.
pub fn table(results: &[Vec<SwimResult>], boot: Boot) -> String {
    let fmt = |v: Option<u64>| {
        v.map_or_else(|| "not reached".into(), |ms| format!("{:.1} s", ms as f64 / 1_000.0))
    };
    let mut out = format!(
        "| members | seeds | boot, {}: all see all (after the last start) | 99.99 % dissemination of a join | members the joiner sees after {} s | detection: first member | detection: every member | members declaring a 2 s stall down | memberlist / Serf |\n|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        boot.describe(),
        JOINER_VIEW_MS / 1_000
    );
    for runs in results {
        let Some(first) = runs.first() else { continue };
        let n = first.nodes;
        let reference = match n {
            100 => format!(
                "detection ~{} s; dissemination {} s",
                MEMBERLIST_DETECTION_MS_100 / 1000,
                MEMBERLIST_DISSEMINATION_MS_100 as f64 / 1000.0
            ),
            1000 => format!("dissemination {} s", MEMBERLIST_DISSEMINATION_MS_1000 as f64 / 1000.0),
            _ => "-".into(),
        };
        let false_downs: Vec<String> = runs.iter().map(|r| r.false_downs.to_string()).collect();
        out.push_str(&format!(
            "| {n} | {} | {} ({}) | {} | {} of {n} | {} | {} | {} | {reference} |\n",
            runs.len(),
            fmt(median(runs.iter().map(|r| r.boot_ms))),
            fmt(median(runs.iter().map(|r| r.boot_after_last_start_ms))),
            fmt(median(runs.iter().map(|r| r.dissemination_ms))),
            median(runs.iter().map(|r| Some(r.joiner_view as u64))).unwrap_or(0),
            fmt(median(runs.iter().map(|r| r.detection_first_ms))),
            fmt(median(runs.iter().map(|r| r.detection_all_ms))),
            false_downs.join(", "),
        ));
    }
    out
}

/// memberlist's published figures next to ours, in words, for the sizes that have both.
pub fn comparison(results: &[Vec<SwimResult>]) -> String {
    let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1_000.0);
    let versus = |ours: u64, theirs: u64| {
        if ours < theirs {
            "faster than"
        } else if ours > theirs {
            "slower than"
        } else {
            "the same as"
        }
    };
    let mut out = String::new();
    for runs in results {
        let Some(first) = runs.first() else { continue };
        let n = first.nodes;
        let dissemination = median(runs.iter().map(|r| r.dissemination_ms));
        let detection = median(runs.iter().map(|r| r.detection_all_ms));
        let reference = match n {
            100 => Some(MEMBERLIST_DISSEMINATION_MS_100),
            1000 => Some(MEMBERLIST_DISSEMINATION_MS_1000),
            _ => None,
        };
        if let (Some(ours), Some(theirs)) = (dissemination, reference) {
            out.push_str(&format!(
                "- {n} members: a join reached 99.99 % of members in {}, {} memberlist's {}.\n",
                secs(ours),
                versus(ours, theirs),
                secs(theirs)
            ));
        }
        if let (Some(ours), 100) = (detection, n) {
            out.push_str(&format!(
                "- {n} members: every member declared a killed node down after {}, {} memberlist's about {}.\n",
                secs(ours),
                versus(ours, MEMBERLIST_DETECTION_MS_100),
                secs(MEMBERLIST_DETECTION_MS_100)
            ));
        }
        let unreached = runs.iter().filter(|r| r.boot_ms.is_none()).count();
        if unreached > 0 {
            out.push_str(&format!(
                "- {n} members: {unreached} of {} runs did not form a full view within {} s of the last start; their other columns are missing.\n",
                runs.len(),
                BOOT_CONVERGE_MS_MAX / 1_000
            ));
        }
    }
    if out.is_empty() { out } else { format!("Against memberlist / Serf:\n\n{out}") }
}

/// An SVG plot of detection and dissemination times against cluster size, with memberlist's
/// figures as reference points.
pub fn plot(results: &[Vec<SwimResult>], path: &std::path::Path) -> Result<(), String> {
    use plotters::prelude::*;
    let point = |runs: &Vec<SwimResult>, f: fn(&SwimResult) -> Option<u64>| {
        let n = runs.first()?.nodes as f64;
        Some((n, median(runs.iter().map(f))? as f64 / 1_000.0))
    };
    let detection: Vec<(f64, f64)> =
        results.iter().filter_map(|r| point(r, |x| x.detection_all_ms)).collect();
    let first: Vec<(f64, f64)> =
        results.iter().filter_map(|r| point(r, |x| x.detection_first_ms)).collect();
    let dissemination: Vec<(f64, f64)> =
        results.iter().filter_map(|r| point(r, |x| x.dissemination_ms)).collect();
    let ymax = detection.iter().chain(&dissemination).map(|p| p.1).fold(12.0f64, f64::max) * 1.15;
    let xmax =
        results.iter().filter_map(|r| r.first()).map(|r| r.nodes as f64).fold(100.0f64, f64::max)
            * 1.5;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("SWIM (foca via the BeamClaw core), LAN model", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((5.0f64..xmax).log_scale(), 0.0f64..ymax)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("members").y_desc("seconds").draw().map_err(|e| e.to_string())?;
    type Points = [(f64, f64)];
    let series: [(&str, &Points, RGBColor); 3] = [
        ("failure detected by every member", &detection, RED),
        ("failure detected by the first member", &first, MAGENTA),
        ("join seen by 99.99 % of members", &dissemination, BLUE),
    ];
    for (label, data, color) in series {
        chart
            .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(data.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    let reference = [
        (100.0, MEMBERLIST_DETECTION_MS_100 as f64 / 1_000.0),
        (100.0, MEMBERLIST_DISSEMINATION_MS_100 as f64 / 1_000.0),
        (1000.0, MEMBERLIST_DISSEMINATION_MS_1000 as f64 / 1_000.0),
    ];
    chart
        .draw_series(reference.iter().map(|p| TriangleMarker::new(*p, 7, BLACK.filled())))
        .map_err(|e| e.to_string())?
        .label("memberlist / Serf published figures")
        .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, BLACK.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
