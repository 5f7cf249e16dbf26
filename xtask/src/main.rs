//! `cargo xtask <command>`: see `cargo xtask help`.

#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use xtask::{guests, paths};

const HELP: &str = "\
usage: cargo xtask <command>

commands:
  build-guests   build every guest in guests/ for wasm32-wasip2 (skipped when nothing changed)
                 and place the components in target/components/
  run [--follow] the demo: start the emulator (unless SERVICEBUS_CONNECTION_STRING is set), send orders,
                 run the host with the sample guest and a live view; exit when the orders are processed
                 (--follow: keep running until Ctrl-C)
  test           build the guests, then run every test: unit, integration, interop, end-to-end,
                 and a short soak (1000 messages, every fault kind)
  test-e2e [TEXT]
                 the end-to-end scenarios, with the emulator and host binaries (only those
                 whose name contains TEXT, if given)
  soak [--messages N] [--duration D]
                 the chaos soak: N messages (default 10000) over four channels of a durable emulator,
                 two hosts, and faults at once: traps, deadline overruns, host SIGKILLs, dropped
                 connections, an emulator SIGKILL; accounts for every message and fails on a loss
                 or an unexplained duplicate; with --duration (90s, 30m, 2h), rounds repeat until
                 it has passed
  bench [--repeats N] [--cells QxC,…] [--only consumers|brokers] [--batch B]
        [--consumers host,native,python] [--baseline-drain PATH] [--baseline-host DIR]
                 end-to-end numbers (release builds): start-up, idle memory, throughput draining a
                 backlog, CPU per message and latency at the same offered loads (250 and 1000
                 msgs/s) of host vs native vs Python SDK, emulator vs RabbitMQ; N runs each
                 (default 3) in each cell of Q queues × C concurrent calls (default
                 1x1,1x16,4x1,4x16); --batch B: the host takes B messages per call;
                 --consumers: only these; --baseline-drain PATH: also another build of the native
                 consumer (examples/drain from another commit), in the same runs; --baseline-host
                 DIR: also another build's messaging-host with its test-guest.wasm, in DIR
  fuzz [--time SECONDS] [--jobs N] [TARGET …]
                 build the fuzz targets in fuzz/ (libFuzzer) and run each for SECONDS (default 60),
                 N at once (default: one per core);
                 a crash stops the run with the input under target/fuzz/artifacts/
  help           show this message
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        eprint!("{HELP}");
        bail!("no command given");
    };
    match command.as_str() {
        "build-guests" => {
            no_arguments(command, rest)?;
            let components = guests::ensure_built()?;
            guests::print_components(&components, &mut std::io::stdout())
        }
        "test" => {
            no_arguments(command, rest)?;
            test()
        }
        "bench" => xtask::bench::run(xtask::bench::Options::parse(rest)?),
        "soak" => xtask::soak::run(xtask::soak::Options::parse(rest)?),
        "fuzz" => xtask::fuzz::run(xtask::fuzz::Options::parse(rest)?),
        "test-e2e" => match rest {
            [] => xtask::e2e::run(None),
            [text] => xtask::e2e::run(Some(text)),
            _ => bail!("test-e2e takes at most one argument, a part of a scenario's name"),
        },
        "run" => match rest {
            [] => xtask::demo::run(false),
            [flag] if flag == "--follow" => xtask::demo::run(true),
            [other, ..] => bail!("'run' takes only --follow, but got '{other}'"),
        },
        "help" | "--help" | "-h" => {
            eprint!("{HELP}");
            Ok(())
        }
        other => {
            eprint!("{HELP}");
            bail!("unknown command '{other}'")
        }
    }
}

fn no_arguments(command: &str, rest: &[String]) -> Result<()> {
    if let Some(extra) = rest.first() {
        bail!("'{command}' takes no arguments, but got '{extra}'");
    }
    Ok(())
}

/// Every test: guests first (tests load them), then the workspace's unit, integration and doc tests.
fn test() -> Result<()> {
    guests::ensure_built()?;
    let status = guests::cargo()
        .current_dir(paths::repo_root())
        // One target directory for the build, the tests it runs, and what they build.
        .env("CARGO_TARGET_DIR", paths::target_dir())
        .args(["test", "--workspace", "--locked"])
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    xtask::e2e::run(None)?;
    // The short soak: every fault kind at least once.
    xtask::soak::run(xtask::soak::Options { messages: 1_000, duration: None })
}
