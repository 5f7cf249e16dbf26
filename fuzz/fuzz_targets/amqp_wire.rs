//! The non-recursive walker, against the recursive decoder it protects.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = amqp_wire::check_values(data, amqp_wire::MAX_DEPTH);
    // Fed in two pieces, the walk says the same.
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut walker = amqp_wire::Walker::new(amqp_wire::MAX_DEPTH);
    let pieces = walker.feed(&data[..cut]).and_then(|()| walker.feed(&data[cut..]));
    assert_eq!(whole.is_ok(), pieces.is_ok() && walker.is_complete(), "whole {whole:?} vs pieces {pieces:?}");
    // What the walk accepts, serde_amqp decodes without overflowing the stack.
    if whole.is_ok() {
        let mut at = 0;
        while at < data.len() {
            let end = amqp_wire::value_end(data, at, amqp_wire::MAX_DEPTH).expect("checked whole");
            let _ = serde_amqp::from_slice::<serde_amqp::Value>(&data[at..end]);
            at = end;
        }
    }
});
