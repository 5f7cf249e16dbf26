//! Integration tests of the emulator: the official Python SDK, a Rust AMQP
//! client (transactions), and raw frames.

mod frames;
mod python_sdk;
mod support;
mod transactions;
