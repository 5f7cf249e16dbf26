//! AMQP 1.0 over WebSockets, as Azure Service Bus serves it on port 443 at
//! `/$servicebus/websocket` for networks that let nothing but HTTPS out.
//!
//! The binding is thin: after an HTTP upgrade that agrees on a subprotocol (`AMQPWSB10`,
//! Azure's name; `amqp`, the OASIS binding's), the AMQP byte stream travels in binary
//! WebSocket messages, split anywhere. This crate does the upgrade on either side
//! ([`connect`], [`accept`]) over a stream the caller opened (TCP, TLS, a proxy tunnel),
//! and gives back a [`WsStream`]: an `AsyncRead + AsyncWrite` byte stream that AMQP runs
//! on as it would on TCP. Both the client (`amqp-servicebus`) and the emulator
//! (`servicebus-emulator`) use it; it knows nothing of either.
//!
//! # Layout
//! - [`connect`], [`accept`]: the handshakes, with their checks.
//! - [`WsStream`]: the byte stream.
//!
//! # Example
//! ```no_run
//! use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let tcp = tokio::net::TcpStream::connect("127.0.0.1:5673").await?;
//! let mut ws = amqp_ws::connect(tcp, "127.0.0.1", 5673, false).await?;
//! ws.write_all(b"AMQP\x03\x01\x00\x00").await?; // The SASL protocol header.
//! ws.flush().await?;
//! let mut header = [0u8; 8];
//! ws.read_exact(&mut header).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{self, Bytes, Message};

/// The path Service Bus serves AMQP over WebSockets at.
pub const PATH: &str = "/$servicebus/websocket";
/// The subprotocol Azure Service Bus speaks, and the one the client asks for.
pub const SUBPROTOCOL: &str = "AMQPWSB10";
/// The OASIS AMQP WebSocket binding's subprotocol, which the server side also accepts.
pub const OASIS_SUBPROTOCOL: &str = "amqp";

const SEC_WEBSOCKET_PROTOCOL: &str = "Sec-WebSocket-Protocol";

/// Why a WebSocket handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The upgrade itself failed (the peer is not a WebSocket server, refused, or hung up).
    #[error("the WebSocket upgrade failed")]
    Handshake(#[source] tungstenite::Error),
    /// The server did not agree to the subprotocol `AMQPWSB10` (it named another, or none).
    #[error("the server did not agree to the WebSocket subprotocol AMQPWSB10: {0}")]
    Subprotocol(String),
    /// The host does not make a valid URL.
    #[error("{0:?} is not a valid WebSocket URL")]
    Url(String),
}

/// Upgrades `stream` (already connected, and with TLS if `tls`) to AMQP over WebSockets with
/// the server at `host:port`.
pub async fn connect<S>(stream: S, host: &str, port: u16, tls: bool) -> Result<WsStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let scheme = if tls { "wss" } else { "ws" };
    let host_part = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    let url = format!("{scheme}://{host_part}:{port}{PATH}");
    let mut request = url.as_str().into_client_request().map_err(|_| Error::Url(url.clone()))?;
    request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await.map_err(|e| match e {
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(why)) => {
            Error::Subprotocol(why.to_string())
        }
        e => Error::Handshake(e),
    })?;
    // tungstenite checks the answer against the offer; this holds whatever it checks.
    let chosen = response.headers().get(SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok());
    if chosen != Some(SUBPROTOCOL) {
        return Err(Error::Subprotocol(format!("it answered {chosen:?}")));
    }
    Ok(WsStream::new(ws))
}

/// Answers a client's upgrade on `stream`: the path must be [`PATH`] (a 404 otherwise) and
/// the client must offer `AMQPWSB10` or `amqp` (a 400 otherwise); the answer names the one
/// chosen, `AMQPWSB10` first.
pub async fn accept<S>(stream: S) -> Result<WsStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = tokio_tungstenite::accept_hdr_async(stream, choose).await.map_err(Error::Handshake)?;
    Ok(WsStream::new(ws))
}

