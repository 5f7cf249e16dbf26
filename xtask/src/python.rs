//! Python environments in the target directory: the interop tests' venv with the official
//! Azure SDK, and the Python guest's with componentize-py.
//!
//! [`ensure_venv_with`] creates `<target>/<name>` with `python3 -m venv` and installs
//! pinned requirements from PyPI, once: a stamp records what was installed, and a file lock
//! serializes concurrent callers.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::paths;

/// What the interop tests need, pinned (`websocket-client` carries the SDK's AMQP over
/// WebSockets; `pytest-xdist` runs the cases in several workers).
pub const REQUIREMENTS: &[&str] =
    &["azure-servicebus==7.15.0", "pytest==8.4.2", "pytest-xdist==3.8.0", "websocket-client==1.8.0"];

/// The interop tests' python, creating the venv and installing [`REQUIREMENTS`] if needed.
pub fn ensure_venv() -> Result<PathBuf> {
    ensure_venv_with("python-venv", REQUIREMENTS)
}

/// The python of the venv `<target>/<name>`, created with `requirements` installed if it is not
/// there with exactly those.
pub fn ensure_venv_with(name: &str, requirements: &[&str]) -> Result<PathBuf> {
    let (target, _lock) = paths::lock_in_target(name)?;

    let venv = target.join(name);
    let python = venv.join("bin").join("python");
    let stamp = venv.join("requirements.stamp");
    let wanted = requirements.join("\n");
    if python.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!("creating the Python venv {} with {}", venv.display(), requirements.join(", "));
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
        .args(requirements)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("installing {} with pip failed ({status})", requirements.join(", "));
    }
    fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}
