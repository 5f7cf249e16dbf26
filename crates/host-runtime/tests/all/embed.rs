//! `examples/embed.rs`, compiled into the tests and run against the emulator: a program with
//! its own store type and linker runs the sample guest of either revision on messages it
//! received itself.

use amqp_servicebus::Message;
use host_runtime::delivery::{DeliveryState, Outcome};
use servicebus_emulator::QueueCounts;

use super::support::*;

#[allow(dead_code)] // Its `main` is the example's, not the tests'.
#[path = "../../examples/embed.rs"]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_with_its_own_store_and_linker_runs_a_handler_on_a_message_it_received() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("orders"), queue("payments")]).await;
    let c = client(&emu);
    let component = guest("sample-guest");

    c.sender("orders").send(Message::new(r#"{"id":"o-1","customer":"ada","amount_cents":1200}"#)).await?;
    let state = example::run(&component, &emu.connection_string(), "orders", &["payments"]).await?;
    assert_eq!(state, DeliveryState::Settled(Outcome::Completed), "the guest completed the order");
    let payments = c.receiver("payments").receive(1, std::time::Duration::from_secs(5)).await?;
    assert_eq!(payments.len(), 1, "the guest sent a payment through the program's connection");
    assert_eq!(payments[0].correlation_id.as_deref(), Some("o-1"));

    c.sender("orders").send(Message::new("not json")).await?;
    let state = example::run(&component, &emu.connection_string(), "orders", &["payments"]).await?;
    assert_eq!(state, DeliveryState::Settled(Outcome::DeadLettered));
    assert_eq!(emu.queue_counts("orders").unwrap(), QueueCounts { dead_lettered: 1, ..Default::default() });

    // A guest that sends where the program did not allow is refused, and its message is
    // abandoned by the matrix after the handler's error: nothing is lost.
    c.sender("orders").send(Message::new(r#"{"id":"o-2","customer":"bob","amount_cents":5}"#)).await?;
    let state = example::run(&component, &emu.connection_string(), "orders", &[]).await?;
    assert_eq!(state, DeliveryState::Settled(Outcome::Abandoned));
    assert_eq!(emu.queue_counts("orders").unwrap().active, 1, "the order is there to be handled again");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_program_runs_a_guest_of_the_dec2024_revision() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("orders"), queue("payments")]).await;
    let c = client(&emu);
    let component = guest("sample-handler");

    c.sender("orders").send(Message::new(r#"{"id":"o-1","customer":"ada","amount_cents":1200}"#)).await?;
    let state = example::run(&component, &emu.connection_string(), "orders", &["payments"]).await?;
    assert_eq!(state, DeliveryState::Settled(Outcome::Completed), "handle returned ok: completed");
    let payments = c.receiver("payments").receive(1, std::time::Duration::from_secs(5)).await?;
    assert_eq!(payments[0].correlation_id.as_deref(), Some("o-1"));
    assert_eq!(payments[0].content_type.as_deref(), Some("application/json"));

    c.sender("orders").send(Message::new("not json")).await?;
    let state = example::run(&component, &emu.connection_string(), "orders", &["payments"]).await?;
    assert_eq!(state, DeliveryState::Settled(Outcome::Abandoned), "handle returned an error: abandoned");
    emu.shutdown().await;
    Ok(())
}
