//! Bytes on the wire: protocol headers, frames, and the sections of a message.
//!
//! Performatives are (de)serialized with `serde_amqp` and fe2o3's public frame
//! decoder; what fe2o3 cannot do for a broker is done here: frame encoding with
//! our own transfer splitting, walking encoded AMQP values to split a message
//! into its sections without decoding the body, and writing a `header` section
//! with every field on the wire (fe2o3 drops `delivery-count = 0`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fe2o3_amqp_types::performatives::Transfer;
use serde::Serialize;
use tokio_util::codec::Decoder;

/// The smallest max-frame-size AMQP allows; used until `open` negotiates one.
pub(crate) const MIN_MAX_FRAME_SIZE: usize = 512;
/// Frame type of AMQP frames.
pub(crate) const FRAME_TYPE_AMQP: u8 = 0x00;
/// Frame type of SASL frames.
pub(crate) const FRAME_TYPE_SASL: u8 = 0x01;

/// Protocol id byte of the three AMQP protocol headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProtocolId {
    /// `AMQP 0 1 0 0`
    Amqp,
    /// `AMQP 2 1 0 0`
    Tls,
    /// `AMQP 3 1 0 0`
    Sasl,
}

impl ProtocolId {
    pub(crate) fn header(self) -> [u8; 8] {
        let id = match self {
            Self::Amqp => 0,
            Self::Tls => 2,
            Self::Sasl => 3,
        };
        [b'A', b'M', b'Q', b'P', id, 1, 0, 0]
    }

    /// Parses a protocol header; `None` if it is not AMQP 1.0.0.
    pub(crate) fn parse(header: &[u8; 8]) -> Option<Self> {
        if &header[..4] != b"AMQP" || header[5..] != [1, 0, 0] {
            return None;
        }
        match header[4] {
            0 => Some(Self::Amqp),
            2 => Some(Self::Tls),
            3 => Some(Self::Sasl),
            _ => None,
        }
    }
}

/// What the reader yields: a protocol header, or one whole frame (from `doff` on).
#[derive(Debug)]
pub(crate) enum Incoming {
    Header([u8; 8]),
    Frame(BytesMut),
}

/// Splits the byte stream into protocol headers and frames.
#[derive(Debug)]
pub(crate) struct WireDecoder {
    expect_header: bool,
    max_frame_size: usize,
}

impl WireDecoder {
    pub(crate) fn new() -> Self {
        Self { expect_header: true, max_frame_size: MIN_MAX_FRAME_SIZE }
    }

    /// The next item is a protocol header (after SASL, the AMQP header follows).
    pub(crate) fn expect_header(&mut self) {
        self.expect_header = true;
    }

    /// Frames larger than this are a framing error.
    pub(crate) fn set_max_frame_size(&mut self, size: usize) {
        self.max_frame_size = size.max(MIN_MAX_FRAME_SIZE);
    }
}

