//! `$cbs` and `$management` request bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| servicebus_emulator::fuzzing::request(data));
