//! AMQP frames: the 8-byte header, and where a frame's performative ends.
//!
//! A frame is `size:u32 doff:u8 type:u8 channel:u16`, an extended header up to
//! `doff * 4`, then the body: a performative (one described value) and, for
//! `transfer`, a payload: a piece of a message, checked per delivery instead.

use crate::{WireError, descriptor_code, value_end};

/// The size of the fixed frame header.
pub const HEADER_SIZE: usize = 8;
/// Frame type of AMQP frames.
pub const TYPE_AMQP: u8 = 0x00;
/// Frame type of SASL frames.
pub const TYPE_SASL: u8 = 0x01;
/// Descriptor code of `transfer`.
pub const TRANSFER: u64 = 0x14;
/// Descriptor code of `sasl-outcome`: a protocol header follows it.
pub const SASL_OUTCOME: u64 = 0x44;

/// A frame's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The whole frame's size, header included.
    pub size: u32,
    /// Where the body starts, in 4-byte words from the frame's start.
    pub doff: u8,
    /// [`TYPE_AMQP`] or [`TYPE_SASL`].
    pub frame_type: u8,
    /// The channel (AMQP) or 0 (SASL).
    pub channel: u16,
}

impl FrameHeader {
    /// Reads the fixed header; refuses sizes and data offsets that cannot hold it.
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> Result<Self, WireError> {
        let header = Self {
            size: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            doff: bytes[4],
            frame_type: bytes[5],
            channel: u16::from_be_bytes([bytes[6], bytes[7]]),
        };
        if (header.size as usize) < HEADER_SIZE {
            return Err(WireError::Malformed { at: 0, what: "a frame's size is smaller than its header" });
        }
        body_offset(header.doff, header.size as usize)?;
        Ok(header)
    }

    /// Where the body starts, from the frame's first byte.
    pub fn body_offset(&self) -> usize {
        usize::from(self.doff) * 4
    }
}

/// Where the body of a frame of `size` bytes with data offset `doff` starts, from the frame's
/// first byte; refuses offsets below the 8-byte header or past the frame's end.
pub fn body_offset(doff: u8, size: usize) -> Result<usize, WireError> {
    let at = usize::from(doff) * 4;
    if doff < 2 || at > size {
        return Err(WireError::Malformed { at: 4, what: "a frame's data offset is below 2 or past the frame's end" });
    }
    Ok(at)
}

/// The performative at the start of a frame body: its descriptor code and where it ends.
/// An empty body (a heartbeat) has none.
pub fn performative(body: &[u8], max_depth: usize) -> Result<Option<(u64, usize)>, WireError> {
    if body.is_empty() {
        return Ok(None);
    }
    let end = value_end(body, 0, max_depth)?;
    Ok(Some((descriptor_code(body, 0)?, end)))
}
