//! Each bad input gives its own, specific error.

use host_runtime::config::HostConfig;
use host_runtime::engine::LoadError;
use host_runtime::{Host, StartError};

use super::support::*;

async fn start_err(component: std::path::PathBuf, toml: &str) -> StartError {
    let emu = emulator(vec![queue("test-in"), queue("reports")]).await;
    let config = HostConfig::parse(toml, "host.toml").unwrap();
    let err = Host::start(options(&emu, component, config)).await.expect_err("the host must refuse to start");
    emu.shutdown().await;
    err
}

#[tokio::test]
async fn component_files_that_are_not_guests() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wasm");
    let e = start_err(missing.clone(), "").await;
    assert!(matches!(&e, StartError::Load(LoadError::Read { path, .. }) if path.contains("missing.wasm")), "{e}");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let e = start_err(core, "").await;
    assert!(matches!(e, StartError::Load(LoadError::CoreModule { .. })), "{e}");
    assert!(e.to_string().contains("wasm32-wasip2"), "{e}");

    let text = dir.path().join("text.wasm");
    std::fs::write(&text, b"hello world").unwrap();
    assert!(matches!(start_err(text, "").await, StartError::Load(LoadError::NotWasm { .. })));

    // An empty component: valid, but exports nothing.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let e = start_err(empty, "").await;
    assert!(matches!(e, StartError::Load(LoadError::WrongWorld { .. })), "{e}");
    let text = e.to_string();
    assert!(text.contains("does not export wasi:messaging/messaging-guest@0.2.0-draft"), "{text}");
    assert!(text.contains("it imports: (nothing)"), "{text}");
}

#[tokio::test]
async fn an_unknown_channel_is_named() {
    let e =
        start_err(guest("test-guest"), "[guest]\nenv = { TEST_GUEST_CHANNELS = \"test-in,no-such-queue\" }\n").await;
    assert!(matches!(&e, StartError::Channel { channel, .. } if channel == "no-such-queue"), "{e}");
    assert!(e.to_string().contains("not found"), "{e}");
}

#[tokio::test]
async fn an_unknown_extension_key_is_named() {
    let e =
        start_err(guest("test-guest"), "[guest]\nenv = { TEST_GUEST_EXTENSIONS = \"max-conccurent-calls=3\" }\n").await;
    assert_eq!(
        e.to_string().lines().next().unwrap(),
        "guest extensions: max-conccurent-calls: unknown option; the options are max-concurrent-calls, prefetch, \
         max-batch-size, max-auto-lock-renewal, handler-timeout, receive-mode, requires-session, \
         max-concurrent-sessions, max-concurrent-calls-per-session, session-idle-timeout (or <channel>.<option>)"
    );
    let e =
        start_err(guest("test-guest"), "[guest]\nenv = { TEST_GUEST_EXTENSIONS = \"test-in.prefetch=lots\" }\n").await;
    assert!(e.to_string().contains("prefetch: \"lots\" is not a whole number"), "{e}");
}

#[tokio::test]
async fn configure_failures_are_reported() {
    let e = start_err(guest("test-guest"), "[guest]\nenv = { TEST_GUEST_CONFIGURE = \"error\" }\n").await;
    assert_eq!(e.to_string(), "the guest's configure() returned an error: other: configure was told to fail");
    let e = start_err(guest("test-guest"), "[guest]\nenv = { TEST_GUEST_CONFIGURE = \"trap\" }\n").await;
    assert!(e.to_string().starts_with("the guest's configure() trapped"), "{e}");
}

#[tokio::test]
async fn no_channels_at_all_is_an_error() {
    let e = start_err(guest("test-guest"), "[guest]\nenv = { TEST_GUEST_CHANNELS = \"\" }\n").await;
    assert!(matches!(e, StartError::NoChannels), "{e}");
}
