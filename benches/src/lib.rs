//! Criterion benchmarks of the workspace. The benches are in `benches/benches/`;
//! run them with `cargo bench -p benchmarks`. Results, machine and date are
//! recorded in `BENCHMARKS.md` at the repository root.
//!
//! # Layout
//! - `benches/emulator.rs`: the emulator's send + receive + complete throughput.
//! - `benches/host.rs`: one handler call on a fresh instance vs a reused one; message ↔ WIT record.
//! - `benches/client.rs`: AMQP message encoding and decoding; SAS tokens.
//!
//! This library is empty on purpose: the package exists to hold the benches.
