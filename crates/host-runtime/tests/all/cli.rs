//! The `messaging-host` binary: a clean exit on SIGTERM with messages in flight, and
//! errors for bad arguments.

use std::process::{Command, Stdio};
use std::time::Duration;

use servicebus_emulator::QueueCounts;

use super::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_messaging-host");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_messages_in_flight_exits_zero_and_loses_nothing() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("in"), queue("reports")]).await;
    let dir = tempfile::tempdir()?;
    let toml = dir.path().join("host.toml");
    std::fs::write(&toml, "[guest]\nallowed-targets = [\"reports\"]\nenv = { TEST_GUEST_CHANNELS = \"in\" }\n")?;
    let c = client(&emu);
    for i in 0..3 {
        send_script(&c, "in", &format!("t{i}"), "sleep:1500;complete").await;
    }
    let mut host = Command::new(BIN)
        .arg(guest("test-guest"))
        .args(["--config"])
        .arg(&toml)
        .args(["--grace-period", "10s", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .env("SERVICEBUS_CONNECTION_STRING", emu.connection_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    eventually("three messages in flight", Duration::from_secs(30), || emu.queue_counts("in").unwrap().locked == 3)
        .await;
    assert!(Command::new("kill").args(["-TERM", &host.id().to_string()]).status()?.success());
    let status = tokio::task::spawn_blocking(move || host.wait()).await??;
    assert!(status.success(), "{status}");
    // The handlers finished within the grace period: all three completed.
    assert_eq!(emu.queue_counts("in").unwrap(), QueueCounts::default());
    emu.shutdown().await;
    Ok(())
}

#[test]
fn without_a_connection_it_says_how_to_give_one() {
    let out = Command::new(BIN)
        .arg("guest.wasm")
        .env_remove("SERVICEBUS_CONNECTION_STRING")
        .env_remove("SERVICE_BUS_NAMESPACE")
        .env_remove("SERVICE_BUS_POLICY_NAME")
        .env_remove("SERVICE_BUS_POLICY_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no connection: pass --connection-string, set SERVICEBUS_CONNECTION_STRING"), "{err}");
}

#[test]
fn a_partial_set_of_service_bus_variables_names_what_is_missing() {
    let out = Command::new(BIN)
        .arg("guest.wasm")
        .env_remove("SERVICEBUS_CONNECTION_STRING")
        .env("SERVICE_BUS_NAMESPACE", "contoso")
        .env_remove("SERVICE_BUS_POLICY_NAME")
        .env_remove("SERVICE_BUS_POLICY_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SERVICE_BUS_POLICY_NAME and SERVICE_BUS_POLICY_KEY must be set too"), "{err}");
}
