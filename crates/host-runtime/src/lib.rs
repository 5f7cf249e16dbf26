//! The Wasmtime host that runs `wasi:messaging` guests on Azure Service Bus.
//!
//! Status: the crate is laid out by the foundation work; the host is built
//! under its own issue, and nothing in it is usable yet.
