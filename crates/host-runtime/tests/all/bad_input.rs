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
    assert!(
        text.contains(
            "exports neither wasi:messaging/messaging-guest@0.2.0-draft (the February 2024 draft) nor \
                       wasi:messaging/incoming-handler@0.2.0-draft (the December 2024 revision)"
        ),
        "{text}"
    );
    assert!(text.contains("it imports: (nothing)"), "{text}");
}

/// A component that imports an empty instance under each of `imports` and exports the first
/// under each of `exports`: a shape no guest generator makes, for the checks that come before
/// linking.
fn component(imports: &[&str], exports: &[&str]) -> Vec<u8> {
    use wasm_encoder::{
        Component, ComponentExportKind, ComponentExportSection, ComponentImportSection, ComponentTypeRef,
        ComponentTypeSection, InstanceType,
    };
    let mut types = ComponentTypeSection::new();
    types.instance(&InstanceType::new());
    let mut imported = ComponentImportSection::new();
    for name in imports {
        imported.import(*name, ComponentTypeRef::Instance(0));
    }
    let mut exported = ComponentExportSection::new();
    for name in exports {
        exported.export(*name, ComponentExportKind::Instance, 0, None);
    }
    let mut c = Component::new();
    c.section(&types).section(&imported).section(&exported);
    c.finish()
}

#[tokio::test]
async fn a_component_that_mixes_the_revisions_is_refused_naming_the_imports() {
    use wit_interface::names;
    let dir = tempfile::tempdir().unwrap();
    let mixed = dir.path().join("mixed.wasm");
    let imports = [names::TYPES, names::CONSUMER, names::SETTLEMENT];
    std::fs::write(&mixed, component(&imports, &[names::INCOMING_HANDLER])).unwrap();
    let e = start_err(mixed, "[guest]\nchannels = [\"test-in\"]\n").await;
    assert!(matches!(e, StartError::Load(LoadError::WrongWorld { .. })), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(
            "it exports the December 2024 revision's handler but imports \
             wasi:messaging/consumer@0.2.0-draft, servicebus:messaging/settlement@0.1.0 of the February 2024 draft"
        ),
        "{text}"
    );

    let both = dir.path().join("both.wasm");
    std::fs::write(&both, component(&[names::TYPES], &[names::MESSAGING_GUEST, names::INCOMING_HANDLER])).unwrap();
    let text = start_err(both, "").await.to_string();
    assert!(text.contains("exports both"), "{text}");
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
