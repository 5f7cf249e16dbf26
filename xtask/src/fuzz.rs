//! `cargo xtask fuzz`: builds the targets in `fuzz/` with libFuzzer's coverage
//! instrumentation and runs each for a bounded time.
//!
//! On stable Rust: the instrumentation is LLVM's SanitizerCoverage, switched on with
//! stable `-C` flags (what cargo-fuzz passes, minus the nightly-only sanitizers), and
//! libFuzzer comes from the `libfuzzer-sys` crate. `--target` is always given, so the
//! flags reach the fuzzed crates and not build scripts or proc macros.
//!
//! Each target starts from its committed seeds (`fuzz/corpus/<target>/`, read only) and
//! grows a working corpus under `target/fuzz/corpus/<target>/`. A crash, a panic, a
//! timeout or an out-of-memory stops the run with the input saved under
//! `target/fuzz/artifacts/<target>/` and the command that replays it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{guests, paths};

/// SanitizerCoverage as libFuzzer wants it: inline 8-bit counters, the PC table, and
/// comparison tracing; `--cfg fuzzing` as cargo-fuzz sets it.
const COVERAGE_FLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
];

/// What to fuzz, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Seconds per target.
    pub seconds: u64,
    /// Targets run at once (each fuzzer is one process on one core).
    pub jobs: usize,
    /// Targets to run; empty: all of them.
    pub targets: Vec<String>,
}

impl Options {
    /// `[--time SECONDS] [--jobs N] [TARGET …]`; 60 s per target, as many at once as there are
    /// cores, by default.
    pub fn parse(args: &[String]) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut options = Self { seconds: 60, jobs: cores, targets: Vec::new() };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--time" => {
                    let value = args.next().context("--time needs a number of seconds")?;
                    options.seconds = value
                        .trim_end_matches('s')
                        .parse()
                        .ok()
                        .filter(|s| *s > 0)
                        .with_context(|| format!("--time {value:?} is not a positive number of seconds"))?;
                }
                "--jobs" => {
                    let value = args.next().context("--jobs needs a number of targets to run at once")?;
                    options.jobs = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("--jobs {value:?} is not a positive number"))?;
                }
                flag if flag.starts_with('-') => {
                    bail!("unknown option {flag:?} (fuzz takes --time SECONDS, --jobs N and target names)")
                }
                target => options.targets.push(target.to_string()),
            }
        }
        Ok(options)
    }
}

/// The targets, as `fuzz/Cargo.toml` lists them (`[[bin]]` names).
pub fn targets() -> Result<Vec<String>> {
    let manifest = paths::repo_root().join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(name) = line.strip_prefix("name = ") {
            names.push(name.trim_matches('"').to_string());
        }
    }
    Ok(names)
}

/// Builds the targets and runs the chosen ones for `options.seconds` each.
pub fn run(options: Options) -> Result<()> {
    let all = targets()?;
    for t in &options.targets {
        if !all.contains(t) {
            bail!("no fuzz target {t:?}; the targets are {}", all.join(", "));
        }
    }
    let chosen = if options.targets.is_empty() { all } else { options.targets.clone() };
    let binaries = build()?;
    let fuzz_dir = paths::target_dir().join("fuzz");
    // `jobs` workers take the targets in order; each target's line keeps its place.
    let next = std::sync::Mutex::new(chosen.iter().enumerate());
    let results = std::sync::Mutex::new(vec![None; chosen.len()]);
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.min(chosen.len()) {
            scope.spawn(|| {
                loop {
                    let Some((i, target)) = next.lock().unwrap_or_else(|p| p.into_inner()).next() else { return };
                    let started = Instant::now();
                    let result = run_one(&binaries.join(target), target, &fuzz_dir, options.seconds)
                        .map(|runs| (runs, started.elapsed().as_secs_f64()));
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result.map_err(|e| format!("{e:#}")));
                }
            });
        }
    });
    let mut summary = Vec::new();
    let mut failures = Vec::new();
    for (target, result) in chosen.iter().zip(results.into_inner().unwrap_or_else(|p| p.into_inner())) {
        match result.expect("every target ran") {
            Ok((runs, seconds)) => summary.push(format!("fuzz {target}: {runs} runs in {seconds:.0} s, no failure")),
            Err(e) => {
                eprintln!("{e}");
                summary.push(format!("fuzz {target}: FAILED"));
                failures.push(target.clone());
            }
        }
    }
    for line in &summary {
        println!("{line}");
    }
    println!("{} passed, {} failed", chosen.len() - failures.len(), failures.len());
    if !failures.is_empty() {
        bail!("fuzz targets with failures: {} (their inputs are printed above)", failures.join(", "));
    }
    Ok(())
}

/// Builds every target; returns the directory of the binaries.
fn build() -> Result<PathBuf> {
    let triple = host_triple()?;
    let target_dir = paths::target_dir().join("fuzz");
    let mut rustflags: Vec<String> = COVERAGE_FLAGS.iter().map(|s| s.to_string()).collect();
    if let Ok(extra) = std::env::var("RUSTFLAGS") {
        rustflags.extend(extra.split_whitespace().map(String::from));
    }
    println!("== building the fuzz targets (libFuzzer, {triple})");
    let status = guests::cargo()
        .current_dir(paths::repo_root().join("fuzz"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\u{1f}"))
        .args(["build", "--release", "--locked", "--bins", "--target", &triple])
        .status()
        .context("running cargo build for fuzz/")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    Ok(target_dir.join(triple).join("release"))
}

fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().context("running rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("host: ")).map(str::to_string).context("rustc -vV named no host triple")
}

/// Runs one target; returns how many inputs it ran.
fn run_one(binary: &Path, target: &str, fuzz_dir: &Path, seconds: u64) -> Result<u64> {
    let corpus = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds = paths::repo_root().join("fuzz/corpus").join(target);
    let mut cmd = Command::new(binary);
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-max_len=65536")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    println!("== fuzz {target} for {seconds} s");
    let out = cmd.output().with_context(|| format!("running {}", binary.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        let artifact = log
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map(str::trim)
            .unwrap_or("(no input was saved)");
        bail!(
            "fuzz target {target} found a failure ({}):\n{}\n\nthe input: {artifact}\nreplay it: {} {artifact}",
            out.status,
            tail.join("\n"),
            binary.display()
        );
    }
    let runs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_targets() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Options::parse(&[]).unwrap(), Options { seconds: 60, jobs: cores, targets: vec![] });
        let o = Options::parse(&args(&["--time", "30s", "--jobs", "3", "amqp_wire"])).unwrap();
        assert_eq!(o, Options { seconds: 30, jobs: 3, targets: vec!["amqp_wire".into()] });
        assert!(Options::parse(&args(&["--time", "0"])).is_err());
        assert!(Options::parse(&args(&["--jobs", "0"])).is_err());
        assert!(Options::parse(&args(&["--workers", "2"])).is_err());
        let all = targets().unwrap();
        assert!(all.contains(&"emulator_connection".to_string()) && all.len() >= 10, "{all:?}");
        for t in &all {
            assert!(paths::repo_root().join("fuzz/fuzz_targets").join(format!("{t}.rs")).is_file(), "{t}");
            assert!(paths::repo_root().join("fuzz/corpus").join(t).is_dir(), "{t} has no seed corpus");
        }
    }
}
