//! The official Node.js SDK, `@azure/service-bus` 7.9 (on rhea), against the emulator:
//! `tests/node/test_sdk.cjs`, run with Node's own test runner.

use std::time::Duration;

use servicebus_emulator::{Config, Emulator, TopicConfig};

use super::support::{admin_connection_string, queue, queue_with, session_queue, with_moving_entities};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_works_against_the_emulator() -> anyhow::Result<()> {
    let modules = tokio::task::spawn_blocking(xtask::node::ensure_node_modules).await??;
    let plain = ["n-basic", "n-schedule", "n-peek", "n-rad", "n-abandon", "n-deadletter", "n-defer"];
    let mut queues: Vec<_> = plain.iter().map(|q| queue(q)).collect();
    queues.push(queue_with("n-renew", Duration::from_secs(4), 10));
    queues.push(queue_with("n-lockexpiry", Duration::from_secs(2), 10));
    queues.push(queue_with("n-poison", Duration::from_secs(30), 2));
    for name in ["n-sessions", "n-sessionnext", "n-sessionsettle"] {
        queues.push(session_queue(name, Duration::from_secs(60), 10));
    }
    let topics = vec![
        TopicConfig {
            properties: Default::default(),
            name: "n-topic".into(),
            subscriptions: vec![queue("a"), queue("b")],
            rules: Default::default(),
        },
        TopicConfig {
            properties: Default::default(),
            name: "n-rules".into(),
            subscriptions: vec![queue("filtered"), queue("all")],
            rules: Default::default(),
        },
    ];
    // The administration client speaks HTTPS only: the management endpoint has a certificate.
    let cert = super::tls::TestCert::new();
    let emulator = Emulator::builder()
        .config(with_moving_entities(Config { queues, topics, ..Config::default() }))
        .bind("127.0.0.1:0".parse()?)
        .tls(cert.cert(), cert.key(), "127.0.0.1:0".parse()?)
        .management("127.0.0.1:0".parse()?)
        .start()
        .await?;
    let management = emulator.management_addr().expect("the management endpoint is on");

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
    let files = ["test_sdk.cjs", "test_admin.cjs"].map(|f| format!("{dir}/{f}"));
    let output = tokio::process::Command::new(xtask::node::node())
        .args(["--test", "--test-reporter=spec", "--test-concurrency=1"])
        .args(&files)
        .env("NODE_PATH", &modules)
        .env("NODE_EXTRA_CA_CERTS", cert.cert())
        .env("EMULATOR_ADMIN_CONNECTION_STRING", admin_connection_string(management))
        .env("EMULATOR_CONNECTION_STRING", emulator.connection_string())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    emulator.shutdown().await;
    // The spec reporter ends with "ℹ pass N" and "ℹ fail N" lines.
    let count = |what: &str| {
        stdout.lines().find_map(|l| l.trim_start_matches('ℹ').trim().strip_prefix(what)?.trim().parse::<u32>().ok())
    };
    let (passed, failed) = (count("pass"), count("fail"));
    assert!(
        output.status.success() && failed == Some(0),
        "node --test failed: {passed:?} passed, {failed:?} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let mut cases = 0;
    for file in &files {
        cases += std::fs::read_to_string(file)?.lines().filter(|l| l.starts_with("test(")).count();
    }
    assert_eq!(passed, Some(cases as u32), "every case must run\n{stdout}");
    assert_eq!(count("skipped"), Some(0), "no case may be skipped\n{stdout}");
    Ok(())
}
