use super::*;

fn raw(seq: i64) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(format!("{{\"seq\":{seq}}}")).unwrap())
}

fn listed(chat: Uuid, last_seq: i64, read: i64, has_unread: bool) -> Listed {
    Listed { chat, last_seq, at: last_seq * 10, read, delivered: read, has_unread, streamed: None }
}

fn insert(chat: Uuid, seq: i64, sender: Uuid) -> Change {
    Change::Insert { chat, seq, sender: Some(sender), at: seq * 10, row: raw(seq) }
}

/// A state holding `user`'s list, every summary exact.
fn loaded(user: Uuid, list: Vec<Listed>) -> State {
    let mut s = State::default();
    let id = s.begin_load();
    s.install(id, user, list, false).unwrap();
    answer_all(&mut s, |_| (0, None));
    s
}

/// Answers every pending ask as the table would: `table(chat)` gives the
/// chat's (unread up to the bound, newest seq).
/// The table's answer to `ask` when it shows the user as a participant of a
/// chat at `last_seq` and nothing else (no row, watermarks 0, nothing unread).
fn table(ask: &Ask, last_seq: i64) -> Answer {
    Answer {
        ask: ask.clone(),
        last_seq,
        last: None,
        at: 0,
        member: true,
        read: 0,
        delivered: 0,
        unread: 0,
        stale: false,
    }
}

fn answer_all(s: &mut State, table_of: impl Fn(&Ask) -> (u32, Option<i64>)) -> Vec<Ask> {
    let (_, asks) = s.drain();
    for ask in &asks {
        let (unread, newest) = table_of(ask);
        s.answer(Answer {
            last: newest.map(|n| (n, raw(n))),
            at: newest.unwrap_or(0) * 10,
            unread,
            ..table(ask, ask.bound.unwrap_or(newest.unwrap_or(0)))
        });
    }
    asks
}

/// The same asks, asked once more.
fn again(asks: &[Ask]) -> Vec<Ask> {
    asks.iter().map(|a| Ask { tries: a.tries + 1, ..a.clone() }).collect()
}

fn chat_outs(s: &mut State) -> Vec<Out> {
    s.drain().0
}

#[test]
fn inserts_count_for_others_only_and_a_read_to_the_end_clears() {
    let (me, bob, chat) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = loaded(me, vec![listed(chat, 0, 0, false)]);
    s.apply(insert(chat, 1, bob));
    s.apply(insert(chat, 2, me));
    s.apply(insert(chat, 3, bob));
    let (outs, asks) = s.drain();
    assert!(asks.is_empty(), "nothing asked in steady state: {asks:?}");
    assert_eq!(outs.len(), 3);
    let sum = s.summary(&me, &chat).unwrap();
    assert_eq!((sum.last_seq, sum.unread, s.unread_chats(&me)), (3, 2, 1));
    s.apply(Change::Marks { chat, user: me, read: 3, delivered: 3 });
    let (outs, asks) = s.drain();
    assert!(asks.is_empty());
    assert_eq!(outs, [Out::Chat { user: me, chat }]);
    assert_eq!((s.summary(&me, &chat).unwrap().unread, s.unread_chats(&me)), (0, 0));
}

#[test]
fn a_partial_read_is_asked_and_inserts_meanwhile_add_to_the_answer() {
    let (me, bob, chat) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = loaded(me, vec![listed(chat, 0, 0, false)]);
    for seq in 1..=4 {
        s.apply(insert(chat, seq, bob));
    }
    s.drain();
    s.apply(Change::Marks { chat, user: me, read: 2, delivered: 2 });
    let (outs, asks) = s.drain();
    assert!(outs.is_empty(), "no frame before the count is known");
    assert_eq!(asks.len(), 1);
    assert_eq!(asks[0].bound, Some(4));
    assert_eq!(asks[0].user.as_ref().map(|u| u.read), Some(Some(2)));
    // One more arrives before the answer (counted up to 4: 2).
    s.apply(insert(chat, 5, bob));
    assert!(chat_outs(&mut s).is_empty());
    s.answer(Answer { read: 2, delivered: 2, unread: 2, ..table(&asks[0], 5) });
    assert_eq!(chat_outs(&mut s), [Out::Chat { user: me, chat }], "the waiting frame, merged");
    assert_eq!(s.summary(&me, &chat).unwrap().unread, 3);
}

