//! Errors are typed and name their entity.

use amqp_servicebus::{ClientOptions, Error, Message, RetryPolicy, ServiceBusClient};

use super::support::{WAIT, client, emulator, queue};

#[tokio::test]
async fn an_unknown_entity_is_entity_not_found() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let c = client(&emu);
    let err = c.sender("nope").send(Message::new("x")).await.unwrap_err();
    assert!(matches!(&err, Error::EntityNotFound { entity, .. } if entity == "nope"), "{err}");
    let err = c.receiver("nope").receive(1, WAIT).await.unwrap_err();
    assert!(matches!(&err, Error::EntityNotFound { entity, .. } if entity == "nope"), "{err}");
    emu.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_wrong_key_is_unauthorized_without_retrying_forever() -> anyhow::Result<()> {
    let emu = emulator(vec![queue("q")]).await;
    let cs = emu.connection_string().replace("SAS_KEY_VALUE", "wrong-key");
    let c = ServiceBusClient::new(&cs, ClientOptions { retry: RetryPolicy::none(), ..ClientOptions::default() })?;
    let err = c.sender("q").send(Message::new("x")).await.unwrap_err();
    assert!(matches!(&err, Error::Unauthorized { entity, .. } if entity == "q"), "{err}");
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
    assert!(matches!(err, Error::Connection { .. }), "{err}");
    assert!(err.is_transient());
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn a_bad_connection_string_is_rejected_up_front() {
    let err = ServiceBusClient::new("Endpoint=sb://h/", ClientOptions::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidConnectionString(_)), "{err}");
}
