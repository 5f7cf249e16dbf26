use super::*;
use fe2o3_amqp_types::messaging::{
    ApplicationProperties, Header, Message, Properties, message::__private::Serializable,
};
use serde_amqp::Value;
use serde_amqp::primitives::{Array, Binary, OrderedMap, Symbol, Timestamp, Uuid};

fn encode(v: &Value) -> Vec<u8> {
    serde_amqp::to_vec(v).unwrap()
}

fn nested_lists(depth: usize) -> Value {
    let mut v = Value::Null;
    for _ in 0..depth {
        v = Value::List(vec![v, Value::Uint(7)]);
    }
    v
}

/// Values of every kind, as serde_amqp encodes them, walk to their exact end, whole and byte by byte.
#[test]
fn every_kind_of_value_walks_to_its_end() {
    let mut map = OrderedMap::new();
    map.insert(Value::Symbol(Symbol::from("k")), Value::List(vec![Value::Int(-1), Value::String("x".repeat(300))]));
    let values = vec![
        Value::Null,
        Value::Bool(true),
        Value::Ubyte(1),
        Value::Ushort(2),
        Value::Uint(0),
        Value::Uint(300),
        Value::Ulong(0),
        Value::Ulong(u64::MAX),
        Value::Long(-5),
        Value::Double(1.5.into()),
        Value::Timestamp(Timestamp::from_milliseconds(5)),
        Value::Uuid(Uuid::from([7u8; 16])),
        Value::Binary(Binary::from(vec![1u8; 70_000])),
        Value::String("é".into()),
        Value::Symbol(Symbol::from("sym")),
        Value::List(vec![]),
        Value::List((0..300).map(Value::Uint).collect()),
        Value::Map(map),
        Value::Array(Array(vec![Value::Uint(1), Value::Uint(2)])),
        Value::Array(Array(vec![Value::String("a".into()), Value::String("bc".into())])),
        Value::Array(Array(vec![])),
        nested_lists(MAX_DEPTH),
    ];
    for v in values {
        let bytes = encode(&v);
        assert_eq!(value_end(&bytes, 0, MAX_DEPTH), Ok(bytes.len()), "{v:?}");
        let mut w = Walker::new(MAX_DEPTH);
        for b in &bytes {
            w.feed(std::slice::from_ref(b)).unwrap();
        }
        assert!(w.is_complete(), "{v:?}");
        assert_eq!(w.values(), 1);
    }
}

#[test]
fn a_message_as_fe2o3_encodes_it_is_a_sequence_of_values() {
    let message = Message::builder()
        .header(Header { durable: true, ..Default::default() })
        .properties(Properties::builder().message_id(String::from("m1")).build())
        .application_properties(ApplicationProperties::builder().insert("k", 1i64).build())
        .data(Binary::from(vec![1u8, 2, 3]))
        .build();
    let bytes = serde_amqp::to_vec(&Serializable(message)).unwrap();
    check_values(&bytes, MAX_DEPTH).unwrap();
    // Every split point gives the same answer.
    for cut in 0..bytes.len() {
        let mut w = Walker::new(MAX_DEPTH);
        w.feed(&bytes[..cut]).unwrap();
        w.feed(&bytes[cut..]).unwrap();
        assert!(w.is_complete() && w.values() == 4, "cut at {cut}");
        assert_eq!(w.fed(), bytes.len() as u64);
    }
}

fn described_chain(depth: usize) -> Vec<u8> {
    let mut bytes = [0x00, 0x53, 0x01].repeat(depth);
    bytes.push(0x40);
    bytes
}

fn list32_chain(depth: usize) -> Vec<u8> {
    // Each list32 holds the next one: size covers the rest, count 1.
    let mut bytes = vec![0x40];
    for _ in 0..depth {
        let inner = bytes;
        bytes = vec![0xd0];
        bytes.extend_from_slice(&((inner.len() + 4) as u32).to_be_bytes());
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&inner);
    }
    bytes
}

#[test]
fn nesting_is_refused_one_level_past_the_limit_whatever_the_container() {
    for (name, make) in [("described", described_chain as fn(usize) -> Vec<u8>), ("list32", list32_chain)] {
        let ok = make(8);
        assert_eq!(check_values(&ok, 8), Ok(()), "{name}");
        let deep = make(9);
        assert!(matches!(check_values(&deep, 8), Err(WireError::TooDeep { limit: 8, .. })), "{name}");
        // The attacks from the security review: thousands of levels in a few kilobytes.
        let attack = make(5000);
        assert!(matches!(check_values(&attack, MAX_DEPTH.min(50)), Err(WireError::TooDeep { .. })), "{name}");
    }
}

#[test]
fn the_refused_offset_leaves_a_prefix_within_the_limit() {
    let deep = list32_chain(100);
    let Err(WireError::TooDeep { at, .. }) = check_values(&deep, 10) else { panic!() };
    let mut w = Walker::new(10);
    w.feed(&deep[..at as usize]).unwrap();
    assert!(!w.is_complete());
}

#[test]
fn descriptors_must_be_ulong_or_symbol() {
    // 00 53 75 followed by a chain of 0x00 (descriptor of a descriptor of …): finding 3.
    let mut attack = vec![0x00, 0x53, 0x75];
    attack.extend(std::iter::repeat_n(0x00, 5000));
    assert!(matches!(check_values(&attack, MAX_DEPTH), Err(WireError::Malformed { .. })));
    assert!(check_values(&[0x00, 0xa3, 0x01, b'x', 0x40], MAX_DEPTH).is_ok());
    assert!(check_values(&[0x00, 0xa1, 0x01, b'x', 0x40], MAX_DEPTH).is_err());
}

