//! The TLS listener (rustls, PEM files), as Azure's 5671: a TLS client completes
//! the handshake and then speaks AMQP inside it.

use std::sync::Arc;

use servicebus_emulator::{Config, Emulator, StartError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A self-signed certificate for `localhost`/`127.0.0.1`, written as PEM files.
pub(crate) struct TestCert {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    pub(crate) fn new() -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
        Self { dir, der: certified.cert.der().clone() }
    }

    pub(crate) fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub(crate) fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("key.pem")
    }
}

#[tokio::test]
async fn a_tls_client_gets_the_sasl_handshake_inside_tls() {
    let cert = TestCert::new();
    let emulator = Emulator::builder()
        .config(Config::default())
        .bind("127.0.0.1:0".parse().unwrap())
        .tls(cert.cert(), cert.key(), "127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let tls_addr = emulator.tls_addr().expect("TLS is on");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.expect("the TLS handshake succeeds");
    tls.write_all(b"AMQP\x03\x01\x00\x00").await.unwrap();
    let mut header = [0u8; 8];
    tls.read_exact(&mut header).await.unwrap();
    assert_eq!(&header, b"AMQP\x03\x01\x00\x00");
    // Then sasl-mechanisms, listing MSSBCBS.
    let mut size = [0u8; 4];
    tls.read_exact(&mut size).await.unwrap();
    let mut frame = vec![0u8; u32::from_be_bytes(size) as usize - 4];
    tls.read_exact(&mut frame).await.unwrap();
    assert!(frame.windows(7).any(|w| w == b"MSSBCBS"), "mechanisms: {frame:?}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_bad_certificate_is_a_specific_error() {
    let cert = TestCert::new();
    let missing = Emulator::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .tls(cert.dir.path().join("nope.pem"), cert.key(), "127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap_err();
    assert!(matches!(&missing, StartError::Tls(m) if m.contains("nope.pem")), "{missing}");
    // A key file given as the certificate.
    let swapped = Emulator::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .tls(cert.key(), cert.key(), "127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap_err();
    assert!(swapped.to_string().contains("holds no certificate"), "{swapped}");
}
