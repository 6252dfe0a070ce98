//! tools: what runs beside the relay, never inside it.
//!
//! [`scratch`] starts throwaway Postgres clusters and NATS servers (the demo,
//! the benchmarks and the tests use them); [`demo`] is `chat-relay demo`;
//! [`bench`](mod@bench) is `chat-relay bench`. Nothing in the relay's stages imports
//! from here.

pub mod bench;
pub mod demo;
pub mod scratch;
