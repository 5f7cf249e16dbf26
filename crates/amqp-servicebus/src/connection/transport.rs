//! The byte stream under a connection: TCP, with TLS when the settings ask for it, and the
//! guard over whatever the broker sends.

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::error::{Error, ErrorKind, Result};

/// Where errors of this layer say they happened.
const CONNECTION: &str = "(connection)";

/// Opens a TCP connection to `host:port`.
pub(super) async fn tcp(host: &str, port: u16) -> Result<TcpStream> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| Error::connection(CONNECTION, format!("cannot reach {host}:{port}"), e))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Runs the TLS handshake over `tcp`, trusting the web PKI roots and `extra_ca` (PEM).
pub(super) async fn tls(
    tcp: TcpStream,
    host: &str,
    extra_ca: Option<&[u8]>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let invalid = |what: String| Error::new(ErrorKind::InvalidConnectionString, what).at(CONNECTION);
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca {
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| invalid(format!("the extra CA is not valid PEM: {e}")))?;
            roots.add(cert).map_err(|e| invalid(format!("the extra CA was refused: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::connection(CONNECTION, "no TLS protocol version is available", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| invalid(format!("{host:?} is not a valid TLS server name: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| Error::connection(CONNECTION, format!("the TLS handshake with {host} failed"), e))
}
