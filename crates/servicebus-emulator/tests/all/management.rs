//! The management endpoint over plain HTTP, as Microsoft's emulator serves it on 5300 (and as
//! .NET's administration client uses it with `UseDevelopmentEmulator=true`); the SDK suites
//! drive it over HTTPS.

use servicebus_emulator::auth::{DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, sas_token};
use servicebus_emulator::{Config, Emulator};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::support::queue;

/// Sends one request (`Connection: close`) and returns the whole response.
async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn health_and_the_administration_api_answer_over_plain_http() -> anyhow::Result<()> {
    let config = Config { queues: vec![queue("orders")], ..Config::default() };
    let emulator = Emulator::builder()
        .config(config)
        .bind("127.0.0.1:0".parse()?)
        .management("127.0.0.1:0".parse()?)
        .start()
        .await?;
    let addr = emulator.management_addr().expect("on");
    let health = http(addr, "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");

    let token = sas_token(&format!("http://{addr}/"), DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, u64::MAX / 2);
    let list = format!(
        "GET /$Resources/queues?api-version=2021-05 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
    );
    let answer = http(addr, &list).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("<title type=\"text\">orders</title>"), "{answer}");
    let unsigned = http(addr, &list.replace(&format!("Authorization: {token}\r\n"), "")).await;
    assert!(unsigned.starts_with("HTTP/1.1 401"), "{unsigned}");

    // Two requests on one connection, the second after the first is answered.
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let keep = "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        stream.write_all(keep.as_bytes()).await?;
        let n = stream.read(&mut buf).await?;
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"), "kept alive");
    }
    drop(stream);

    // A TLS client, with no certificate configured: the connection ends, the endpoint serves on.
    let mut tls = tokio::net::TcpStream::connect(addr).await?;
    tls.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0]).await?;
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(http(addr, "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").await.starts_with("HTTP/1.1 200"));
    emulator.shutdown().await;
    Ok(())
}
