//! Sends a few messages to a queue and receives them back.
//!
//! ```text
//! SERVICEBUS_CONNECTION_STRING='Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true' \
//!   cargo run -p amqp-servicebus --example send_receive -- orders
//! ```
//! (Start the emulator first: `cargo run -p servicebus-emulator`.) The connection can also
//! come from SERVICE_BUS_NAMESPACE, SERVICE_BUS_POLICY_NAME and SERVICE_BUS_POLICY_KEY.

#![allow(clippy::print_stdout, clippy::print_stderr)] // An example program.

use std::time::Duration;

use amqp_servicebus::{ClientOptions, ConnectionString, Message, ServiceBusClient};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let queue = std::env::args().nth(1).unwrap_or_else(|| "orders".into());
    let settings = match std::env::var("SERVICEBUS_CONNECTION_STRING") {
        Ok(cs) => ConnectionString::parse(&cs)?,
        Err(_) => ConnectionString::from_variables(|k| std::env::var(k).ok())?.ok_or_else(|| {
            anyhow::anyhow!("set SERVICEBUS_CONNECTION_STRING (or SERVICE_BUS_NAMESPACE, _POLICY_NAME and _POLICY_KEY)")
        })?,
    };
    let client = ServiceBusClient::from_settings(settings, ClientOptions::default());
    let sender = client.sender(&queue);
    for i in 0..3 {
        sender.send(Message::new(format!("hello {i}")).with_property("n", i as i64)).await?;
    }
    println!("sent 3 messages to {queue}");
    let receiver = client.receiver(&queue);
    let mut received = 0;
    while received < 3 {
        let batch = receiver.receive(10, Duration::from_secs(5)).await?;
        if batch.is_empty() {
            anyhow::bail!("only {received} of 3 messages came back within 5 s");
        }
        for m in batch {
            println!(
                "#{} {:?} (delivery count {})",
                m.sequence_number,
                String::from_utf8_lossy(&m.body),
                m.delivery_count
            );
            receiver.complete(&m).await?;
            received += 1;
        }
    }
    client.close().await;
    Ok(())
}
