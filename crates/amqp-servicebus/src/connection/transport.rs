//! The byte stream under a connection: TCP, or an HTTP proxy's tunnel; TLS unless the
//! development emulator is the broker; AMQP over WebSockets if asked. The guard over what
//! the broker sends goes on top, in the connection layer.

use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::connection_string::ConnectionString;
use crate::error::{Error, ErrorKind, Result};
use crate::options::{ClientOptions, HttpProxy, TransportType};

/// Where errors of this layer say they happened.
const CONNECTION: &str = "(connection)";
/// The most a proxy's answer to `CONNECT` may take, headers included.
const MAX_PROXY_ANSWER: usize = 16 * 1024;

/// Any byte stream a connection can run on.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug + 'static> Io for T {}

/// Opens the byte stream to the broker of `settings`, as `options` say.
pub(super) async fn open(settings: &ConnectionString, options: &ClientOptions) -> Result<Box<dyn Io>> {
    let host = settings.host.as_str();
    let tls = settings.uses_tls();
    let websocket = options.transport == TransportType::AmqpWebSockets;
    let port = if websocket { settings.websocket_port() } else { settings.effective_port() };
    let tcp = match (&options.http_proxy, websocket) {
        (None, _) => tcp(host, port).await?,
        (Some(proxy), true) => tunnel(proxy, host, port).await?,
        (Some(_), false) => {
            return Err(Error::new(
                ErrorKind::InvalidConnectionString,
                "an HTTP proxy carries AMQP over WebSockets only: set the transport to TransportType::AmqpWebSockets",
            ));
        }
    };
    let stream: Box<dyn Io> = match (tls, websocket) {
        (false, false) => Box::new(tcp),
        (true, false) => Box::new(self::tls(tcp, host, options.extra_ca_pem.as_deref()).await?),
        (false, true) => Box::new(upgrade(tcp, host, port, false).await?),
        (true, true) => {
            let tls = self::tls(tcp, host, options.extra_ca_pem.as_deref()).await?;
            Box::new(upgrade(tls, host, port, true).await?)
        }
    };
    Ok(stream)
}

/// Opens a TCP connection to `host:port`.
async fn tcp(host: &str, port: u16) -> Result<TcpStream> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| Error::connection(CONNECTION, format!("cannot reach {host}:{port}"), e))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Asks `proxy` for a tunnel to `host:port` (HTTP `CONNECT`), and returns it once open.
async fn tunnel(proxy: &HttpProxy, host: &str, port: u16) -> Result<TcpStream> {
    let mut tcp = self::tcp(&proxy.host, proxy.port).await?;
    let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, password)) = &proxy.credentials {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
    }
    request.push_str("\r\n");
    let at = format!("the HTTP proxy {}:{}", proxy.host, proxy.port);
    tcp.write_all(request.as_bytes()).await.map_err(|e| Error::connection(CONNECTION, format!("{at} hung up"), e))?;
    // Byte by byte: nothing of the tunnel's own traffic may be read here (the broker's
    // side only speaks after ours anyway).
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_PROXY_ANSWER {
            return Err(Error::protocol(
                CONNECTION,
                format!("{at} answered CONNECT with over {MAX_PROXY_ANSWER} bytes of headers"),
            ));
        }
        let byte = tcp
            .read_u8()
            .await
            .map_err(|e| Error::connection(CONNECTION, format!("{at} hung up before answering CONNECT"), e))?;
        answer.push(byte);
    }
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(tcp),
        Some(407) => Err(Error::new(
            ErrorKind::Unauthorized,
            format!("{at} wants credentials, or refused the ones given: {status_line}"),
        )
        .at(CONNECTION)),
        _ => Err(Error::new(ErrorKind::Connection, format!("{at} refused the tunnel to {target}: {status_line}"))
            .at(CONNECTION)),
    }
}

/// Runs the TLS handshake over `stream`, trusting the web PKI roots and `extra_ca` (PEM).
async fn tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
    extra_ca: Option<&[u8]>,
) -> Result<tokio_rustls::client::TlsStream<S>> {
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
        .connect(name, stream)
        .await
        .map_err(|e| Error::connection(CONNECTION, format!("the TLS handshake with {host} failed"), e))
}

/// The WebSocket upgrade at `/$servicebus/websocket`.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
    port: u16,
    tls: bool,
) -> Result<amqp_ws::WsStream<S>> {
    amqp_ws::connect(stream, host, port, tls)
        .await
        .map_err(|e| Error::connection(CONNECTION, format!("the WebSocket upgrade with {host}:{port} failed"), e))
}
