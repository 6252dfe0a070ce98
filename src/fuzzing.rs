//! fuzzing: the entry points `cargo fuzz` drives (`fuzz/`), kept out of the
//! stages they exercise. Built only for tests and under `--cfg fuzzing`.
//!
//! Each entry point returns what it saw, so the tests beside it can tell a
//! real stream that decodes from one that silently fails at every message.

use bytes::Bytes;

use crate::event::ChatTxn;
use crate::pgoutput::Decoder;
use crate::protocol::{self, ErrorCode, ServerFrame};

/// What [`fuzz_stream`] got through.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamReport {
    /// Length-prefixed messages fed to the decoder.
    pub messages: usize,
    /// Committed transactions it handed on.
    pub transactions: usize,
    /// Chat events those transactions mapped to.
    pub events: usize,
    /// Messages the decoder refused (each followed by a reset, as a
    /// reconnect would).
    pub errors: usize,
}

/// `data` is a stream of pgoutput messages, each a big-endian u32 length and
/// that many bytes. Every message goes through the decoder, every committed
/// transaction through the chat-event mapping. Must never panic.
pub fn fuzz_stream(data: &[u8]) -> StreamReport {
    let mut report = StreamReport::default();
    let mut decoder = Decoder::new();
    let mut rest = data;
    while rest.len() >= 4 {
        let len = (u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize).min(rest.len() - 4);
        let message = Bytes::copy_from_slice(&rest[4..4 + len]);
        rest = &rest[4 + len..];
        report.messages += 1;
        match decoder.feed(&message) {
            Ok(Some(txn)) => {
                report.transactions += 1;
                report.events += ChatTxn::from_transaction(txn).events.len();
            }
            Ok(None) => {}
            Err(_) => {
                report.errors += 1;
                decoder.reset();
            }
        }
    }
    report
}

/// One client text frame, as the WebSocket layer hands it over (valid
/// UTF-8), parsed and answered the way a session answers it. Returns the
/// answer to a bad frame (None for a good one). Must never panic.
pub fn fuzz_frame(data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?;
    match protocol::parse(text) {
        Ok(_) => None,
        Err(bad) => Some(
            ServerFrame::error(ErrorCode::BadRequest, &bad.message, None).encode(bad.reference.as_ref()).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;
    use uuid::Uuid;

    use super::*;

    /// The captured stream of `pgoutput`'s tests in the fuzz target's format.
    fn captured_stream() -> Vec<u8> {
        crate::pgoutput::tests::captured()
            .iter()
            .flat_map(|(_, m)| (m.len() as u32).to_be_bytes().into_iter().chain(m.iter().copied()))
            .collect()
    }

    #[test]
    fn the_fuzz_entry_point_decodes_the_real_stream() {
        // The seed is understood, so mutations start from real messages.
        let messages = crate::pgoutput::tests::captured().len();
        let report = fuzz_stream(&captured_stream());
        assert_eq!(report.errors, 0, "{report:?}");
        assert_eq!(report.messages, messages);
        assert_eq!(report.transactions, 6, "747 rolled back: {report:?}");
        assert!(report.events >= report.transactions, "{report:?}");
    }

    #[test]
    fn a_refused_message_is_counted_not_swallowed() {
        let mut stream = captured_stream();
        stream.extend_from_slice(&[0, 0, 0, 1, b'?']);
        assert_eq!(fuzz_stream(&stream).errors, 1);
    }

    /// A bad frame's answer is an `error` frame with `bad_request`.
    fn assert_bad_request(answer: &str) {
        let v: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{answer}: {e}"));
        assert_eq!(v["type"], "error", "{answer}");
        assert_eq!(v["code"], "bad_request", "{answer}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// What `cargo fuzz run pgoutput` does, a little, on every `cargo test`.
        #[test]
        fn fuzz_stream_survives_mutated_real_streams(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut stream = captured_stream();
            for (at, byte) in flips {
                let i = at.index(stream.len());
                stream[i] = byte;
            }
            let end = cut.index(stream.len() + 1);
            fuzz_stream(&stream[..end]);
        }

        #[test]
        fn fuzz_stream_survives_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            fuzz_stream(&data);
        }

        /// What `cargo fuzz run client_frame` does, a little, on every `cargo test`.
        #[test]
        fn fuzz_frame_survives_mutated_real_frames(
            pick in 0usize..4,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..128), 0..6),
        ) {
            let c = Uuid::nil();
            let real = [
                format!(r#"{{"type":"subscribe","chat_id":"{c}","after_seq":41,"ref":1}}"#),
                format!(r#"{{"type":"send","chat_id":"{c}","client_generated_id":"{c}","content":"hi","ref":"x"}}"#),
                format!(r#"{{"type":"history","chat_id":"{c}","before_seq":100,"limit":50}}"#),
                r#"{"type":"auth","access_token":"a.b.c","ref":4}"#.to_string(),
            ];
            let mut bytes = real[pick].clone().into_bytes();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte; // ASCII: stays UTF-8
            }
            if let Some(answer) = fuzz_frame(&bytes) {
                assert_bad_request(&answer);
            }
        }

        #[test]
        fn fuzz_frame_survives_arbitrary_text(text in ".{0,300}") {
            if let Some(answer) = fuzz_frame(text.as_bytes()) {
                assert_bad_request(&answer);
            }
        }
    }

    #[test]
    fn real_frames_parse_and_junk_is_answered() {
        let c = Uuid::nil();
        assert_eq!(fuzz_frame(format!(r#"{{"type":"subscribe","chat_id":"{c}"}}"#).as_bytes()), None);
        assert_bad_request(&fuzz_frame(b"{").unwrap_or_default());
    }
}
