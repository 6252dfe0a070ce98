//! The client frame parser on hostile text (see
//! `chat_relay::fuzzing::fuzz_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| { chat_relay::fuzzing::fuzz_frame(data); });
