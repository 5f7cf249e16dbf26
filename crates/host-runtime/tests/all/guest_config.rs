//! `wasi:config/store`: a guest of either revision reads its settings from host.toml's
//! `[guest.config]`.

use std::time::Duration;

use super::support::*;

const CONFIG: &str = "[guest.config]\ngreeting = \"hello\"\n\"db.url\" = \"postgres://db:5432/orders\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feb2024_guest_reads_its_settings() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("test-in"), queue("reports")]).await;
    let host = test_host(&emu, "test-in", CONFIG).await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_script(&c, "test-in", "f-1", "config:greeting;config:db.url;config:missing").await;
    assert_eq!(
        reports.get("f-1").await,
        ["config:greeting => ok hello", "config:db.url => ok postgres://db:5432/orders", "config:missing => ok (none)"]
    );
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dec2024_guest_reads_its_settings() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("in"), queue("reports")]).await;
    let host = handler_host(&emu, &["in"], CONFIG).await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_handler_script(&c, "in", "d-1", "config:greeting;config:db.url;config:missing").await;
    assert_eq!(
        reports.get("d-1").await,
        ["config:greeting => ok hello", "config:db.url => ok postgres://db:5432/orders", "config:missing => ok (none)"]
    );
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[test]
fn a_config_value_that_is_not_a_string_is_refused_with_its_line() {
    let e = host_runtime::config::HostConfig::parse("[guest.config]\nretries = 3\n", "host.toml").unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("host.toml:2"), "{text}");
}