#[test]
fn counts_that_disagree_with_sizes_are_malformed() {
    let bad: &[&[u8]] = &[
        // list8 counting 2 values but holding 1
        &[0xc0, 0x02, 0x02, 0x40],
        // list8 counting 1 value but holding 2
        &[0xc0, 0x03, 0x01, 0x40, 0x40],
        // list8 counting 255 with size 1: a decoder reading by count would take the siblings as children
        &[0xc0, 0x01, 0xff, 0xc0, 0x01, 0xff, 0xc0, 0x01, 0xff],
        // map8 with an odd count
        &[0xc1, 0x02, 0x01, 0x40],
        // map8 of size 0: no room for its count (serde_amqp overflowed on `c1 00 00`)
        &[0xc1, 0x00, 0x00],
        // a value running past its list
        &[0xc0, 0x02, 0x01, 0xa1, 0x05, b'a'],
        // array of uint with a count its size cannot hold
        &[0xe0, 0x05, 0x02, 0x70, 0, 0, 0, 1],
        // array of 4 billion nulls in 10 bytes
        &[0xf0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x40],
        // array of strings whose count exceeds its elements
        &[0xe0, 0x04, 0x02, 0xa1, 0x01, b'a'],
        // unknown format codes
        &[0x01],
        &[0x57, 0x00],
        // truncated
        &[0xa1, 0x05, b'a'],
        &[0xd0, 0x00, 0x00],
    ];
    for b in bad {
        assert!(matches!(check_values(b, MAX_DEPTH), Err(WireError::Malformed { .. })), "{b:02x?}");
    }
}

/// What the walk allows, serde_amqp decodes within an ordinary thread's stack, in debug builds too.
#[test]
fn decoding_the_deepest_allowed_value_fits_in_a_small_stack() {
    for p in [encode(&nested_lists(MAX_DEPTH)), described_chain(MAX_DEPTH), list32_chain(MAX_DEPTH)] {
        check_values(&p, MAX_DEPTH).unwrap();
        let p2 = p.clone();
        std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || {
                let _ = serde_amqp::from_slice::<Value>(&p2);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}

/// serde_amqp keeps an array's element code while it decodes an element's contents: it reads
/// the entries of a map inside an array as maps themselves, and so on. The fuzzer found an
/// input (a `$management` request with an array of maps) on which that recursed until it
/// overflowed. Such arrays are refused; arrays of scalars are not.
#[test]
fn arrays_of_compound_or_described_values_are_refused() {
    let found = include_bytes!("regressions/array-of-maps-misread-by-serde-amqp.bin");
    assert!(matches!(check_values(found, MAX_DEPTH), Err(WireError::Malformed { .. })));
    for bad in [
        &[0xe0, 0x06, 0x02, 0xc1, 0x01, 0x00, 0x01, 0x00][..], // two empty map8s
        &[0xe0, 0x04, 0x01, 0xc0, 0x01, 0x00],                 // one empty list8
        &[0xe0, 0x05, 0x01, 0xe0, 0x02, 0x00, 0x40],           // an array of arrays
        &[0xe0, 0x05, 0x01, 0x00, 0x53, 0x01, 0x40],           // described elements
    ] {
        let e = check_values(bad, MAX_DEPTH).unwrap_err();
        assert!(e.to_string().contains("serde_amqp cannot decode them"), "{bad:02x?}: {e}");
    }
    let uuids = encode(&Value::Array(Array(vec![Value::Uuid(Uuid::from([1u8; 16])); 3])));
    assert_eq!(check_values(&uuids, MAX_DEPTH), Ok(()));
}

#[test]
fn frame_headers_and_performatives() {
    use crate::frame::{FrameHeader, performative};
    let h = FrameHeader::parse(&[0, 0, 0, 20, 2, 0, 0, 3]).unwrap();
    assert_eq!((h.size, h.body_offset(), h.channel), (20, 8, 3));
    assert!(FrameHeader::parse(&[0, 0, 0, 4, 2, 0, 0, 0]).is_err());
    assert!(FrameHeader::parse(&[0, 0, 0, 8, 3, 0, 0, 0]).is_err());
    // A transfer performative (list0 fields) followed by payload bytes.
    let body = [0x00, 0x53, 0x14, 0x45, 0xde, 0xad];
    assert_eq!(performative(&body, MAX_DEPTH), Ok(Some((0x14, 4))));
    assert_eq!(performative(&[], MAX_DEPTH), Ok(None));
    assert!(performative(&[0x40], MAX_DEPTH).is_err());
}

#[test]
fn string_map_keys_become_symbols_in_place_and_nothing_else_changes() {
    // A list holding: a map {str "k": str "v", sym "s": 1}, and a string "x" (not a key).
    let map_body =
        [&[0xa1, 0x01, b'k'][..], &[0xa1, 0x01, b'v'][..], &[0xa3, 0x01, b's'][..], &[0x54, 0x01][..]].concat();
    let mut map = vec![0xc1, (map_body.len() + 1) as u8, 0x04];
    map.extend_from_slice(&map_body);
    let mut list_body = map.clone();
    list_body.extend_from_slice(&[0xa1, 0x01, b'x']);
    let mut bytes = vec![0xc0, (list_body.len() + 1) as u8, 0x02];
    bytes.extend_from_slice(&list_body);
    let original = bytes.clone();
    let (end, changed) = crate::symbolize_map_keys(&mut bytes, 0, crate::MAX_DEPTH).unwrap();
    assert_eq!((end, changed), (bytes.len(), 1));
    let diff: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != original[i]).collect();
    assert_eq!(diff, vec![6], "only the string key's constructor");
    assert_eq!(bytes[6], 0xa3);
}