#[test]
fn a_stale_answer_never_overwrites_a_newer_change() {
    let (me, bob, chat) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = loaded(me, vec![listed(chat, 0, 0, false)]);
    for seq in 1..=4 {
        s.apply(insert(chat, seq, bob));
    }
    s.apply(Change::Marks { chat, user: me, read: 1, delivered: 1 });
    let (_, first) = s.drain();
    // A second partial read before the first answer.
    s.apply(Change::Marks { chat, user: me, read: 3, delivered: 3 });
    let (_, second) = s.drain();
    assert_eq!(second.len(), 1);
    s.answer(Answer { read: 1, delivered: 1, unread: 3, ..table(&first[0], 4) });
    assert!(s.summary(&me, &chat).is_none(), "the stale count is not used");
    s.answer(Answer { read: 3, delivered: 3, unread: 1, ..table(&second[0], 4) });
    assert_eq!(s.summary(&me, &chat).unwrap().unread, 1);
}

#[test]
fn what_streams_while_a_list_is_read_is_not_lost() {
    let (me, bob, chat) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = State::default();
    let id = s.begin_load();
    assert!(s.wants(&chat), "while a list is read, every chat may matter");
    // The list was read before seq 3 committed; seq 3 streams meanwhile.
    s.apply(insert(chat, 3, bob));
    s.install(id, me, vec![listed(chat, 2, 0, true)], false).unwrap();
    let asks = answer_all(&mut s, |a| (if a.bound == Some(3) { 3 } else { 99 }, Some(3)));
    assert_eq!(asks.len(), 1);
    assert_eq!(asks[0].bound, Some(3), "asked up to what streamed");
    let sum = s.summary(&me, &chat).unwrap();
    assert_eq!((sum.last_seq, sum.unread), (3, 3));
    assert!(!s.log.loads.contains_key(&id) && s.log.changes.is_empty(), "the log is dropped");
}

#[test]
fn removal_sends_chat_removed_and_nothing_after_it() {
    let (me, bob, chat) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = loaded(me, vec![listed(chat, 1, 0, true)]);
    assert_eq!(s.unread_chats(&me), 1);
    s.apply(Change::Member { chat, user: me, member: false });
    assert_eq!(chat_outs(&mut s), [Out::Removed { user: me, chat }]);
    assert_eq!(s.unread_chats(&me), 0);
    s.apply(insert(chat, 2, bob));
    s.apply(Change::Marks { chat, user: me, read: 2, delivered: 2 });
    assert!(chat_outs(&mut s).is_empty());
    assert!(!s.wants(&chat), "no inbox user is in it any more");
}

#[test]
fn being_added_asks_for_the_chat_and_the_watermarks() {
    let (me, chat, added) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = loaded(me, vec![listed(chat, 0, 0, false)]);
    s.apply(Change::Member { chat: added, user: me, member: true });
    let (outs, asks) = s.drain();
    assert!(outs.is_empty());
    assert_eq!(asks.len(), 1);
    assert_eq!((asks[0].bound, asks[0].user.as_ref().map(|u| u.read)), (None, Some(None)));
    s.answer(Answer { last: Some((7, raw(7))), at: 70, read: 5, delivered: 6, unread: 2, ..table(&asks[0], 7) });
    assert_eq!(chat_outs(&mut s), [Out::Chat { user: me, chat: added }]);
    let sum = s.summary(&me, &added).unwrap();
    assert_eq!((sum.last_seq, sum.read, sum.delivered, sum.unread), (7, 5, 6, 2));
    assert_eq!(s.entries(&me), 2);
}

#[test]
fn the_last_holder_drops_the_list_and_its_chats() {
    let (me, you, chat) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = loaded(me, vec![listed(chat, 0, 0, false)]);
    let id = s.begin_load();
    s.install(id, you, vec![listed(chat, 0, 0, false)], false).unwrap();
    assert!(s.hold(me));
    assert_eq!((s.users(), s.chats()), (2, 1));
    s.release(me);
    s.release(me);
    assert_eq!((s.users(), s.chats()), (1, 1), "shared chat stays for the other user");
    s.release(you);
    assert_eq!((s.users(), s.chats()), (0, 0));
    assert!(!s.hold(me));
}

