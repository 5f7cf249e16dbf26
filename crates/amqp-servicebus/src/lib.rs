//! A raw AMQP 1.0 client for Azure Service Bus, built on `fe2o3-amqp` and
//! `fe2o3-amqp-cbs`: connection strings, SAS tokens, CBS, senders, peek-lock
//! receivers, settlement and `$management` operations.
//!
//! Status: the crate is laid out by the foundation work; its client is built
//! under its own issue, and nothing in it is usable yet.
