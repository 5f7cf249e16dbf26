//! W3C trace context: a message's `traceparent` (or `Diagnostic-Id`, as the Azure SDKs set
//! it) makes a handler call's span its child, and what the guest sends carries the call's
//! context on.
//!
//! The host records its spans with `tracing`: a call's span holds the OpenTelemetry messaging
//! attributes and `trace_id`, `span_id` and `parent_span_id`, which every log line inside it
//! carries (`--log-format json`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use amqp_servicebus::{OrderedMap, SimpleValue};

/// The W3C application property.
pub const TRACEPARENT: &str = "traceparent";
/// The application property the Azure SDKs set, with a `traceparent` value.
pub const DIAGNOSTIC_ID: &str = "Diagnostic-Id";

/// A span's place in a trace: the trace, the span, and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace's id (never all zero).
    pub trace_id: u128,
    /// The span's id (never zero).
    pub span_id: u64,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Reads a `traceparent` value (`00-<trace id>-<span id>-<flags>`); `None` if it is not one.
    /// Versions above `00` are read by the same layout, as the recommendation asks.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        fn hex(s: &str, len: usize) -> Option<&str> {
            (s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(s)
        }
        let version = u8::from_str_radix(hex(version, 2)?, 16).ok()?;
        if version == 0xff || (version == 0 && parts.next().is_some()) {
            return None;
        }
        let trace_id = u128::from_str_radix(hex(trace, 32)?, 16).ok()?;
        let span_id = u64::from_str_radix(hex(span, 16)?, 16).ok()?;
        let flags = u8::from_str_radix(hex(flags, 2)?, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self { trace_id, span_id, flags })
    }

    /// The context a message carries: its `traceparent`, else its `Diagnostic-Id`.
    pub fn of(properties: &OrderedMap<String, SimpleValue>) -> Option<Self> {
        [TRACEPARENT, DIAGNOSTIC_ID].iter().find_map(|key| match properties.get(*key) {
            Some(SimpleValue::String(v)) => Self::parse(v),
            _ => None,
        })
    }

    /// A new trace's first span (sampled).
    pub fn root() -> Self {
        let trace_id = (u128::from(next_id()) << 64) | u128::from(next_id());
        Self { trace_id, span_id: next_id(), flags: 1 }
    }

    /// A new span in this trace, this one's child.
    pub fn child(&self) -> Self {
        Self { span_id: next_id(), ..*self }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        TraceId(self.trace_id).to_string()
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        SpanId(self.span_id).to_string()
    }

    /// Puts this context on a message about to be sent (`traceparent` and `Diagnostic-Id`),
    /// unless it already carries one of its own.
    pub fn stamp(&self, properties: &mut OrderedMap<String, SimpleValue>) {
        if Self::of(properties).is_some() {
            return;
        }
        let value = self.to_string();
        properties.insert(TRACEPARENT.into(), SimpleValue::String(value.clone()));
        properties.insert(DIAGNOSTIC_ID.into(), SimpleValue::String(value));
    }
}

/// A trace id, shown as 32 lower-case hex digits.
#[derive(Debug, Clone, Copy)]
pub struct TraceId(pub u128);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A span id, shown as 16 lower-case hex digits.
#[derive(Debug, Clone, Copy)]
pub struct SpanId(pub u64);

impl std::fmt::Display for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::fmt::Display for TraceContext {
    /// The `traceparent` value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// A non-zero id, unpredictable enough for tracing: splitmix64 over a counter whose start is
/// drawn once per process (a random draw per span would be a system call per message).
fn next_id() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let seed = *SEED.get_or_init(|| {
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        a ^ b
    });
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if z != 0 {
            return z;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_values_are_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(text).unwrap();
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(ctx.to_string(), text);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "|4bf92f3577b34da6a3ce929d0e0e4736.00f067aa0ba902b7.",
            "",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        // A later version may add fields after the flags.
        assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future").is_some());
    }

    #[test]
    fn a_child_keeps_the_trace_and_a_stamp_keeps_the_senders_own() {
        let root = TraceContext::root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        let mut props = OrderedMap::new();
        child.stamp(&mut props);
        assert_eq!(TraceContext::of(&props), Some(child));
        assert_eq!(props.get(DIAGNOSTIC_ID), props.get(TRACEPARENT));
        TraceContext::root().stamp(&mut props);
        assert_eq!(TraceContext::of(&props), Some(child), "a message's own context is kept");
        let mut azure = OrderedMap::new();
        azure.insert(DIAGNOSTIC_ID.to_string(), SimpleValue::String(child.to_string()));
        assert_eq!(TraceContext::of(&azure), Some(child));
    }
}
