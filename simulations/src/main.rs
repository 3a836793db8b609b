//! `beamclaw-sim`: run seeds of the deterministic simulator, replay one, or measure SWIM at
//! scale. See docs/simulator.md.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use beamclaw_sim::faults::{FaultSet, Plant};
use beamclaw_sim::runner::{
    NODES_MIN, NODES_RUN_MAX, RunSpec, nodes_for, replay_command, run_one, run_seeds,
};
use beamclaw_sim::swim;
use beamclaw_sim::trace::Trace;
use beamclaw_sim::world::RUN_MS_DEFAULT;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Automerge allocates and frees many small objects per operation; mimalloc runs the simulator
/// faster than the system allocator (docs/benchmarks.md, "Simulator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Every fault kind, the default of `run`.
const FAULTS_ALL: &str = "partition,crash,deploy,loss,drift";
/// Cluster sizes of `swim` when not given.
const SWIM_NODES_DEFAULT: &str = "10,100,1000";
/// Largest cluster `swim` simulates.
const SWIM_NODES_MAX: usize = 5_000;
/// Most seeds `swim` runs per cluster size.
const SWIM_SEEDS_MAX: u64 = 100;
/// Most seeds one `run` accepts.
const SEEDS_MAX: u64 = 10_000_000;
/// Longest run, in virtual milliseconds.
const RUN_MS_MAX: u64 = 3_600_000;

#[derive(Parser)]
#[command(
    name = "beamclaw-sim",
    version,
    about = "Deterministic simulator of BeamClaw mesh nodes under faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run many seeds and check every invariant; exit 1 on any violation.
    Run {
        /// How many seeds to run.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        seed_start: u64,
        /// Cluster size, or a range `lo..hi` (inclusive) from which each seed picks one.
        #[arg(long, default_value = "3..9")]
        nodes: String,
        /// Faults to inject: partition,crash,deploy,loss,drift (or none).
        #[arg(long, default_value = FAULTS_ALL)]
        faults: String,
        /// Switch on a planted bug: ack-before-durable, takeover-without-raise,
        /// skip-anti-entropy, handoff-without-equal-heads.
        #[arg(long)]
        plant: Option<String>,
        /// Worker threads (default: every core).
        #[arg(long)]
        threads: Option<usize>,
        /// Virtual length of a run, in milliseconds (extended when faults end late).
        #[arg(long, default_value_t = RUN_MS_DEFAULT)]
        run_ms: u64,
    },
    /// Replay one seed; `--trace` prints every event.
    Replay {
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        nodes: usize,
        #[arg(long, default_value = FAULTS_ALL)]
        faults: String,
        #[arg(long)]
        plant: Option<String>,
        /// Print every event of the run.
        #[arg(long)]
        trace: bool,
        #[arg(long, default_value_t = RUN_MS_DEFAULT)]
        run_ms: u64,
    },
    /// Measure SWIM failure detection, dissemination and false suspicions at scale; write the
    /// table and plot into `--out`.
    Swim {
        /// Cluster sizes, comma-separated.
        #[arg(long, default_value = SWIM_NODES_DEFAULT)]
        nodes: String,
        /// Seeds per cluster size: one count for every size, or one per size of `--nodes`
        /// (e.g. `3,3,1`).
        #[arg(long, default_value = "3")]
        seeds: String,
        /// Joins per virtual second of the staged boot (the seeds start first); 0 starts every
        /// node at once.
        #[arg(long, default_value_t = swim::BOOT_JOINS_PER_S_DEFAULT)]
        boot_joins_per_s: u64,
        /// Directory for swim-at-scale.md and swim-at-scale.svg.
        #[arg(long, default_value = "docs")]
        out: PathBuf,
        /// Worker threads (default: every core).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("beamclaw-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn parse_nodes(text: &str) -> Result<RangeInclusive<usize>> {
    let text = text.trim();
    let (lo, hi) = match text.split_once("..") {
        Some((lo, hi)) => (lo.trim(), hi.trim().trim_start_matches('=')),
        None => (text, text),
    };
    let lo: usize =
        lo.parse().with_context(|| format!("--nodes {text:?}: expected N or LO..HI"))?;
    let hi: usize =
        hi.parse().with_context(|| format!("--nodes {text:?}: expected N or LO..HI"))?;
    if lo < NODES_MIN || hi > NODES_RUN_MAX || lo > hi {
        bail!(
            "--nodes {text:?}: cluster sizes must be within {NODES_MIN}..{NODES_RUN_MAX}, low first"
        );
    }
    Ok(lo..=hi)
}

