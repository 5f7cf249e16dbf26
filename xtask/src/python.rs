//! The Python environment for interop tests: a venv with the official Azure SDK.
//!
//! [`ensure_venv`] creates `<target>/python-venv` with `python3 -m venv` and
//! installs [`REQUIREMENTS`] from PyPI, once: a stamp records what was installed,
//! and a file lock serializes concurrent callers.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::paths;

/// What the interop tests need, pinned (`websocket-client` carries the SDK's AMQP over WebSockets).
pub const REQUIREMENTS: &[&str] = &["azure-servicebus==7.15.0", "pytest==8.4.2", "websocket-client==1.8.0"];

/// The venv's python, creating the venv and installing [`REQUIREMENTS`] if needed.
pub fn ensure_venv() -> Result<PathBuf> {
    let (target, _lock) = paths::lock_in_target("python-venv")?;

    let venv = target.join("python-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("requirements.stamp");
    let wanted = REQUIREMENTS.join("\n");
    if python.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!("creating the Python venv for interop tests at {}", venv.display());
    let system_python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&system_python)
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .with_context(|| format!("running `{system_python} -m venv` (is Python 3 installed?)"))?;
    if !status.success() {
        bail!(
            "`{system_python} -m venv {}` failed ({status}); on Debian, `apt-get install python3-venv`",
            venv.display()
        );
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(REQUIREMENTS)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("installing {} with pip failed ({status})", REQUIREMENTS.join(", "));
    }
    fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}
