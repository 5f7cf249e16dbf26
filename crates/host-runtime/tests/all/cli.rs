//! The `messaging-host` binary: a clean exit on SIGTERM with messages in flight or during
//! start-up, and errors for bad arguments.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use servicebus_emulator::QueueCounts;

use super::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_messaging-host");

/// The host binary on the test guest with `config`, on `emu`, logging to a piped stderr.
fn test_guest_host(emu: &servicebus_emulator::Emulator, config: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg(guest("test-guest"))
        .arg("--config")
        .arg(config)
        .arg("--cache-dir")
        .arg(cache)
        .env("SERVICEBUS_CONNECTION_STRING", emu.connection_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

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
    // On one worker thread: the three calls are in flight at once all the same.
    let mut host = test_guest_host(&emu, &toml, &dir.path().join("cache"))
        .args(["--grace-period", "10s", "--worker-threads", "1"])
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

/// A signal while the host is still starting (compiling its guest, with an empty cache) stops
/// it cleanly, exit 0, having taken no message; it is not killed by the signal's default action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_exits_zero_and_takes_nothing() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("in")]).await;
    send_script(&client(&emu), "in", "early", "complete").await;
    let dir = tempfile::tempdir()?;
    let toml = dir.path().join("host.toml");
    std::fs::write(&toml, "[guest]\nenv = { TEST_GUEST_CHANNELS = \"in\" }\n")?;
    let host = test_guest_host(&emu, &toml, &dir.path().join("empty-cache")).spawn()?;
    // Long enough to be past the first lines of `main` (a few ms), well short of compiling the
    // guest in a debug build (over half a second here).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(Command::new("kill").args(["-TERM", &host.id().to_string()]).status()?.success());
    let out = tokio::task::spawn_blocking(move || host.wait_with_output()).await??;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    assert!(log.contains("stopped during start-up"), "{log}");
    assert_eq!(emu.queue_counts("in").unwrap(), QueueCounts { active: 1, ..Default::default() });
    emu.shutdown().await;
    Ok(())
}

/// Runs `cmd`, which must fail: what it wrote to stderr.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn worker_threads_out_of_range_are_refused() {
    for value in ["0", "1025", "many"] {
        let err = refused(Command::new(BIN).args(["guest.wasm", "--worker-threads", value]));
        assert!(err.contains(&format!("invalid value '{value}' for '--worker-threads")), "{value}: {err}");
    }
}

