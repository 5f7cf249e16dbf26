//! AMQP 1.0 bytes from an untrusted peer, checked before anything decodes them.
//!
//! `serde_amqp` (and so fe2o3-amqp) decodes nested values by recursion: a frame of a
//! few kilobytes holding a few thousand nested lists, maps or described values
//! overflows the stack and aborts the whole process. This crate walks encoded values
//! **without recursion**, with an explicit stack, and refuses:
//! - nesting deeper than a limit ([`MAX_DEPTH`] by default);
//! - anything whose structure a recursive decoder could read differently than the
//!   walker did: a list, map or array whose element count does not match the values
//!   its byte size holds, a value running past the end of its container, a map with
//!   an odd count, an unknown format code, a descriptor that is not a `ulong` or a
//!   `symbol`;
//! - arrays whose elements are lists, maps, arrays or described values: serde_amqp
//!   0.18 misreads them (it keeps the array's element code while it decodes an
//!   element's own contents), and recursed without bound on an input the fuzzer found.
//!   No Service Bus frame or SDK message uses them.
//!
//! After a walk succeeds, a decoder sees exactly the tree the walker saw, so its
//! recursion is bounded by the same limit.
//!
//! The walk costs a few instructions per value and nothing per byte of strings and
//! binaries (they are skipped by size). It can be fed in pieces ([`Walker::feed`]), as
//! a delivery arrives in several transfer frames.
//!
//! Both the emulator (every frame and message a client sends) and the client (every
//! frame a broker sends) run their peers' bytes through it. It knows nothing of
//! either: no I/O, no allocation per value.
//!
//! # Layout
//! - [`Walker`], [`check_values`], [`value_end`]: the walk; [`descriptor_code`].
//! - [`frame`]: AMQP frame headers and where a frame's performative ends.
//!
//! # Example
//! ```
//! use amqp_wire::{MAX_DEPTH, WireError, check_values};
//!
//! // A list holding a null: fine.
//! assert!(check_values(&[0xc0, 0x02, 0x01, 0x40], MAX_DEPTH).is_ok());
//! // 100 lists, each inside the one before: too deep.
//! let mut deep = Vec::new();
//! for _ in 0..100 {
//!     deep.extend_from_slice(&[0x00, 0x53, 0x01]); // a described value, descriptor 1
//! }
//! deep.push(0x40);
//! assert!(matches!(check_values(&deep, MAX_DEPTH), Err(WireError::TooDeep { .. })));
//! ```

pub mod frame;

/// How deeply values may nest by default: lists, maps, arrays and described values
/// each count one level. Service Bus frames and messages from the SDKs nest fewer
/// than 10 levels; decoding 64 levels takes well under 1 MiB of stack in a debug build.
pub const MAX_DEPTH: usize = 64;

/// Arrays whose elements take no bytes (`null`, `true`, `uint0` …) may hold at most this many:
/// their count is otherwise bounded by nothing but a `u32`, and a decoder allocates per element.
const MAX_ZERO_WIDTH_ELEMENTS: u32 = 4096;

/// The longest header the walk reads at once: an `array32` code, size and count.
const LOOKAHEAD: usize = 16;

/// Why bytes were refused. `at` is the offset (from the first byte fed) of the value
/// that was refused: the bytes before it are a prefix that nests no deeper than the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Values nest deeper than the limit.
    #[error("AMQP values nested more than {limit} levels deep (at byte {at})")]
    TooDeep {
        /// Offset of the value that would open one level too many.
        at: u64,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a well-formed AMQP encoding.
    #[error("malformed AMQP encoding at byte {at}: {what}")]
    Malformed {
        /// Offset of the offending value.
        at: u64,
        /// What is wrong with it.
        what: &'static str,
    },
}

impl WireError {
    /// The offset of the refused value.
    pub fn at(&self) -> u64 {
        match self {
            Self::TooDeep { at, .. } | Self::Malformed { at, .. } => *at,
        }
    }

    /// The AMQP error condition that names this failure (`amqp:decode-error`).
    pub fn condition(&self) -> &'static str {
        "amqp:decode-error"
    }
}

