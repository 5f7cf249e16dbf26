//! Project automation shared by `cargo xtask` and by tests.
//!
//! Tests that need guest components get them from [`guests::ensure_built`]: it
//! builds every guest once, skips the build when nothing under `guests/` or `wit/`
//! changed, and is safe to call from many test processes at once.
//!
//! # Layout
//! - [`paths`]: where the repository, the target directory and the components are.
//! - [`guests`]: building the `guests/` workspace for `wasm32-wasip2`, and the others.
//! - [`componentize`]: the guests in Python and JavaScript, and their tools.
//! - [`python`]: Python venvs: the official Azure SDK for interop tests; componentize-py.
//! - [`node`]: npm projects: the official Azure SDK for Node.js; componentize-js.
//! - [`procs`]: the emulator and host as processes, and the host's metrics.
//! - [`demo`]: `cargo xtask run`.
//! - [`e2e`]: `cargo xtask test-e2e`.
//! - [`soak`]: `cargo xtask soak`.
//! - [`bench`](mod@bench): `cargo xtask bench` (its broker comparison and RabbitMQ node in
//!   submodules).
//! - [`fuzz`]: `cargo xtask fuzz`.
//! - [`layers`]: a crate's module graph, for the test that no module imports one that imports it back.
//!
//! # Example
//! ```no_run
//! let components = xtask::guests::ensure_built()?;
//! let sample = components.path("sample-guest")?;
//! assert!(sample.ends_with("sample-guest.wasm"));
//! # anyhow::Ok(())
//! ```

// A command-line tool: talking on stdout and stderr is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod bench;
pub mod componentize;
pub mod demo;
pub mod e2e;
pub mod fuzz;
pub mod guests;
pub mod layers;
pub mod node;
pub mod paths;
pub mod procs;
pub mod python;
pub mod soak;

/// A command's `--flag value` pairs, in order; a flag without a value is an error that names it.
pub fn flag_values(args: &[String]) -> anyhow::Result<Vec<(&str, &str)>> {
    args.chunks(2)
        .map(|pair| match pair {
            [flag, value] => Ok((flag.as_str(), value.as_str())),
            [flag] => anyhow::bail!("'{flag}' needs a value"),
            _ => unreachable!("chunks of two"),
        })
        .collect()
}

/// Arguments as a command gets them, for the tests of its options.
#[cfg(test)]
pub(crate) fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}
