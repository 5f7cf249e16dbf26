//! The official Python SDK, `azure-servicebus` 7.15, against the emulator: `tests/python/test_sdk.py`.

use std::time::Duration;

use servicebus_emulator::{Config, Emulator, Keys, Rights};

use super::support::{admin_connection_string, queue, queue_with, session_queue, with_moving_entities};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_works_against_the_emulator() -> anyhow::Result<()> {
    let python = tokio::task::spawn_blocking(xtask::python::ensure_venv).await??;
    let queues =
        ["basic", "settle", "abandon", "deadletter", "defer", "schedule", "peek", "rad", "auth", "rights", "websocket"];
    let mut config: Vec<_> = queues.iter().map(|q| queue(q)).collect();
    config.push(queue_with("renew", Duration::from_secs(4), 10));
    config.push(queue_with("lockexpiry", Duration::from_secs(2), 10));
    config.push(queue_with("poison", Duration::from_secs(30), 2));
    let minute = Duration::from_secs(60);
    for name in ["sessions", "sessionnext", "sessiondefer"] {
        config.push(session_queue(name, minute, 10));
    }
    config.push(session_queue("sessionpoison", minute, 2));
    config.push(session_queue("sessionlock", Duration::from_secs(2), 10));
    // The first key is the connection string's; two more with fewer rights for test_rights_*.
    let keys = Keys::default().with_rights("SendOnlyKey", "send-only-secret", Rights::SEND).with_rights(
        "ListenOnlyKey",
        "listen-only-secret",
        Rights::LISTEN,
    );
    // The administration client speaks HTTPS only: the management endpoint has a certificate.
    let cert = super::tls::TestCert::new();
    let emulator = Emulator::builder()
        .config(with_moving_entities(Config { queues: config, ..Config::default() }))
        .keys(keys)
        .bind("127.0.0.1:0".parse()?)
        .websocket("127.0.0.1:0".parse()?)
        .tls(cert.cert(), cert.key(), "127.0.0.1:0".parse()?)
        .management("127.0.0.1:0".parse()?)
        .start()
        .await?;
    let management = emulator.management_addr().expect("the management endpoint is on");

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
    let output = tokio::process::Command::new(&python)
        // Four workers: a case mostly waits (for a lock to lapse, for nothing more to arrive).
        // Cases that share a queue are in one `xdist_group` (tests/python/test_sdk.py).
        .args(["-m", "pytest", "-v", "-p", "no:cacheprovider", "-n", "4", "--dist", "loadgroup"])
        .args([format!("{dir}/test_sdk.py"), format!("{dir}/test_admin.py")])
        .env("EMULATOR_ADMIN_CONNECTION_STRING", admin_connection_string(management))
        .env("EMULATOR_CA", cert.cert())
        .env("EMULATOR_CONNECTION_STRING", emulator.connection_string())
        .env("EMULATOR_ENDPOINT", format!("sb://{}", emulator.local_addr()))
        .env("EMULATOR_WS_ENDPOINT", format!("sb://{}", emulator.ws_addr().expect("the WebSocket listener is on")))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    emulator.shutdown().await;
    // pytest's summary says "N passed" in its last line; cargo's own summary follows ours.
    let summary = stdout.lines().rev().find(|l| l.contains("passed") || l.contains("failed")).unwrap_or("");
    assert!(output.status.success(), "pytest failed: {summary}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(!summary.contains("skipped"), "no case may be skipped: {summary}");
    let mut cases = 0;
    for file in ["test_sdk.py", "test_admin.py"] {
        cases +=
            std::fs::read_to_string(format!("{dir}/{file}"))?.lines().filter(|l| l.starts_with("def test_")).count();
    }
    assert!(summary.contains(&format!(" {cases} passed")), "every case must run ({cases}): {summary}\n{stdout}");
    Ok(())
}

/// `tests/python/restart.py`: what the administration client made, with the messages and
/// session state sent to it, is there after the durable emulator restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_finds_what_it_made_after_a_durable_restart() -> anyhow::Result<()> {
    let python = tokio::task::spawn_blocking(xtask::python::ensure_venv).await??;
    let dir = tempfile::tempdir()?;
    let cert = super::tls::TestCert::new();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/restart.py");
    for phase in ["before", "after"] {
        let emulator = Emulator::builder()
            .config(Config { queues: Vec::new(), ..Config::default() })
            .bind("127.0.0.1:0".parse()?)
            .management("127.0.0.1:0".parse()?)
            .tls(cert.cert(), cert.key(), "127.0.0.1:0".parse()?)
            .data_dir(dir.path())
            .start()
            .await?;
        let management = emulator.management_addr().expect("the management endpoint is on");
        let output = tokio::process::Command::new(&python)
            .args([script, phase])
            .env("EMULATOR_ADMIN_CONNECTION_STRING", admin_connection_string(management))
            .env("EMULATOR_CA", cert.cert())
            .env("EMULATOR_CONNECTION_STRING", emulator.connection_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .await?;
        emulator.shutdown().await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{phase} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
        assert_eq!(stdout.trim(), format!("{phase}: ok"));
    }
    Ok(())
}