fn parse_plant(plant: Option<&str>) -> Result<Option<Plant>> {
    plant.map(Plant::parse).transpose().map_err(Into::into)
}

fn check_run_ms(run_ms: u64) -> Result<()> {
    if run_ms == 0 || run_ms > RUN_MS_MAX {
        bail!("--run-ms {run_ms}: must be within 1..={RUN_MS_MAX}");
    }
    Ok(())
}

fn threads_or_all(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Run { seeds, seed_start, nodes, faults, plant, threads, run_ms } => {
            if seeds == 0 || seeds > SEEDS_MAX {
                bail!("--seeds {seeds}: must be within 1..={SEEDS_MAX}");
            }
            check_run_ms(run_ms)?;
            let mut spec = RunSpec::new(
                seeds,
                parse_nodes(&nodes)?,
                FaultSet::parse(&faults)?,
                parse_plant(plant.as_deref())?,
            );
            spec.seed_start = seed_start;
            spec.threads = threads_or_all(threads);
            spec.run_ms = run_ms;
            let bar = ProgressBar::new(seeds);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} seeds  {elapsed_precise} (eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let started = Instant::now();
            let (summary, failures) = run_seeds(&spec, Some(&bar));
            bar.finish_and_clear();
            let wall = started.elapsed().as_secs_f64();
            println!(
                "beamclaw-sim run: {} seeds from {}, nodes {}..{}, faults {}{}, {} thread(s)\n",
                spec.seeds,
                spec.seed_start,
                spec.nodes.start(),
                spec.nodes.end(),
                spec.faults,
                spec.plant.map(|p| format!(", planted bug {p}")).unwrap_or_default(),
                spec.threads
            );
            print!("{}", summary.table(wall));
            if failures.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            println!("\n{} seed(s) violated an invariant:", failures.len());
            for r in failures.iter().take(20) {
                if let Some(v) = r.violations.first() {
                    println!("  {}", v.describe(r.seed));
                }
                println!(
                    "    replay: {}",
                    replay_command(r.seed, r.nodes, spec.faults, spec.plant, spec.run_ms)
                );
            }
            if failures.len() > 20 {
                println!("  ... and {} more", failures.len() - 20);
            }
            Ok(ExitCode::from(1))
        }
        Cmd::Replay { seed, nodes, faults, plant, trace, run_ms } => {
            check_run_ms(run_ms)?;
            let range = parse_nodes(&nodes.to_string())?;
            let (faults, plant) = (FaultSet::parse(&faults)?, parse_plant(plant.as_deref())?);
            let sink = if trace { Trace::printing() } else { Trace::hashing() };
            let started = Instant::now();
            let report = run_one(seed, nodes_for(seed, &range), faults, plant, run_ms, sink);
            let wall = started.elapsed().as_secs_f64();
            let mut summary = beamclaw_sim::metrics::Summary::default();
            summary.add(&report);
            println!(
                "\nbeamclaw-sim replay: seed {seed}, {nodes} nodes, faults {faults}{}\n",
                plant.map(|p| format!(", planted bug {p}")).unwrap_or_default()
            );
            print!("{}", summary.table(wall));
            if let Some((hash, lines)) = report.trace_digest {
                println!("trace: {lines} events, hash {hash:016x}");
            }
            for v in &report.violations {
                println!("{}", v.describe(seed));
            }
            Ok(if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Swim { nodes, seeds, boot_joins_per_s, out, threads } => {
            let sizes: Vec<usize> = nodes
                .split(',')
                .map(|s| {
                    s.trim().parse::<usize>().with_context(|| {
                        format!("--nodes {nodes:?}: expected sizes like 10,100,1000")
                    })
                })
                .collect::<Result<_>>()?;
            if sizes.iter().any(|n| *n < 4 || *n > SWIM_NODES_MAX) {
                bail!("--nodes {nodes:?}: each size must be within 4..={SWIM_NODES_MAX}");
            }
            let mut seed_counts: Vec<u64> = seeds
                .split(',')
                .map(|s| {
                    s.trim().parse::<u64>().with_context(|| {
                        format!(
                            "--seeds {seeds:?}: expected a count like 3, or one per size like 3,3,1"
                        )
                    })
                })
                .collect::<Result<_>>()?;
            if seed_counts.len() == 1 {
                seed_counts = vec![seed_counts[0]; sizes.len()];
            }
            if seed_counts.len() != sizes.len() {
                bail!(
                    "--seeds {seeds:?}: {} counts for {} sizes; give one count, or one per size",
                    seed_counts.len(),
                    sizes.len()
                );
            }
            if seed_counts.iter().any(|s| *s == 0 || *s > SWIM_SEEDS_MAX) {
                bail!("--seeds {seeds:?}: each count must be within 1..={SWIM_SEEDS_MAX}");
            }
            if boot_joins_per_s > swim::BOOT_JOINS_PER_S_MAX {
                bail!(
                    "--boot-joins-per-s {boot_joins_per_s}: must be within 0..={}",
                    swim::BOOT_JOINS_PER_S_MAX
                );
            }
            let boot = swim::Boot::from_rate(boot_joins_per_s);
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let jobs: Vec<(usize, u64)> = sizes.iter().copied().zip(seed_counts).collect();
            let threads = threads_or_all(threads);
            let load_before = load_average();
            let results = run_swim(&jobs, boot, threads);
            let load_after = load_average();
            let table = swim::table(&results, boot);
            let md = out.join("swim-at-scale.md");
            let svg = out.join("swim-at-scale.svg");
            let rate = if boot_joins_per_s == swim::BOOT_JOINS_PER_S_DEFAULT {
                String::new()
            } else {
                format!(" --boot-joins-per-s {boot_joins_per_s}")
            };
            let walls: Vec<String> = results
                .iter()
                .filter_map(|runs| {
                    let n = runs.first()?.nodes;
                    let secs: Vec<String> =
                        runs.iter().map(|r| format!("{:.0}", r.wall_ms as f64 / 1_000.0)).collect();
                    Some(format!("{n} members {} s", secs.join(", ")))
                })
                .collect();
            let doc = format!(
                "# SWIM at scale\n\nGenerated by `beamclaw-sim swim --nodes {nodes} --seeds {seeds}{rate}` (medians over seeds; see docs/simulator.md) from {}, on {} with {threads} worker thread(s); load average {load_before} before the run and {load_after} after it. Wall time per run: {}.\n\n{table}\n{}",
                source_revision(),
                machine(),
                walls.join("; "),
                swim::comparison(&results),
            );
            std::fs::write(&md, doc).with_context(|| format!("writing {}", md.display()))?;
            swim::plot(&results, &svg)
                .map_err(|e| anyhow::anyhow!("plotting {}: {e}", svg.display()))?;
            print!("{table}");
            println!("wall time per run: {}", walls.join("; "));
            println!("\nwrote {} and {}", md.display(), svg.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The 1-minute load average (Linux), for the record of a measurement.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The processor and core count (Linux), for the record of a measurement.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "an unknown processor".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cores} cores of {model}")
}

/// The commit the simulator was built from, as git reports it where the run happens, and
/// whether the simulated crates had uncommitted changes.
fn source_revision() -> String {
    let git = |args: &[&str]| std::process::Command::new("git").args(args).output().ok();
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]).filter(|o| o.status.success()) else {
        return "an unknown commit".into();
    };
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    let clean = git(&["diff", "--quiet", "HEAD", "--", "mesh", "simulations"])
        .is_some_and(|o| o.status.success());
    if clean {
        format!("commit {head}")
    } else {
        format!("commit {head} with uncommitted changes in mesh/ or simulations/")
    }
}

/// Runs every experiment of `jobs` (cluster size, seeds for it), largest first, on `threads`
/// threads; the results grouped by size in the order of `jobs`.
fn run_swim(jobs: &[(usize, u64)], boot: swim::Boot, threads: usize) -> Vec<Vec<swim::SwimResult>> {
    let mut queue: Vec<(usize, u64)> =
        jobs.iter().flat_map(|(n, seeds)| (0..*seeds).map(move |s| (*n, s))).collect();
    // `pop` takes from the end: largest clusters first, they take longest.
    queue.sort_by_key(|(n, s)| (*n, std::cmp::Reverse(*s)));
    let bar = ProgressBar::new(queue.len() as u64);
    let queue = std::sync::Mutex::new(queue);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some((n, seed)) = job else { break };
                    let r = swim::experiment(n, seed, boot);
                    done.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    jobs.iter()
        .map(|(n, _)| {
            let mut runs: Vec<swim::SwimResult> =
                done.iter().filter(|r| r.nodes == *n).cloned().collect();
            runs.sort_by_key(|r| r.seed);
            runs
        })
        .collect()
}
