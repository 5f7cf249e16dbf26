//! The sample guest: every path of the order pipeline, read back from the queues.

use std::sync::atomic::Ordering;
use std::time::Duration;

use amqp_servicebus::Message;
use host_runtime::Host;
use host_runtime::config::HostConfig;
use servicebus_emulator::QueueCounts;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_guest_completes_redirects_retries_and_dead_letters() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("orders"), queue("payments"), queue("review")]).await;
    let config = HostConfig::parse("[guest]\nallowed-targets = [\"review\"]\n", "host.toml")?;
    let host = Host::start(options(&emu, guest("sample-guest"), config)).await?;
    let c = client(&emu);
    let orders = c.sender("orders");
    for body in [
        r#"{"id":"o-1","customer":"ada","amount_cents":1200}"#,
        r#"{"id":"o-2","customer":"bob","amount_cents":900,"review":true}"#,
        r#"{"id":"o-3","customer":"cy","amount_cents":300,"transient_failure":true}"#,
        "not json",
    ] {
        orders.send(Message::new(body)).await?;
    }
    let m = host.metrics();
    eventually("two payments processed", Duration::from_secs(20), || {
        m.channel("payments").completed.load(Ordering::Relaxed) == 2
    })
    .await;
    eventually("orders settled", Duration::from_secs(20), || {
        emu.queue_counts("orders").unwrap() == QueueCounts { dead_lettered: 1, ..Default::default() }
    })
    .await;
    assert_eq!(emu.queue_counts("review").unwrap().active, 1, "o-2 went to review");
    assert_eq!(emu.queue_counts("payments").unwrap(), QueueCounts::default());
    let orders_m = m.channel("orders");
    assert_eq!(orders_m.completed.load(Ordering::Relaxed), 2, "o-1, and o-3 on its second delivery");
    assert_eq!(orders_m.abandoned.load(Ordering::Relaxed), 1, "o-3's transient failure");
    assert_eq!(orders_m.redirected.load(Ordering::Relaxed), 1);
    assert_eq!(orders_m.dead_lettered.load(Ordering::Relaxed), 1);
    let review = c.receiver("review").receive(1, Duration::from_secs(5)).await?;
    assert!(String::from_utf8_lossy(&review[0].body).contains("\"o-2\""));
    let dlq = c.receiver("orders/$DeadLetterQueue").receive(1, Duration::from_secs(5)).await?;
    assert_eq!(dlq[0].dead_letter_reason(), Some("InvalidOrder"));
    assert!(dlq[0].dead_letter_description().unwrap().starts_with("not an order"));
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_the_compiled_guest_from_the_cache() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("orders"), queue("payments")]).await;
    let cache = tempfile::tempdir()?;
    let mut opts = options(&emu, guest("sample-guest"), HostConfig::default());
    opts.engine.cache_dir = Some(cache.path().to_path_buf());
    let first = Host::start(opts.clone()).await?;
    assert!(!first.from_cache);
    first.shutdown(Duration::from_secs(5)).await;
    let second = Host::start(opts).await?;
    assert!(second.from_cache, "the second start reuses the compiled artifact");
    second.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}
