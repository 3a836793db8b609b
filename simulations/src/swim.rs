//! SWIM at scale: failure detection, dissemination and false suspicions of the membership layer
//! (foca through the real node core), on the LAN network model, at 10 to 1,000 nodes.
//!
//! One experiment per cluster size and seed, on full `Node`s without sessions:
//! 1. boot `n` nodes (each joins through the seeds) and wait until every node sees all `n`;
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
use crate::world::{SimConfig, World};

/// How long a member stalls in the false-suspicion experiment, in milliseconds.
pub const STALL_MS: u64 = 2_000;
/// How long after the stall begins declarations of its death are counted, in milliseconds.
pub const STALL_WATCH_MS: u64 = 30_000;
/// Share of members that must have seen a change for it to count as disseminated.
pub const DISSEMINATION_SHARE: f64 = 0.9999;
/// Longest wait for the cluster to form, in milliseconds.
pub const BOOT_MS_MAX: u64 = 300_000;
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

/// One experiment's results.
#[derive(Clone, Debug, Default)]
pub struct SwimResult {
    pub nodes: usize,
    pub seed: u64,
    /// Time for the cluster to form from a cold start (every node sees every node), in ms.
    pub boot_ms: Option<u64>,
    /// Join seen by 99.99 % of members, in ms.
    pub dissemination_ms: Option<u64>,
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

/// Runs the experiment for `nodes` members with `seed`.
pub fn experiment(nodes: usize, seed: u64) -> SwimResult {
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
    for i in 0..nodes {
        world.start_node(i);
    }
    let boot_deadline = BOOT_MS_MAX * US_PER_MS;
    while world.now() < boot_deadline {
        let t = world.now() + POLL_MS * US_PER_MS;
        world.run_until(t);
        if world.membership_converged() {
            result.boot_ms = Some(ms(world.now()));
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
    world.run_until(settle);

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
    let mut first_seen: BTreeMap<usize, Micros> = BTreeMap::new();
    for n in
        world.member_notes.iter().filter(|n| n.at >= since && n.up == up && n.subject == subject)
    {
        first_seen.entry(n.observer).or_insert(n.at);
    }
    let mut times: Vec<Micros> = first_seen.into_values().collect();
    times.sort_unstable();
    if needed == 0 { Some(since) } else { times.get(needed - 1).copied() }
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

/// The markdown table of results per cluster size (medians over seeds).
pub fn table(results: &[Vec<SwimResult>]) -> String {
    let fmt = |v: Option<u64>| {
        v.map_or_else(|| "not reached".into(), |ms| format!("{:.1} s", ms as f64 / 1_000.0))
    };
    let mut out = String::from(
        "| members | seeds | boot (all see all) | 99.99 % dissemination of a join | detection: first member | detection: every member | members declaring a 2 s stall down | memberlist / Serf |\n|---:|---:|---:|---:|---:|---:|---:|---|\n",
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
            "| {n} | {} | {} | {} | {} | {} | {} | {reference} |\n",
            runs.len(),
            fmt(median(runs.iter().map(|r| r.boot_ms))),
            fmt(median(runs.iter().map(|r| r.dissemination_ms))),
            fmt(median(runs.iter().map(|r| r.detection_first_ms))),
            fmt(median(runs.iter().map(|r| r.detection_all_ms))),
            false_downs.join(", "),
        ));
    }
    out
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