/// The server's side of the upgrade: where, and which subprotocol.
#[allow(clippy::result_large_err, reason = "the callback's type is tungstenite's")]
fn choose(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: String| {
        let mut refusal = ErrorResponse::new(Some(why));
        *refusal.status_mut() = status;
        refusal
    };
    let path = request.uri().path();
    if path.trim_end_matches('/') != PATH {
        return Err(refuse(StatusCode::NOT_FOUND, format!("AMQP over WebSockets is served at {PATH}, not {path}")));
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let chosen = [SUBPROTOCOL, OASIS_SUBPROTOCOL]
        .into_iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("offer the subprotocol {SUBPROTOCOL} (or {OASIS_SUBPROTOCOL}); offered: {offered:?}"),
            )
        })?;
    response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(chosen));
    Ok(response)
}

/// An AMQP byte stream over a WebSocket: what is written goes out as binary messages, and
/// the payloads of binary messages that come in are read back in order. A close, from
/// either side, reads as the end of the stream.
#[derive(Debug)]
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last message read.
    unread: Bytes,
}

impl<S> WsStream<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        Self { ws, unread: Bytes::new() }
    }
}

fn io_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.unread.is_empty() {
                let n = self.unread.len().min(buf.remaining());
                let chunk = self.unread.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(payload))) => self.unread = payload,
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message on an AMQP WebSocket: AMQP travels in binary messages",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut self.ws).start_send(Message::binary(buf.to_vec())).map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_in_any_split_and_a_close_ends_the_stream() {
        let (client, server) = pair().await;
        let (client, server) = tokio::join!(connect(client, "127.0.0.1", 1, false), accept(server));
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        for chunk in [&b"AMQP"[..], b"\x00\x01", b"\x00\x00"] {
            client.write_all(chunk).await.unwrap();
        }
        client.flush().await.unwrap();
        let mut header = [0u8; 8];
        server.read_exact(&mut header).await.unwrap();
        assert_eq!(&header, b"AMQP\x00\x01\x00\x00");
        let big = vec![7u8; 300_000];
        server.write_all(&big).await.unwrap();
        server.flush().await.unwrap();
        let mut back = vec![0u8; big.len()];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, big);
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0, "a close reads as the end");
    }

    #[tokio::test]
    async fn a_wrong_path_or_subprotocol_is_refused() {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        for (path, protocol, status) in [("/other", SUBPROTOCOL, 404), (PATH, "mqtt", 400)] {
            let (client, server) = pair().await;
            let mut request = format!("ws://127.0.0.1:1{path}").into_client_request().unwrap();
            request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
            let (answer, accepted) = tokio::join!(tokio_tungstenite::client_async(request, client), accept(server));
            assert!(accepted.is_err());
            match answer {
                Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), status),
                other => panic!("expected an HTTP {status}, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn the_oasis_subprotocol_is_accepted_but_the_client_insists_on_azures() {
        let (client, server) = pair().await;
        let mut request = format!("ws://127.0.0.1:1{PATH}").into_client_request().unwrap();
        request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("amqp"));
        let (answer, accepted) = tokio::join!(tokio_tungstenite::client_async(request, client), accept(server));
        assert!(accepted.is_ok());
        let (_, response) = answer.unwrap();
        assert_eq!(response.headers().get(SEC_WEBSOCKET_PROTOCOL).unwrap(), "amqp");

        // A server that answers with another subprotocol than AMQPWSB10 is refused.
        let (client, server) = pair().await;
        #[allow(clippy::result_large_err, reason = "the callback's type is tungstenite's")]
        fn oasis(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
            response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("amqp"));
            Ok(response)
        }
        let (connected, _) =
            tokio::join!(connect(client, "127.0.0.1", 1, false), tokio_tungstenite::accept_hdr_async(server, oasis));
        assert!(matches!(connected, Err(Error::Subprotocol(_))), "{connected:?}");
    }
}