/// An open container on the walk's stack.
#[derive(Debug, Clone, Copy)]
enum Open {
    /// A list or map: `left` more values until byte `end`.
    Seq { end: u64, left: u32, map: bool },
    /// After `0x00`: a descriptor, then the described value.
    Described { descriptor_done: bool },
    /// An array's element constructor: one format code.
    ArrayCtor { end: u64, left: u32 },
    /// An array's elements: `left` more bodies laid out as `element` until byte `end`.
    Array { end: u64, left: u32, element: Layout },
}

/// How a format code's body is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// A fixed number of bytes.
    Fixed(u64),
    /// A size of this width, then that many bytes.
    Variable(usize),
    /// A list or map: a size and a count of this width, then the values.
    Compound { width: usize, map: bool },
    /// An array: a size and a count of this width, a constructor, then the elements.
    Array(usize),
}

fn layout(code: u8) -> Option<Layout> {
    Some(match code {
        0x40..=0x45 => Layout::Fixed(0),
        0x50..=0x56 => Layout::Fixed(1),
        0x60 | 0x61 => Layout::Fixed(2),
        0x70..=0x74 => Layout::Fixed(4),
        0x80..=0x84 => Layout::Fixed(8),
        0x94 | 0x98 => Layout::Fixed(16),
        0xa0 | 0xa1 | 0xa3 => Layout::Variable(1),
        0xb0 | 0xb1 | 0xb3 => Layout::Variable(4),
        0xc0 => Layout::Compound { width: 1, map: false },
        0xc1 => Layout::Compound { width: 1, map: true },
        0xd0 => Layout::Compound { width: 4, map: false },
        0xd1 => Layout::Compound { width: 4, map: true },
        0xe0 => Layout::Array(1),
        0xf0 => Layout::Array(4),
        _ => return None,
    })
}

/// Descriptors are `ulong` (`0x44`, `0x53`, `0x80`) or `symbol` (`0xa3`, `0xb3`).
fn is_descriptor_code(code: u8) -> bool {
    matches!(code, 0x44 | 0x53 | 0x80 | 0xa3 | 0xb3)
}

