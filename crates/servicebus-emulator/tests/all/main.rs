//! Integration tests of the emulator: the official Python SDK, a Rust AMQP
//! client (transactions), and raw frames.

mod attacks;
mod cli;
mod frames;
mod limits;
mod python_sdk;
mod scopes;
mod support;
mod tls;
mod transactions;