#[test]
fn an_answer_from_a_table_behind_the_stream_is_asked_again() {
    let (me, chat, added) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = loaded(me, vec![listed(chat, 0, 0, false)]);
    // Streamed: I was added; the table does not show my row yet.
    s.apply(Change::Member { chat: added, user: me, member: true });
    let (_, asks) = s.drain();
    let not_yet = Answer { member: false, ..table(&asks[0], 1) };
    s.answer(not_yet.clone());
    assert!(chat_outs(&mut s).is_empty(), "nothing sent from a table that is behind");
    assert_eq!(s.drain_retries(), again(&asks));
    // A count up to a seq the table does not show yet: the same.
    s.apply(Change::Marks { chat, user: me, read: 0, delivered: 0 });
    let bob = Uuid::new_v4();
    s.apply(insert(chat, 1, bob));
    s.apply(insert(chat, 2, bob));
    s.drain();
    s.apply(Change::Marks { chat, user: me, read: 1, delivered: 1 });
    let (_, asks) = s.drain();
    assert_eq!(asks[0].bound, Some(2));
    let mut behind = not_yet;
    behind.ask = asks[0].clone();
    behind.member = true;
    s.answer(behind);
    assert!(s.summary(&me, &chat).is_none());
    assert_eq!(s.drain_retries(), again(&asks));
    // Once I am removed, nothing about that chat is asked any more.
    s.apply(Change::Member { chat: added, user: me, member: false });
    s.drain();
    assert!(!s.has_chat(&me, &added));
}

#[test]
fn a_deleted_row_still_visible_in_the_table_is_not_shown() {
    let (me, bob, chat) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = loaded(me, vec![listed(chat, 0, 0, false)]);
    s.apply(insert(chat, 1, bob));
    s.apply(insert(chat, 2, bob));
    s.apply(Change::Marks { chat, user: me, read: 2, delivered: 2 });
    s.drain();
    s.apply(Change::Delete { chat, seq: 2 });
    let (outs, asks) = s.drain();
    assert!(outs.is_empty());
    assert_eq!((asks[0].last.is_some(), asks[0].gone.clone()), (true, vec![2]));
    // The table has not caught up: it still shows seq 2.
    let behind = Answer { last: Some((2, raw(2))), at: 20, read: 2, delivered: 2, stale: true, ..table(&asks[0], 2) };
    s.answer(behind.clone());
    assert!(chat_outs(&mut s).is_empty(), "the deleted row is not sent");
    assert_eq!(s.drain_retries(), again(&asks));
    s.answer(Answer { last: Some((1, raw(1))), at: 10, stale: false, ..behind });
    assert_eq!(chat_outs(&mut s), [Out::Chat { user: me, chat }]);
    let sum = s.summary(&me, &chat).unwrap();
    assert_eq!((sum.last_seq, sum.at, sum.last.unwrap().get()), (2, 10, "{\"seq\":1}"));
}

#[test]
fn a_commit_streamed_just_before_the_list_was_read_is_counted() {
    let (me, chat) = (Uuid::new_v4(), Uuid::new_v4());
    let mut s = State::default();
    let id = s.begin_load();
    // The list does not show seq 3 yet; the stream had brought it.
    let mut l = listed(chat, 2, 0, true);
    l.streamed = Some(3);
    s.install(id, me, vec![l], false).unwrap();
    let asks = answer_all(&mut s, |_| (3, Some(3)));
    assert_eq!(asks[0].bound, Some(3));
    assert_eq!(s.summary(&me, &chat).map(|x| (x.last_seq, x.unread)), Some((3, 3)));
}

#[test]
fn a_join_or_leave_streamed_just_before_the_list_was_read_is_applied() {
    let (me, kept, left, joined) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = State::default();
    // Streamed while nobody here held my list; the list's statement, a
    // moment later, does not see them yet.
    s.apply(Change::Member { chat: left, user: me, member: false });
    s.apply(Change::Member { chat: joined, user: me, member: true });
    s.apply(Change::Member { chat: kept, user: Uuid::new_v4(), member: false });
    let id = s.begin_load();
    s.install(id, me, vec![listed(kept, 0, 0, false), listed(left, 0, 0, false)], false).unwrap();
    assert!(s.has_chat(&me, &kept));
    assert!(!s.has_chat(&me, &left), "a leave the list did not show yet");
    assert!(s.has_chat(&me, &joined), "a join the list did not show yet");
    let (_, asks) = s.drain();
    assert_eq!(asks.iter().map(|a| a.chat).collect::<Vec<_>>(), [joined]);
}

#[test]
fn a_table_that_stays_behind_for_a_second_is_taken_as_the_truth() {
    let (me, chat, added) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut s = loaded(me, vec![listed(chat, 0, 0, false)]);
    s.apply(Change::Member { chat: added, user: me, member: true });
    let (_, mut asks) = s.drain();
    let mut rounds = 0;
    while let Some(ask) = asks.pop() {
        rounds += 1;
        assert!(rounds <= 60, "asked forever");
        s.answer(Answer { member: false, ..table(&ask, 0) });
        asks = s.drain_retries();
    }
    assert_eq!(rounds, 51);
    assert!(!s.has_chat(&me, &added));
    assert_eq!(chat_outs(&mut s), [Out::Removed { user: me, chat: added }]);
    assert!(s.badge_certain(&me), "nothing left uncertain to hold the user's frames");
}