fn read_width(bytes: &[u8], width: usize) -> u64 {
    if width == 1 {
        u64::from(bytes[0])
    } else {
        u64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

/// Walks a stream of encoded AMQP values, fed in pieces of any size.
#[derive(Debug, Clone)]
pub struct Walker {
    max_depth: usize,
    stack: Vec<Open>,
    /// Bytes consumed so far.
    pos: u64,
    /// Bytes before this offset are the contents of a string, binary or fixed-width value.
    skip_to: u64,
    /// Bytes received but not consumed: the start of a header that arrived in pieces.
    carry: [u8; LOOKAHEAD],
    carry_len: usize,
    /// Top-level values completed.
    values: u64,
    /// Where map keys encoded as strings start, when asked for ([`Walker::collecting_string_keys`]).
    string_keys: Option<Vec<u64>>,
}

impl Walker {
    /// A walker that refuses nesting deeper than `max_depth` levels.
    pub fn new(max_depth: usize) -> Self {
        Self {
            max_depth,
            stack: Vec::new(),
            pos: 0,
            skip_to: 0,
            carry: [0; LOOKAHEAD],
            carry_len: 0,
            values: 0,
            string_keys: None,
        }
    }

    /// Also records where map keys encoded as strings (`str8`, `str32`) start.
    fn collecting_string_keys(mut self) -> Self {
        self.string_keys = Some(Vec::new());
        self
    }

    /// The offsets of the string-encoded map keys walked so far (empty unless collecting).
    fn string_keys(&self) -> &[u64] {
        self.string_keys.as_deref().unwrap_or_default()
    }

    /// Walks the next piece of a sequence of values.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), WireError> {
        self.run(chunk, false).map(|_| ())
    }

    /// True when what was fed ends exactly between two top-level values.
    pub fn is_complete(&self) -> bool {
        self.stack.is_empty() && self.skip_to <= self.pos && self.carry_len == 0
    }

    /// How many bytes were fed so far (offsets in errors count from the first).
    pub fn fed(&self) -> u64 {
        self.pos + self.carry_len as u64
    }

    /// How many top-level values were completed.
    pub fn values(&self) -> u64 {
        self.values
    }

    /// Walks `chunk`; with `stop`, returns as soon as one top-level value is complete.
    /// Returns how many bytes of `chunk` were taken (consumed, or kept as a partial header).
    fn run(&mut self, chunk: &[u8], stop: bool) -> Result<usize, WireError> {
        let mut i = 0usize;
        loop {
            if self.skip_to > self.pos {
                let n = (self.skip_to - self.pos).min((chunk.len() - i) as u64);
                i += n as usize;
                self.pos += n;
                if self.pos < self.skip_to {
                    return Ok(i);
                }
            }
            self.close_finished()?;
            if stop && self.values > 0 && self.stack.is_empty() {
                return Ok(i);
            }
            let mut joined = [0u8; LOOKAHEAD];
            let lookahead: &[u8] = if self.carry_len == 0 {
                &chunk[i..chunk.len().min(i + LOOKAHEAD)]
            } else {
                let from_chunk = (LOOKAHEAD - self.carry_len).min(chunk.len() - i);
                joined[..self.carry_len].copy_from_slice(&self.carry[..self.carry_len]);
                joined[self.carry_len..self.carry_len + from_chunk].copy_from_slice(&chunk[i..i + from_chunk]);
                &joined[..self.carry_len + from_chunk]
            };
            if lookahead.is_empty() {
                return Ok(i);
            }
            match self.step(lookahead)? {
                Some(n) => {
                    let from_carry = n.min(self.carry_len);
                    self.carry.copy_within(from_carry..self.carry_len, 0);
                    self.carry_len -= from_carry;
                    i += n - from_carry;
                    self.pos += n as u64;
                }
                None => {
                    // A header cut short by the end of the chunk: keep its bytes for the next one.
                    let rest = &chunk[i..];
                    self.carry[self.carry_len..self.carry_len + rest.len()].copy_from_slice(rest);
                    self.carry_len += rest.len();
                    return Ok(chunk.len());
                }
            }
        }
    }

    fn malformed(&self, what: &'static str) -> WireError {
        WireError::Malformed { at: self.pos, what }
    }

    /// The end of the innermost container (values may not run past it).
    fn limit(&self) -> u64 {
        self.stack
            .iter()
            .rev()
            .find_map(|o| match *o {
                Open::Seq { end, .. } | Open::ArrayCtor { end, .. } | Open::Array { end, .. } => Some(end),
                Open::Described { .. } => None,
            })
            .unwrap_or(u64::MAX)
    }

    fn push(&mut self, open: Open) -> Result<(), WireError> {
        if self.stack.len() >= self.max_depth {
            return Err(WireError::TooDeep { at: self.pos, limit: self.max_depth });
        }
        self.stack.push(open);
        Ok(())
    }

    /// Pops the lists, maps and arrays whose bytes have all been walked.
    fn close_finished(&mut self) -> Result<(), WireError> {
        while let Some(&top) = self.stack.last() {
            let (end, left) = match top {
                Open::Seq { end, left, .. } | Open::Array { end, left, .. } => (end, left),
                Open::ArrayCtor { end, .. } if self.pos >= end => {
                    return Err(self.malformed("an array ends before its element constructor"));
                }
                _ => return Ok(()),
            };
            if self.pos < end {
                if left == 0 {
                    return Err(self.malformed("a list, map or array holds more bytes than its count of values"));
                }
                return Ok(());
            }
            if self.pos > end || left != 0 {
                return Err(self.malformed("a list, map or array holds fewer values than its count"));
            }
            self.stack.pop();
            self.completed()?;
        }
        Ok(())
    }

    /// A value is complete: count it in its container.
    fn completed(&mut self) -> Result<(), WireError> {
        loop {
            match self.stack.last_mut() {
                None => {
                    self.values += 1;
                    return Ok(());
                }
                Some(Open::Described { descriptor_done }) => {
                    if *descriptor_done {
                        self.stack.pop();
                        continue;
                    }
                    *descriptor_done = true;
                    return Ok(());
                }
                // No value is walked while an array's constructor is read.
                Some(Open::ArrayCtor { .. }) => {
                    return Err(WireError::Malformed { at: self.pos, what: "a value inside an array's constructor" });
                }
                Some(Open::Seq { left, .. } | Open::Array { left, .. }) => {
                    if *left == 0 {
                        return Err(WireError::Malformed {
                            at: self.pos,
                            what: "a list, map or array holds more values than its count",
                        });
                    }
                    *left -= 1;
                    return Ok(());
                }
            }
        }
    }

    /// Reads one header from `la` (the bytes at `self.pos`); `None` if more bytes are needed.
    fn step(&mut self, la: &[u8]) -> Result<Option<usize>, WireError> {
        match self.stack.last().copied() {
            Some(Open::ArrayCtor { end, left }) => {
                self.array_elements(la[0], end, left)?;
                Ok(Some(1))
            }
            Some(Open::Array { element, .. }) => self.body(element, la),
            Some(Open::Described { descriptor_done: false }) => self.value(la, true),
            _ => self.value(la, false),
        }
    }

    fn replace_top(&mut self, open: Open) {
        if let Some(top) = self.stack.last_mut() {
            *top = open;
        }
    }

    /// A value with its constructor.
    fn value(&mut self, la: &[u8], descriptor: bool) -> Result<Option<usize>, WireError> {
        let code = la[0];
        if descriptor && !is_descriptor_code(code) {
            return Err(self.malformed("a descriptor must be a ulong or a symbol"));
        }
        if code == 0x00 {
            self.push(Open::Described { descriptor_done: false })?;
            return Ok(Some(1));
        }
        if let (Some(keys), Some(Open::Seq { map: true, left, .. })) = (&mut self.string_keys, self.stack.last())
            && left % 2 == 0
            && matches!(code, 0xa1 | 0xb1)
        {
            keys.push(self.pos);
        }
        let Some(layout) = layout(code) else {
            return Err(self.malformed("unknown format code"));
        };
        Ok(self.body(layout, &la[1..])?.map(|n| n + 1))
    }

    /// The body of a value of `layout` (after its format code); `la` starts at the body.
    fn body(&mut self, layout: Layout, la: &[u8]) -> Result<Option<usize>, WireError> {
        // The body starts after the format code, if the caller consumed one: the offsets
        // below are relative to `self.pos`, so account for it.
        let code_len = u64::from(!matches!(self.stack.last(), Some(Open::Array { .. })));
        let body_at = self.pos + code_len;
        let limit = self.limit();
        match layout {
            Layout::Fixed(n) => {
                let end = body_at + n;
                if end > limit {
                    return Err(self.malformed("a value runs past the end of its list, map or array"));
                }
                self.skip_to = end;
                self.completed()?;
                Ok(Some(0))
            }
            Layout::Variable(width) => {
                if la.len() < width {
                    return Ok(None);
                }
                let size = read_width(la, width);
                let end = body_at + width as u64 + size;
                if end > limit {
                    return Err(self.malformed("a value runs past the end of its list, map or array"));
                }
                self.skip_to = end;
                self.completed()?;
                Ok(Some(width))
            }
            Layout::Compound { width, map } => {
                if la.len() < 2 * width {
                    return Ok(None);
                }
                let size = read_width(la, width);
                let count = read_width(&la[width..], width);
                let end = body_at + width as u64 + size;
                if size < width as u64 || end > limit {
                    return Err(self.malformed("a list or map's size does not fit"));
                }
                // Every value takes at least one byte (its constructor).
                if count > size - width as u64 {
                    return Err(self.malformed("a list or map counts more values than its size can hold"));
                }
                if map && !count.is_multiple_of(2) {
                    return Err(self.malformed("a map holds an odd number of keys and values"));
                }
                self.push(Open::Seq { end, left: count as u32, map })?;
                Ok(Some(2 * width))
            }
            Layout::Array(width) => {
                if la.len() < 2 * width {
                    return Ok(None);
                }
                let size = read_width(la, width);
                let count = read_width(&la[width..], width);
                let end = body_at + width as u64 + size;
                if end > limit {
                    return Err(self.malformed("an array's size does not fit"));
                }
                // An empty array may leave its constructor out (serde_amqp writes it so).
                if count == 0 && size == width as u64 {
                    self.completed()?;
                    return Ok(Some(2 * width));
                }
                // The count and at least one constructor byte.
                if size < width as u64 + 1 {
                    return Err(self.malformed("an array's size does not fit"));
                }
                self.push(Open::ArrayCtor { end, left: count as u32 })?;
                Ok(Some(2 * width))
            }
        }
    }

    /// An array's element constructor was read (`code`, at `self.pos`): how its elements are walked.
    fn array_elements(&mut self, code: u8, end: u64, left: u32) -> Result<(), WireError> {
        let element = match layout(code) {
            Some(l @ (Layout::Fixed(_) | Layout::Variable(_))) => l,
            Some(_) => return Err(self.malformed("an array of lists, maps or arrays (serde_amqp cannot decode them)")),
            None if code == 0x00 => {
                return Err(self.malformed("an array of described values (serde_amqp cannot decode them)"));
            }
            None => return Err(self.malformed("unknown format code in an array's constructor")),
        };
        let elements_at = self.pos + 1;
        if elements_at > end {
            return Err(self.malformed("an array's constructor runs past its end"));
        }
        let room = end - elements_at;
        match element {
            Layout::Fixed(n) => {
                let fits =
                    if n == 0 { left <= MAX_ZERO_WIDTH_ELEMENTS && room == 0 } else { u64::from(left) * n == room };
                if !fits {
                    return Err(self.malformed("an array's count does not match its size"));
                }
                // Nothing inside can nest: skip the elements whole.
                self.replace_top(Open::Array { end, left: 0, element });
                self.skip_to = end;
            }
            _ => {
                // Each element is at least its size byte(s).
                if u64::from(left) > room {
                    return Err(self.malformed("an array counts more elements than its size can hold"));
                }
                self.replace_top(Open::Array { end, left, element });
            }
        }
        Ok(())
    }
}

/// The numeric descriptor of the described value at `at` (`0x00`, then `ulong0`, a
/// `smallulong` or a `ulong`): a performative's, or a message section's.
pub fn descriptor_code(bytes: &[u8], at: usize) -> Result<u64, WireError> {
    let malformed = |what| WireError::Malformed { at: at as u64, what };
    match bytes.get(at..).unwrap_or_default() {
        [0x00, 0x53, code, ..] => Ok(u64::from(*code)),
        [0x00, 0x80, rest @ ..] if rest.len() >= 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[..8]);
            Ok(u64::from_be_bytes(b))
        }
        [0x00, 0x44, ..] => Ok(0),
        [0x00, ..] => Err(malformed("the descriptor of a performative or message section must be numeric")),
        _ => Err(malformed("a performative or message section must be a described value")),
    }
}

