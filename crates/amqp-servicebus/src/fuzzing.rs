//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a stable API).

use std::collections::HashMap;

use amqp_wire::frame::{self, FrameHeader};
use bytes::{Buf as _, BytesMut};
use fe2o3_amqp::frames::amqp::{FrameBody, FrameDecoder};
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{Body, Message};
use serde_amqp::Value;
use tokio_util::codec::Decoder as _;

use crate::connection::guard::Guarded;

/// Bytes a broker sends, after our protocol header: what the guard lets through is then decoded
/// as fe2o3 would (frames, and each whole delivery as a message). Nothing may panic or overflow.
pub fn broker_bytes(bytes: &[u8]) {
    let mut guard = Guarded::new(());
    let Ok(checked) = guard.check_bytes(bytes) else { return };
    let mut rest = BytesMut::from(&checked[..]);
    let mut expect_header = true;
    let mut deliveries: HashMap<(u16, u32), Vec<u8>> = HashMap::new();
    loop {
        if expect_header {
            if rest.len() < 8 {
                return;
            }
            rest.advance(8);
            expect_header = false;
            continue;
        }
        if rest.len() < frame::HEADER_SIZE {
            return;
        }
        let mut fixed = [0u8; frame::HEADER_SIZE];
        fixed.copy_from_slice(&rest[..frame::HEADER_SIZE]);
        let Ok(header) = FrameHeader::parse(&fixed) else { return };
        if rest.len() < header.size as usize {
            return;
        }
        let mut whole = rest.split_to(header.size as usize);
        whole.advance(4);
        if header.frame_type == frame::TYPE_SASL {
            let mut codec = fe2o3_amqp::frames::sasl::FrameCodec {};
            if let Ok(Some(fe2o3_amqp::frames::sasl::Frame::Outcome(_))) = codec.decode(&mut whole) {
                expect_header = true;
            }
            continue;
        }
        let Ok(Some(decoded)) = (FrameDecoder {}).decode(&mut whole) else { continue };
        if let FrameBody::Transfer { performative, payload } = decoded.body {
            let key = (decoded.channel, performative.handle.0);
            let assembled = deliveries.entry(key).or_default();
            assembled.extend_from_slice(&payload);
            if !performative.more {
                let message = deliveries.remove(&key).unwrap_or_default();
                let _ = serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(&message);
            }
        }
    }
}

/// A message as `$management` returns it (peek, deferred receive), decoded as the client does.
pub fn encoded_message(bytes: &[u8]) {
    let _ = crate::message::ReceivedMessage::from_encoded(bytes, "q");
}
