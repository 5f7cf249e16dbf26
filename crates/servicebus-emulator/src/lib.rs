//! An embedded, Service-Bus-compatible AMQP 1.0 broker for local development
//! and tests, accepted by the official Azure SDKs.
//!
//! Status: the crate is laid out by the foundation work; the broker is built
//! under its own issue, and nothing in it is usable yet.