/// Checks a whole sequence of values (a message's sections, a request body).
pub fn check_values(bytes: &[u8], max_depth: usize) -> Result<(), WireError> {
    let mut walker = Walker::new(max_depth);
    walker.feed(bytes)?;
    if !walker.is_complete() {
        return Err(WireError::Malformed { at: bytes.len() as u64, what: "a value runs past the end of the data" });
    }
    Ok(())
}

/// Checks the one value that starts at `at`, re-encodes every map key in it that is a string
/// as a symbol (`str8`/`str32` to `sym8`/`sym32`: same length, in place), and returns the
/// offset just past it and how many keys changed.
///
/// Every map of an AMQP performative (`fields`, filter sets, annotations) has symbol keys;
/// rhea, under the official Node.js SDK, writes some with string keys (a dead-letter
/// `rejected` outcome's `info`), and Service Bus accepts them. A key that is not ASCII
/// stays invalid as a symbol, and its decoder refuses it.
pub fn symbolize_map_keys(bytes: &mut [u8], at: usize, max_depth: usize) -> Result<(usize, usize), WireError> {
    let mut walker = Walker::new(max_depth).collecting_string_keys();
    let end = walk_one(&mut walker, bytes, at)?;
    let keys = walker.string_keys();
    for &key in keys {
        let code = &mut bytes[at + key as usize];
        *code = if *code == 0xa1 { 0xa3 } else { 0xb3 };
    }
    Ok((end, keys.len()))
}

/// Checks the one value that starts at `at` and returns the offset just past it.
pub fn value_end(bytes: &[u8], at: usize, max_depth: usize) -> Result<usize, WireError> {
    walk_one(&mut Walker::new(max_depth), bytes, at)
}

fn walk_one(walker: &mut Walker, bytes: &[u8], at: usize) -> Result<usize, WireError> {
    let rest = bytes.get(at..).unwrap_or_default();
    let offset = |e: WireError| match e {
        WireError::TooDeep { at: a, limit } => WireError::TooDeep { at: a + at as u64, limit },
        WireError::Malformed { at: a, what } => WireError::Malformed { at: a + at as u64, what },
    };
    let taken = walker.run(rest, true).map_err(offset)?;
    if walker.values == 0 || walker.skip_to > walker.pos || walker.carry_len != 0 {
        return Err(WireError::Malformed { at: bytes.len() as u64, what: "a value runs past the end of the data" });
    }
    Ok(at + taken)
}

#[cfg(test)]
mod tests;
