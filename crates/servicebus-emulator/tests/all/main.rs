//! Integration tests of the emulator: the official Python and Node.js SDKs, a Rust AMQP
//! client (transactions), and raw frames.

mod attacks;
mod cli;
mod durable;
mod frames;
mod limits;
mod management;
mod node_sdk;
mod python_sdk;
mod scopes;
mod support;
mod tls;
mod transactions;
