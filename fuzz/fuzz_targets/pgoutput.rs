//! The pgoutput decoder and the chat-event mapping on hostile bytes: a
//! stream of length-prefixed messages (see `chat_relay::fuzzing::fuzz_stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| { chat_relay::fuzzing::fuzz_stream(data); });