/// Why the byte stream could not be split into frames.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FramingError {
    #[error("frame of {size} bytes exceeds the negotiated max-frame-size of {max}")]
    FrameTooLarge { size: usize, max: usize },
    #[error("frame size {0} is smaller than the 8-byte frame header")]
    FrameTooSmall(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decoder for WireDecoder {
    type Item = Incoming;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FramingError> {
        if self.expect_header {
            if src.len() < 8 {
                return Ok(None);
            }
            let mut header = [0u8; 8];
            src.copy_to_slice(&mut header);
            self.expect_header = false;
            return Ok(Some(Incoming::Header(header)));
        }
        if src.len() < 4 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if size < 8 {
            return Err(FramingError::FrameTooSmall(size));
        }
        if size > self.max_frame_size {
            return Err(FramingError::FrameTooLarge { size, max: self.max_frame_size });
        }
        if src.len() < size {
            src.reserve(size - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(Incoming::Frame(src.split_to(size - 4))))
    }
}

/// Appends one frame: size, doff 2, type, channel, then the performative and payload.
pub(crate) fn put_frame<T: Serialize>(
    out: &mut BytesMut,
    frame_type: u8,
    channel: u16,
    performative: Option<&T>,
    payload: &[u8],
) -> Result<(), serde_amqp::Error> {
    let start = out.len();
    out.put_u32(0); // Patched below.
    out.put_u8(2);
    out.put_u8(frame_type);
    out.put_u16(channel);
    if let Some(p) = performative {
        let mut serializer = serde_amqp::ser::Serializer::from(out.writer());
        p.serialize(&mut serializer)?;
    }
    out.put_slice(payload);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Appends a transfer, split into as many frames as `max_frame_size` requires.
pub(crate) fn put_transfer(
    out: &mut BytesMut,
    channel: u16,
    mut transfer: Transfer,
    payload: &[u8],
    max_frame_size: usize,
) -> Result<usize, serde_amqp::Error> {
    let overhead = 8 + serde_amqp::serialized_size(&transfer)? + 16;
    let room = max_frame_size.saturating_sub(overhead).max(64);
    if payload.len() <= room {
        put_frame(out, FRAME_TYPE_AMQP, channel, Some(&transfer), payload)?;
        return Ok(1);
    }
    let last_more = transfer.more;
    let mut frames = 0;
    let mut chunks = payload.chunks(room).peekable();
    while let Some(chunk) = chunks.next() {
        transfer.more = chunks.peek().is_some() || last_more;
        put_frame(out, FRAME_TYPE_AMQP, channel, Some(&transfer), chunk)?;
        frames += 1;
    }
    Ok(frames)
}

pub(crate) use amqp_wire::WireError as EncodingError;

/// Returns the offset just past the encoded value starting at `at`. The value is walked
/// whole, without recursion: nesting deeper than [`amqp_wire::MAX_DEPTH`] is refused, and
/// so is any structure a decoder could read differently (see `amqp_wire`).
pub(crate) fn skip_value(buf: &[u8], at: usize) -> Result<usize, EncodingError> {
    amqp_wire::value_end(buf, at, amqp_wire::MAX_DEPTH)
}

/// Checks the performative at the start of a frame (`frame` from its data offset byte on,
/// as [`WireDecoder`] yields it) before it is decoded, and re-encodes string map keys in it
/// as symbols, as the service reads them (see [`amqp_wire::symbolize_map_keys`]). A
/// transfer's payload is checked when its delivery is whole.
pub(crate) fn check_performative(frame: &mut [u8]) -> Result<(), EncodingError> {
    // `frame` starts at the data offset byte, 4 bytes into the frame.
    let doff = frame.first().copied().unwrap_or(0);
    let body_at = amqp_wire::frame::body_offset(doff, frame.len() + 4)? - 4;
    if body_at < frame.len() {
        amqp_wire::symbolize_map_keys(frame, body_at, amqp_wire::MAX_DEPTH)?;
        amqp_wire::descriptor_code(frame, body_at)?;
    }
    Ok(())
}

/// The sections of a bare-or-annotated message, as byte ranges of the payload.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sections {
    pub(crate) header: Option<Bytes>,
    pub(crate) delivery_annotations: Option<Bytes>,
    pub(crate) message_annotations: Option<Bytes>,
    pub(crate) properties: Option<Bytes>,
    pub(crate) application_properties: Option<Bytes>,
    /// The body sections and the footer, kept byte for byte.
    pub(crate) body: Bytes,
    /// The `data` sections' contents, when the body is made of them.
    pub(crate) data: Vec<Bytes>,
}

/// Section descriptor codes.
pub(crate) mod section {
    pub(crate) const HEADER: u64 = 0x70;
    pub(crate) const DELIVERY_ANNOTATIONS: u64 = 0x71;
    pub(crate) const MESSAGE_ANNOTATIONS: u64 = 0x72;
    pub(crate) const PROPERTIES: u64 = 0x73;
    pub(crate) const APPLICATION_PROPERTIES: u64 = 0x74;
    pub(crate) const DATA: u64 = 0x75;
    pub(crate) const AMQP_SEQUENCE: u64 = 0x76;
    pub(crate) const AMQP_VALUE: u64 = 0x77;
    pub(crate) const FOOTER: u64 = 0x78;
}

/// Splits an encoded message into its sections without decoding their contents.
pub(crate) fn split_sections(payload: &Bytes) -> Result<Sections, EncodingError> {
    let buf = &payload[..];
    let mut sections = Sections::default();
    let mut at = 0;
    let mut body_start = None;
    while at < buf.len() {
        let code = amqp_wire::descriptor_code(buf, at)?;
        let end = skip_value(buf, at)?;
        let bytes = payload.slice(at..end);
        match code {
            section::HEADER => sections.header = Some(bytes),
            section::DELIVERY_ANNOTATIONS => sections.delivery_annotations = Some(bytes),
            section::MESSAGE_ANNOTATIONS => sections.message_annotations = Some(bytes),
            section::PROPERTIES => sections.properties = Some(bytes),
            section::APPLICATION_PROPERTIES => sections.application_properties = Some(bytes),
            section::DATA | section::AMQP_SEQUENCE | section::AMQP_VALUE | section::FOOTER => {
                body_start.get_or_insert(at);
                if code == section::DATA {
                    sections.data.push(data_contents(payload, at, end)?);
                }
            }
            _ => return Err(EncodingError::Malformed { at: at as u64, what: "unknown message section" }),
        }
        at = end;
    }
    sections.body = payload.slice(body_start.unwrap_or(buf.len())..);
    Ok(sections)
}

/// The encoded value inside a message's `amqp-value` body section, if it has one.
pub(crate) fn amqp_value(payload: &Bytes) -> Option<Bytes> {
    let buf = &payload[..];
    let mut at = 0;
    while at < buf.len() {
        let code = amqp_wire::descriptor_code(buf, at).ok()?;
        let end = skip_value(buf, at).ok()?;
        if code == section::AMQP_VALUE {
            // Skip 0x00 and the descriptor; what follows is the value.
            let value_at = skip_value(buf, at + 1).ok()?;
            return Some(payload.slice(value_at..end));
        }
        at = end;
    }
    None
}

/// The binary inside a `data` section spanning `at..end`.
fn data_contents(payload: &Bytes, at: usize, end: usize) -> Result<Bytes, EncodingError> {
    // 0x00 0x53 0x75, then vbin8 (0xa0 len) or vbin32 (0xb0 len32).
    let value = if payload[at + 1] == 0x53 { at + 3 } else { at + 10 };
    match payload.get(value) {
        Some(0xa0) => Ok(payload.slice(value + 2..end)),
        Some(0xb0) => Ok(payload.slice(value + 5..end)),
        _ => Err(EncodingError::Malformed { at: value as u64, what: "a data section must hold binary" }),
    }
}

/// The fields of the `header` section, all of which we always write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderFields {
    pub(crate) durable: bool,
    pub(crate) priority: u8,
    pub(crate) ttl: Option<u32>,
    pub(crate) first_acquirer: bool,
    pub(crate) delivery_count: u32,
}

impl Default for HeaderFields {
    fn default() -> Self {
        Self { durable: false, priority: 4, ttl: None, first_acquirer: false, delivery_count: 0 }
    }
}

impl HeaderFields {
    /// Reads a `header` section; fields it leaves out take their defaults.
    pub(crate) fn decode(section: &[u8]) -> Result<Self, serde_amqp::Error> {
        let h: fe2o3_amqp_types::messaging::Header = serde_amqp::from_slice(section)?;
        Ok(Self {
            durable: h.durable,
            priority: h.priority.0,
            ttl: h.ttl,
            first_acquirer: h.first_acquirer,
            delivery_count: h.delivery_count,
        })
    }

    /// Writes the section with all five fields, `delivery-count` included even when 0.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        let mut fields = BytesMut::with_capacity(16);
        fields.put_u8(if self.durable { 0x41 } else { 0x42 });
        fields.put_u8(0x50);
        fields.put_u8(self.priority);
        match self.ttl {
            Some(ttl) => {
                fields.put_u8(0x70);
                fields.put_u32(ttl);
            }
            None => fields.put_u8(0x40),
        }
        fields.put_u8(if self.first_acquirer { 0x41 } else { 0x42 });
        fields.put_u8(0x70);
        fields.put_u32(self.delivery_count);
        out.put_slice(&[0x00, 0x53, 0x70, 0xc0]);
        out.put_u8((fields.len() + 1) as u8);
        out.put_u8(5);
        out.put_slice(&fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::messaging::{ApplicationProperties, Data, Header, Message, Properties};
    use serde_amqp::primitives::Binary;

    #[test]
    fn header_with_zero_delivery_count_keeps_it_on_the_wire() {
        let mut out = BytesMut::new();
        HeaderFields::default().encode(&mut out);
        let h: Header = serde_amqp::from_slice(&out).unwrap();
        assert_eq!(h.delivery_count, 0);
        // Five fields: the list count byte says so.
        assert_eq!(out[5], 5);
        let mut out = BytesMut::new();
        HeaderFields { ttl: Some(1000), delivery_count: 3, durable: true, ..Default::default() }.encode(&mut out);
        let h: Header = serde_amqp::from_slice(&out).unwrap();
        assert_eq!((h.ttl, h.delivery_count, h.durable, h.priority.0), (Some(1000), 3, true, 4));
    }

    #[test]
    fn sections_of_a_message_are_found_and_the_body_kept_verbatim() {
        let message = Message::builder()
            .properties(Properties::builder().message_id(String::from("m1")).build())
            .application_properties(ApplicationProperties::builder().insert("k", "v").build())
            .data(Binary::from(vec![1u8, 2, 3]))
            .build();
        let bytes = Bytes::from(
            serde_amqp::to_vec(&fe2o3_amqp_types::messaging::message::__private::Serializable(message)).unwrap(),
        );
        let s = split_sections(&bytes).unwrap();
        assert!(s.header.is_none());
        assert!(s.properties.is_some());
        assert!(s.application_properties.is_some());
        assert_eq!(s.data, vec![Bytes::from_static(&[1, 2, 3])]);
        let d: Data = serde_amqp::from_slice(&s.body).unwrap();
        assert_eq!(d.0.into_vec(), vec![1, 2, 3]);
    }

    #[test]
    fn truncated_values_are_malformed_not_panics() {
        for bad in [&[0x00u8][..], &[0x00, 0x53], &[0x00, 0x53, 0x75, 0xa0, 9, 1], &[0xb0, 0, 0, 0, 9], &[0x01]] {
            assert!(skip_value(bad, 0).is_err() || split_sections(&Bytes::copy_from_slice(bad)).is_err());
        }
    }

    #[test]
    fn a_long_transfer_is_split_into_frames_that_fit() {
        let transfer = Transfer {
            handle: fe2o3_amqp_types::definitions::Handle(1),
            delivery_id: Some(7),
            delivery_tag: Some(Binary::from(vec![0u8; 16])),
            message_format: Some(0),
            settled: Some(false),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let payload = vec![7u8; 5000];
        let mut out = BytesMut::new();
        let frames = put_transfer(&mut out, 3, transfer, &payload, 1024).unwrap();
        assert!(frames >= 5, "{frames}");
        let mut decoder = WireDecoder::new();
        decoder.expect_header = false;
        decoder.set_max_frame_size(1024);
        let mut total = 0;
        let mut seen = 0;
        while let Some(Incoming::Frame(frame)) = decoder.decode(&mut out).unwrap() {
            seen += 1;
            let mut d = fe2o3_amqp::frames::amqp::FrameDecoder {};
            let mut frame = frame;
            let f = tokio_util::codec::Decoder::decode(&mut d, &mut frame).unwrap().unwrap();
            match f.body {
                fe2o3_amqp::frames::amqp::FrameBody::Transfer { performative, payload } => {
                    total += payload.len();
                    assert_eq!(performative.more, seen < frames);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((seen, total), (frames, 5000));
    }

    #[test]
    fn protocol_headers_round_trip() {
        for id in [ProtocolId::Amqp, ProtocolId::Tls, ProtocolId::Sasl] {
            assert_eq!(ProtocolId::parse(&id.header()), Some(id));
        }
        assert_eq!(ProtocolId::parse(b"HTTP/1.1"), None);
        assert_eq!(ProtocolId::parse(&[b'A', b'M', b'Q', b'P', 0, 0, 9, 10]), None);
    }
}
