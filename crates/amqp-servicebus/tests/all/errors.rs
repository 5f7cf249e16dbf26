//! Errors are typed and name their entity.

use amqp_servicebus::{ClientOptions, ErrorKind, Message, RetryPolicy, ServiceBusClient};

use super::support::{WAIT, client, emulator, queue};

#[tokio::test]
async fn an_unknown_entity_is_entity_not_found() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    let err = c.sender("nope").send(Message::new("x")).await.unwrap_err();
    assert!(err.kind() == ErrorKind::NotFound && err.entity() == Some("nope"), "{err}");
    let err = c.receiver("nope").receive(1, WAIT).await.unwrap_err();
    assert!(err.kind() == ErrorKind::NotFound && err.entity() == Some("nope"), "{err}");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_wrong_key_is_unauthorized_without_retrying_forever() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let cs = emu.connection_string().replace("SAS_KEY_VALUE", "wrong-key");
    let c = ServiceBusClient::new(&cs, ClientOptions { retry: RetryPolicy::none(), ..ClientOptions::default() })?;
    let err = c.sender("q").send(Message::new("x")).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Unauthorized && err.entity() == Some("q"), "{err}");
    assert!(!err.to_string().contains("wrong-key"), "errors never show the key: {err}");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn nothing_listening_is_a_connection_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let cs = format!(
        "Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"
    );
    let c =
        ServiceBusClient::new(&cs, ClientOptions { retry: RetryPolicy::none(), ..ClientOptions::default() }).unwrap();
    let err = c.sender("q").send(Message::new("x")).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Connection, "{err}");
    assert!(err.is_transient());
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn a_bad_connection_string_is_rejected_up_front() {
    let err = ServiceBusClient::new("Endpoint=sb://h/", ClientOptions::default()).unwrap_err();
    assert!(err.kind() == ErrorKind::InvalidConnectionString, "{err}");
}

/// Sends racing to a missing entity each fail promptly as not found, and cost nothing else:
/// every link has an AMQP session of its own, so a refused attach (and fe2o3's answer to it)
/// touches no other link. Messages received before the failures are still held, and are
/// completed after them. (With one session shared by every link, about one run in ten lost
/// the session, and with it every held lock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_to_an_unknown_entity_fail_promptly_and_held_locks_stay_valid() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    for i in 0..8 {
        c.sender("q").send(Message::new(format!("m{i}"))).await?;
    }
    let receiver = c.receiver("q");
    let mut held = Vec::new();
    while held.len() < 8 {
        held.extend(receiver.receive(8 - held.len(), WAIT).await?);
    }
    let sender = std::sync::Arc::new(c.sender("nope"));
    for round in 0..5 {
        let sends = (0..8).map(|i| {
            let sender = sender.clone();
            tokio::spawn(async move { sender.send(Message::new(format!("{round}-{i}"))).await })
        });
        for send in sends {
            let result = tokio::time::timeout(std::time::Duration::from_secs(10), send).await;
            let err = result.expect("a send to a missing entity hung")?.unwrap_err();
            assert!(err.kind() == ErrorKind::NotFound && err.entity() == Some("nope"), "{err}");
        }
    }
    let completions = held.iter().map(|m| receiver.complete(m));
    tokio::time::timeout(std::time::Duration::from_secs(10), futures_util::future::try_join_all(completions))
        .await
        .expect("completions after the failed sends hung")?;
    assert_eq!(emu.queue_counts("q").unwrap(), Default::default(), "every held message was completed");
    emu.shutdown().await;
    Ok(())
}
