//! Bytes from outside cannot take the host down.

use std::time::Duration;

use servicebus_emulator::QueueCounts;

use super::support::*;

/// An `amqp-value` body section holding `depth` list32s, each the only element of the one before.
fn nested_value_body(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x00, 0x53, 0x77];
    for level in 0..depth {
        bytes.push(0xd0);
        bytes.extend_from_slice(&((4 + 9 * (depth - 1 - level) + 1) as u32).to_be_bytes());
        bytes.extend_from_slice(&1u32.to_be_bytes());
    }
    bytes.push(0x40);
    bytes
}

/// Finding 2 of the security review: a message of 5,000 nested lists aborted every host that
/// received it, until the broker dead-lettered it. Now it is dead-lettered on first sight,
/// and the messages around it are handled as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nested_too_deeply_is_dead_lettered_and_the_host_goes_on() -> anyhow::Result<()> {
    let emu = emulator(vec![queue_with("test-in", Duration::from_secs(30), 10), queue("reports")]).await;
    let host = test_host(&emu, "test-in", "").await;
    let c = client(&emu);
    let reports = Reports::new(&c);
    send_script(&c, "test-in", "before", "complete").await;
    assert!(emu.enqueue_unchecked("test-in", &nested_value_body(5_000)));
    send_script(&c, "test-in", "after", "complete").await;
    assert_eq!(reports.get("before").await, ["complete => ok"]);
    assert_eq!(reports.get("after").await, ["complete => ok"]);
    let dead = QueueCounts { dead_lettered: 1, ..Default::default() };
    eventually("the nested message dead-lettered", Duration::from_secs(10), || {
        emu.queue_counts("test-in").unwrap() == dead
    })
    .await;
    host.shutdown(Duration::from_secs(5)).await;
    emu.shutdown().await;
    Ok(())
}
