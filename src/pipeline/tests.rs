//! The stage alone: real decoded transactions in, a recording fan-out out.

use std::sync::Mutex;

use chrono::Utc;
use uuid::Uuid;

use super::*;
use crate::event::Participant;
use crate::pgoutput::Decoder;
use crate::protocol::FrameKind;
use crate::sequencer::SequencerConfig;

/// Records what the pipeline asked of its fan-out and checkpoint.
#[derive(Default)]
struct Recorder {
    wants: bool,
    log: Mutex<Vec<String>>,
}

impl Recorder {
    fn wanting() -> Arc<Recorder> {
        Arc::new(Recorder { wants: true, ..Default::default() })
    }
    fn push(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Fanout for Recorder {
    fn wants(&self, _chat_id: &Uuid) -> bool {
        self.wants
    }
    fn publish(&self, frame: Arc<EventFrame>) {
        self.push(format!("{:?} {}", frame.kind, frame.seq));
    }
    fn revoke(&self, _chat_id: Uuid, _user_id: Uuid) {
        self.push("revoke".into());
    }
    fn member(&self, _chat_id: Uuid, _user_id: Uuid, member: bool) {
        self.push(format!("member {member}"));
    }
    fn resync_all(&self) {
        self.push("resync".into());
    }
}

impl Checkpoint for Recorder {
    fn handed_on(&self, lsn: Lsn) {
        self.push(format!("handed {lsn}"));
    }
    fn reset(&self) {
        self.push("reset".into());
    }
    fn term(&self, term: u64) {
        self.push(format!("term {term}"));
    }
}

fn pipeline(fanout: &Arc<Recorder>, checkpoint: &Arc<Recorder>) -> Pipeline {
    Pipeline::new(Sequencer::new(SequencerConfig::default()), fanout.clone(), checkpoint.clone(), None)
}

/// The committed transactions of the captured pgoutput stream.
fn captured() -> Vec<Transaction> {
    let mut d = Decoder::new();
    crate::pgoutput::tests::captured().iter().filter_map(|(_, b)| d.feed(b).unwrap()).collect()
}

#[tokio::test]
async fn a_real_stream_reaches_the_fanout_in_order_and_a_replay_adds_no_message() {
    let (fanout, checkpoint) = (Recorder::wanting(), Recorder::wanting());
    let mut p = pipeline(&fanout, &checkpoint);
    let txns = captured();
    let last_end = txns.last().map(|t| t.end_lsn).unwrap();
    for t in txns {
        p.transaction(t).await.unwrap();
    }
    let log = fanout.take();
    let messages: Vec<&String> = log.iter().filter(|l| l.starts_with("Message")).collect();
    assert_eq!(messages, ["Message 1", "Message 2"], "{log:?}");
    assert!(log.contains(&"member true".to_string()), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("Delete")), "{log:?}");
    assert_eq!(checkpoint.take().last(), Some(&format!("handed {last_end}")));

    // The same WAL again (a reconnect replays from the confirmed position):
    // no message twice.
    for t in captured() {
        p.transaction(t).await.unwrap();
    }
    assert!(!fanout.take().iter().any(|l| l.starts_with("Message")));
}

#[tokio::test]
async fn a_new_term_forgets_what_was_seen_and_says_so_to_the_checkpoint() {
    let (fanout, checkpoint) = (Recorder::wanting(), Recorder::wanting());
    let mut p = pipeline(&fanout, &checkpoint);
    for t in captured() {
        p.transaction(t).await.unwrap();
    }
    fanout.take();
    checkpoint.take();
    p.term(7);
    assert_eq!(checkpoint.take()[0], "term 7");
    // The new term replays the slot: its messages go out again (the
    // publisher's ids and the sessions' seqs drop what was delivered).
    for t in captured() {
        p.transaction(t).await.unwrap();
    }
    assert_eq!(fanout.take().iter().filter(|l| l.starts_with("Message")).count(), 2);
}

#[test]
fn a_slot_reset_resynchronises_everyone_and_resets_the_checkpoint() {
    let (fanout, checkpoint) = (Recorder::wanting(), Recorder::wanting());
    let mut p = pipeline(&fanout, &checkpoint);
    p.slot_reset("slot recreated");
    assert_eq!(fanout.take(), ["resync"]);
    assert_eq!(checkpoint.take()[0], "reset");
}

fn sequenced(event: ChatEvent) -> Sequenced {
    Sequenced { commit_time: Utc::now(), event, position: None }
}

#[test]
fn dispatch_turns_removals_truncation_and_watermarks_into_what_the_fanout_does() {
    let fanout = Recorder::wanting();
    let (chat, user) = (Uuid::new_v4(), Uuid::new_v4());
    let p = |d, r| Participant { chat_id: chat, user_id: user, delivered_seq: d, read_seq: r };
    dispatch(sequenced(ChatEvent::ParticipantRemoved { chat_id: chat, user_id: user }), &*fanout);
    dispatch(sequenced(ChatEvent::Truncated), &*fanout);
    // A participant row that changed nothing a client sees: membership only.
    dispatch(sequenced(ChatEvent::ParticipantChanged { now: p(1, 1), previous: Some(p(1, 1)) }), &*fanout);
    // Watermarks moved: a receipt too.
    dispatch(sequenced(ChatEvent::ParticipantChanged { now: p(2, 1), previous: Some(p(1, 1)) }), &*fanout);
    assert_eq!(
        fanout.take(),
        ["revoke", "resync", "member true", "member true", &format!("{:?} 2", FrameKind::Receipt)]
    );
}

#[test]
fn frames_of_chats_nobody_wants_are_not_encoded_but_membership_still_moves() {
    let fanout = Arc::new(Recorder::default()); // wants nothing
    let (chat, user) = (Uuid::new_v4(), Uuid::new_v4());
    dispatch(sequenced(ChatEvent::Deleted { chat_id: chat, id: Uuid::new_v4(), seq: 3 }), &*fanout);
    let p = |d| Participant { chat_id: chat, user_id: user, delivered_seq: d, read_seq: 0 };
    dispatch(sequenced(ChatEvent::ParticipantChanged { now: p(2), previous: Some(p(1)) }), &*fanout);
    dispatch(sequenced(ChatEvent::ParticipantRemoved { chat_id: chat, user_id: user }), &*fanout);
    assert_eq!(fanout.take(), ["member true", "revoke"]);
}

/// Issue #17 item 6: a queueing fan-out (JetStream) that holds too much
/// stops the stage between changes, not only between transactions, so one
/// transaction of any size is handed on in bounded memory.
#[tokio::test]
async fn a_big_transaction_waits_for_a_full_backlog_between_changes() {
    use crate::pgoutput::tests::build;

    /// Queues like the JetStream fan-out: counts in a Backlog, drained by hand.
    struct Queueing {
        backlog: Arc<Backlog>,
        queued: Mutex<Vec<i64>>,
    }
    impl Fanout for Queueing {
        fn wants(&self, _: &Uuid) -> bool {
            true
        }
        fn publish(&self, frame: Arc<EventFrame>) {
            self.backlog.add();
            self.queued.lock().unwrap().push(frame.seq);
        }
        fn revoke(&self, _: Uuid, _: Uuid) {}
        fn member(&self, _: Uuid, _: Uuid, _: bool) {}
        fn resync_all(&self) {}
    }

    const ROWS: i64 = 1_000;
    const LIMIT: usize = 10;
    let chat = Uuid::new_v4();
    let mut d = Decoder::new();
    let feed = |d: &mut Decoder, b: Vec<u8>| d.feed(&bytes::Bytes::from(b)).unwrap();
    feed(&mut d, build::relation_named(7, "chat_messages", &["id", "chat_id", "seq"]));
    feed(&mut d, build::begin(1));
    for seq in 1..=ROWS {
        feed(&mut d, build::insert(7, &[&Uuid::new_v4().to_string(), &chat.to_string(), &seq.to_string()]));
    }
    let txn = feed(&mut d, build::commit(0x1000)).expect("the transaction at commit");

    let backlog = Arc::new(Backlog::new(LIMIT));
    let fanout = Arc::new(Queueing { backlog: backlog.clone(), queued: Mutex::new(Vec::new()) });
    let checkpoint = Recorder::wanting();
    let mut p = Pipeline::new(
        Sequencer::new(SequencerConfig::default()),
        fanout.clone(),
        checkpoint.clone(),
        Some(backlog.clone()),
    );
    let stage = tokio::spawn(async move { p.transaction(txn).await.map(|_| p) });
    let mut delivered = Vec::new();
    let mut most = 0;
    while delivered.len() < ROWS as usize {
        // Let the stage run until it waits (or is done), then look.
        while backlog.queued() <= LIMIT && !stage.is_finished() {
            tokio::task::yield_now().await;
        }
        most = most.max(backlog.queued());
        assert!(backlog.queued() <= LIMIT + 1, "{} queued", backlog.queued());
        let batch: Vec<i64> = std::mem::take(&mut *fanout.queued.lock().unwrap());
        for _ in &batch {
            backlog.done();
        }
        delivered.extend(batch);
    }
    stage.await.unwrap().unwrap();
    assert_eq!(delivered, (1..=ROWS).collect::<Vec<_>>());
    assert_eq!(most, LIMIT + 1, "the stage stopped at the limit");
}