#[test]
fn without_a_connection_it_says_how_to_give_one() {
    let err = refused(
        Command::new(BIN)
            .arg("guest.wasm")
            .env_remove("SERVICEBUS_CONNECTION_STRING")
            .env_remove("SERVICE_BUS_NAMESPACE")
            .env_remove("SERVICE_BUS_POLICY_NAME")
            .env_remove("SERVICE_BUS_POLICY_KEY"),
    );
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

/// Finding 9: `--max-memory-mib 17592186044480` silently became a 64 MiB cap (the shift wrapped).
#[test]
fn a_memory_cap_out_of_range_is_refused_not_wrapped() {
    for value in ["17592186044480", "0", "4097"] {
        let err = refused(Command::new(BIN).args(["guest.wasm", "--max-memory-mib", value]));
        assert!(err.contains("is not a memory cap a guest can have: choose 1 to 4096"), "{value}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("host.toml");
    std::fs::write(&toml, "[guest]\nmax-memory-mib = 17592186044480\n").unwrap();
    let err = refused(
        Command::new(BIN)
            .args(["guest.wasm", "--connection-string", "Endpoint=sb://h/;SharedAccessKeyName=a;SharedAccessKey=b"])
            .arg("--config")
            .arg(&toml),
    );
    assert!(err.contains("[guest]: max-memory-mib: 17592186044480 MiB is not a memory cap"), "{err}");
}

/// `--log-format json`: one JSON object a line; a line logged about a handler call carries the
/// call's trace; with the call spans enabled (`host_runtime::worker=debug`), the span too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_calls_trace() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("in")]).await;
    let dir = tempfile::tempdir()?;
    let toml = dir.path().join("host.toml");
    std::fs::write(&toml, "[guest]\nenv = { TEST_GUEST_CHANNELS = \"in\" }\n")?;
    let mut m = amqp_servicebus::Message::new("complete;err");
    m.application_properties.insert(
        "traceparent".into(),
        amqp_servicebus::SimpleValue::String("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    );
    client(&emu).sender("in").send(m).await?;
    let host = test_guest_host(&emu, &toml, &dir.path().join("cache"))
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info,host_runtime::worker=debug")
        .spawn()?;
    eventually("the message handled", Duration::from_secs(60), || {
        emu.queue_counts("in").unwrap() == QueueCounts::default()
    })
    .await;
    assert!(Command::new("kill").args(["-TERM", &host.id().to_string()]).status()?.success());
    let out = tokio::task::spawn_blocking(move || host.wait_with_output()).await??;
    let log = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "{log}");
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let error = lines
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("handler returned an error")))
        .unwrap_or_else(|| panic!("no line for the handler's error: {log}"));
    assert_eq!(error["level"], "INFO");
    assert_eq!(error["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{error}");
    assert_eq!(error["span_id"], error["span"]["span_id"]);
    assert_eq!(error["span"]["name"], "process");
    assert_eq!(error["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{error}");
    assert_eq!(error["span"]["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(error["span"]["messaging.destination.name"], "in");
    emu.shutdown().await;
    Ok(())
}

/// A component built from upstream's WIT alone (`sample-handler`, `messaging-core` at the
/// vendored commit) runs on the binary with `--channel`: `ok` completes, an `error` abandons,
/// and what it sends arrives with its content type and metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_dec2024_component_runs_with_channel_flags() -> anyhow::Result<()> {
    let orders = queue_with("orders", Duration::from_secs(30), 1);
    let emu = emulator(vec![orders, queue("payments")]).await;
    let dir = tempfile::tempdir()?;
    let toml = dir.path().join("host.toml");
    std::fs::write(&toml, "[guest]\nallowed-targets = [\"payments\"]\n")?;
    let c = client(&emu);
    c.sender("orders")
        .send(amqp_servicebus::Message::new(r#"{"id":"o-1","customer":"ada","amount_cents":1200}"#))
        .await?;
    c.sender("orders").send(amqp_servicebus::Message::new("not an order")).await?;
    let host = Command::new(BIN)
        .arg(guest("sample-handler"))
        .args(["--channel", "orders", "--config"])
        .arg(&toml)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env("SERVICEBUS_CONNECTION_STRING", emu.connection_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // The order became a payment and was completed; the bad one was abandoned, which with
    // MaxDeliveryCount 1 dead-letters it.
    let done = QueueCounts { dead_lettered: 1, ..Default::default() };
    eventually("both orders settled", Duration::from_secs(30), || emu.queue_counts("orders").unwrap() == done).await;
    let payment = c.receiver("payments").receive(1, Duration::from_secs(5)).await?;
    assert_eq!(payment[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(payment[0].correlation_id.as_deref(), Some("o-1"));
    let order_id = payment[0].application_properties.get("order-id");
    assert_eq!(order_id, Some(&amqp_servicebus::SimpleValue::String("o-1".into())));
    let dead = c.receiver("orders/$DeadLetterQueue").receive(1, Duration::from_secs(5)).await?;
    assert_eq!(dead[0].dead_letter_reason(), Some("MaxDeliveryCountExceeded"));

    assert!(Command::new("kill").args(["-TERM", &host.id().to_string()]).status()?.success());
    let out = tokio::task::spawn_blocking(move || host.wait_with_output()).await??;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    assert!(log.contains("the guest targets the December 2024 revision of wasi:messaging"), "{log}");
    assert!(log.contains("handler returned an error: other: not an order"), "{log}");
    emu.shutdown().await;
    Ok(())
}
