//! Transactions through `$coordinator`, driven by fe2o3-amqp's client (the Python SDK has none):
//! a transaction sends to one queue and completes a message from another.

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::transaction::{
    Controller, Transaction, TransactionDischarge, TransactionPosting, TransactionRetirement,
};
use fe2o3_amqp::types::definitions::ReceiverSettleMode;
use fe2o3_amqp::types::messaging::Message;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use servicebus_emulator::{Emulator, QueueCounts};

use super::support::{queue, start};

/// A client connection authenticated with SASL PLAIN (the default key).
pub(crate) async fn connect(emulator: &Emulator, name: &str) -> anyhow::Result<ConnectionHandle<()>> {
    let url = format!("amqp://RootManageSharedAccessKey:SAS_KEY_VALUE@{}", emulator.local_addr());
    Ok(Connection::open(name.to_string(), url.as_str()).await?)
}

async fn setup() -> anyhow::Result<(Emulator, ConnectionHandle<()>, SessionHandle<()>, Sender, Receiver)> {
    let emulator = start(vec![queue("txn-out"), queue("txn-in")]).await;
    let mut connection = connect(&emulator, "txn-test").await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut feeder = Sender::attach(&mut session, "feeder", "txn-in").await?;
    assert!(feeder.send(Message::from("work")).await?.is_accepted(), "the feed message should be accepted");
    feeder.close().await?;
    let sender = Sender::attach(&mut session, "out", "txn-out").await?;
    let receiver = Receiver::builder()
        .name("in")
        .source("txn-in")
        .receiver_settle_mode(ReceiverSettleMode::Second)
        .attach(&mut session)
        .await?;
    Ok((emulator, connection, session, sender, receiver))
}

#[tokio::test]
async fn a_committed_transaction_sends_and_completes() -> anyhow::Result<()> {
    let (emulator, mut connection, mut session, mut sender, mut receiver) = setup().await?;
    let delivery = receiver.recv::<Value>().await?;
    let controller = Controller::attach(&mut session, "controller").await?;
    let txn = Transaction::declare(&controller, None).await?;
    txn.post(&mut sender, Message::from("result")).await?;
    txn.accept(&mut receiver, &delivery).await?;
    // Nothing is visible before the commit.
    assert_eq!(emulator.queue_counts("txn-out").unwrap().active, 0);
    assert_eq!(emulator.queue_counts("txn-in").unwrap().locked, 1);
    txn.commit().await?;
    assert_eq!(emulator.queue_counts("txn-out").unwrap(), QueueCounts { active: 1, ..Default::default() });
    assert_eq!(emulator.queue_counts("txn-in").unwrap(), QueueCounts::default());
    controller.close().await?;
    receiver.close().await?;
    sender.close().await?;
    session.end().await?;
    connection.close().await?;
    emulator.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_rolled_back_transaction_changes_nothing() -> anyhow::Result<()> {
    let (emulator, mut connection, mut session, mut sender, mut receiver) = setup().await?;
    let delivery = receiver.recv::<Value>().await?;
    let controller = Controller::attach(&mut session, "controller").await?;
    let txn = Transaction::declare(&controller, None).await?;
    txn.post(&mut sender, Message::from("result")).await?;
    txn.accept(&mut receiver, &delivery).await?;
    txn.rollback().await?;
    assert_eq!(emulator.queue_counts("txn-out").unwrap(), QueueCounts::default());
    // Still locked by our receiver, as before the transaction; not completed.
    assert_eq!(emulator.queue_counts("txn-in").unwrap(), QueueCounts { locked: 1, ..Default::default() });
    // And it can still be completed outside the transaction.
    receiver.accept(&delivery).await?;
    controller.close().await?;
    receiver.close().await?;
    sender.close().await?;
    session.end().await?;
    connection.close().await?;
    emulator.shutdown().await;
    Ok(())
}
