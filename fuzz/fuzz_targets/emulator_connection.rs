//! The emulator's frame decoder, SASL and connection engine: a byte stream after a protocol header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| servicebus_emulator::fuzzing::connection(data));
