//! The connection's start: protocol headers and SASL, before any AMQP frame.
//!
//! The broker offers `MSSBCBS`, `ANONYMOUS`, `PLAIN` and `EXTERNAL`, as the service does.
//! Every mechanism but `PLAIN` authenticates nothing: links then need a `$cbs` token.
//! `PLAIN` with a key name and value grants that key's rights for the connection's life.

use fe2o3_amqp_types::primitives::{Array, Symbol};
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit, SaslMechanisms, SaslOutcome};
use futures_util::StreamExt as _;
use tokio::io::AsyncRead;
use tokio_util::codec::{Decoder as _, FramedRead};

use super::Engine;
use crate::auth::Rights;
use crate::codec::{self, Incoming, ProtocolId, WireDecoder};

impl Engine {
    /// Protocol headers and SASL. Returns false when the peer was refused.
    pub(super) async fn handshake<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FramedRead<R, WireDecoder>,
    ) -> Result<bool, String> {
        let mut header = next_header(reader).await?;
        if ProtocolId::parse(&header) == Some(ProtocolId::Sasl) {
            self.out.raw(&ProtocolId::Sasl.header());
            let mechanisms = SaslMechanisms {
                sasl_server_mechanisms: Array(
                    ["MSSBCBS", "ANONYMOUS", "PLAIN", "EXTERNAL"].into_iter().map(Symbol::from).collect(),
                ),
            };
            self.out.put_sasl(&mechanisms);
            self.flush();
            let init = next_init(reader).await?;
            let mechanism = init.mechanism.as_str().to_string();
            let code = match mechanism.as_str() {
                "ANONYMOUS" | "MSSBCBS" | "EXTERNAL" => SaslCode::Ok,
                "PLAIN" => match self.check_plain(init.initial_response.map(|b| b.into_vec()).unwrap_or_default()) {
                    Some(rights) => {
                        self.auth.grant_plain(rights);
                        SaslCode::Ok
                    }
                    None => SaslCode::Auth,
                },
                _ => SaslCode::Auth,
            };
            self.out.put_sasl(&SaslOutcome { code: code.clone(), additional_data: None });
            self.flush();
            if code != SaslCode::Ok {
                tracing::info!(peer = %self.peer, mechanism, "SASL authentication failed");
                return Ok(false);
            }
            reader.decoder_mut().expect_header();
            header = next_header(reader).await?;
        }
        match ProtocolId::parse(&header) {
            Some(ProtocolId::Amqp) => {
                self.out.raw(&ProtocolId::Amqp.header());
                self.flush();
                Ok(true)
            }
            _ => {
                // Say what we speak (plain AMQP with SASL; TLS is a separate listener), then close.
                self.out.raw(&ProtocolId::Sasl.header());
                self.flush();
                Ok(false)
            }
        }
    }

    /// `PLAIN`'s response is `authzid NUL name NUL key`: the name and value of a key.
    fn check_plain(&self, response: Vec<u8>) -> Option<Rights> {
        let mut parts = response.split(|&b| b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
        let (_authzid, name, key) = (parts.next(), parts.next(), parts.next());
        self.shared.keys.check_plain(&name?, &key?)
    }
}

async fn next_init<R: AsyncRead + Unpin>(reader: &mut FramedRead<R, WireDecoder>) -> Result<SaslInit, String> {
    match reader.next().await {
        Some(Ok(Incoming::Frame(mut bytes))) => {
            codec::check_performative(&mut bytes).map_err(|e| format!("malformed SASL frame: {e}"))?;
            let mut codec = fe2o3_amqp::frames::sasl::FrameCodec {};
            match codec.decode(&mut bytes) {
                Ok(Some(fe2o3_amqp::frames::sasl::Frame::Init(init))) => Ok(init),
                Ok(other) => Err(format!("expected sasl-init, got {other:?}")),
                Err(e) => Err(format!("malformed SASL frame: {e}")),
            }
        }
        Some(Ok(Incoming::Header(_))) => Err("protocol header instead of sasl-init".into()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("peer closed the socket during SASL".into()),
    }
}

async fn next_header<R: AsyncRead + Unpin>(reader: &mut FramedRead<R, WireDecoder>) -> Result<[u8; 8], String> {
    match reader.next().await {
        Some(Ok(Incoming::Header(h))) => Ok(h),
        Some(Ok(Incoming::Frame(_))) => Err("a frame arrived before the protocol header".into()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("peer closed the socket before the protocol header".into()),
    }
}
