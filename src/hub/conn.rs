//! One connection's side of the hub: a bounded queue of frames, and what
//! travels beside it (revocations, resync requests, subscriptions that fell
//! behind, presence changes), which is never dropped and never waits
//! behind frames.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use rustc_hash::FxBuildHasher;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use crate::catchup::Behind;
use crate::protocol::EventFrame;

/// Connection identifier, unique per process.
pub type ConnId = u64;

/// Deletes remembered for one connection's behind subscriptions, at most:
/// about 2.4 MB. Past it the connection is closed with 4008 (its unsent data
/// passed the memory bound) and resumes with `after_seq`.
pub const MAX_REMEMBERED_DELETES: usize = 100_000;

/// A connection's writer that can take a live frame at once, on the
/// publisher's thread, so a frame costs one socket write and no hand-off to
/// the connection's task (see `gateway::link`).
pub trait Direct: Send + Sync {
    /// Takes `frame` now, or calls `queue` while still holding whatever
    /// orders the frame against the writer's own taking from the queue, so
    /// frames keep their order either way. With `hold`, what it takes may
    /// wait for [`Direct::flush`] (so frames that arrive together are
    /// written together).
    fn offer(&self, frame: &Arc<EventFrame>, hold: bool, queue: &mut dyn FnMut()) -> Offered;
    /// Writes what [`Direct::offer`] held.
    fn flush(&self);
    /// Takes a frame that travels beside the queue (an inbox frame) now,
    /// unless `waiting()`, asked while holding whatever orders it against
    /// the writer's own taking of such frames, says older ones wait beside
    /// the queue. What it takes waits for [`Direct::flush`] when it says
    /// [`Offered::Held`], so the caller writes no socket under its locks.
    fn offer_side(&self, text: &Utf8Bytes, waiting: &mut dyn FnMut() -> bool) -> Offered;
}

/// What a [`Direct`] writer did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Left to the queue.
    Queued,
    /// Taken (written, held, or not due).
    Taken,
    /// Taken and held: the first frame held since the writer's last flush,
    /// so the publisher owes it a [`Direct::flush`].
    Held,
}

/// Requests beside the frame queue, taken by the session.
#[derive(Debug, Default)]
pub struct Control {
    /// The user was removed from these chats: say `unsubscribed` (forbidden).
    pub revoked: Vec<Uuid>,
    /// The stream lost continuity (slot recreated, table truncated): check
    /// membership again and catch every subscription up from the table.
    pub resync: bool,
    /// Behind subscriptions whose earlier frames the session has taken.
    pub behind: HashMap<Uuid, Behind>,
    /// Too much was remembered for this connection: close it (4008).
    pub overflow: bool,
    /// Presence changes, latest state per (chat, user).
    pub presence: Vec<(Uuid, Uuid, bool)>,
    /// Inbox frames (`chat`, `chat_removed`), the latest per chat, oldest first.
    pub inbox: Vec<Utf8Bytes>,
}

#[derive(Default)]
struct ControlState {
    revoked: Vec<Uuid>,
    resync: bool,
    behind: HashMap<Uuid, Behind>,
    deletes_left: usize,
    overflow: bool,
    presence: HashMap<(Uuid, Uuid), bool, FxBuildHasher>,
    /// Inbox frames not taken yet: per chat the latest, with its turn.
    inbox: HashMap<Uuid, (u64, Utf8Bytes), FxBuildHasher>,
    inbox_turn: u64,
}

/// The hub's side of one connection: its queue, and what travels beside it.
pub struct Conn {
    pub id: ConnId,
    pub user_id: Uuid,
    queue: mpsc::Sender<Arc<EventFrame>>,
    /// Frames queued so far (written by the pipeline only).
    enqueued: AtomicU64,
    /// Chats currently behind: the fast path of [`Conn::offer`] skips the lock at 0.
    behind_chats: AtomicUsize,
    control: Mutex<ControlState>,
    /// Signalled when something was put into `control` (or the direct writer
    /// left something for the session).
    pub wake: Arc<Notify>,
    /// Set once by the session: live frames go through it when it can take them.
    direct: OnceLock<Arc<dyn Direct>>,
}

impl Conn {
    /// A connection's hub side plus the receiving end of its queue.
    pub fn new(id: ConnId, user_id: Uuid, queue: usize) -> (Arc<Conn>, mpsc::Receiver<Arc<EventFrame>>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let conn = Conn {
            id,
            user_id,
            queue: tx,
            enqueued: AtomicU64::new(0),
            behind_chats: AtomicUsize::new(0),
            control: Mutex::new(ControlState { deletes_left: MAX_REMEMBERED_DELETES, ..Default::default() }),
            wake: Arc::new(Notify::new()),
            direct: OnceLock::new(),
        };
        (Arc::new(conn), rx)
    }

    /// Hands a frame over without ever waiting: to the direct writer when it
    /// takes it (which may hold it for a write with later frames), else to
    /// the queue; when the queue is full the frame's subscription falls
    /// behind. True when the writer held it: the caller owes [`Conn::flush`].
    pub fn offer(&self, frame: &Arc<EventFrame>) -> bool {
        if self.behind_chats.load(Ordering::Acquire) > 0 {
            if let Ok(mut ctl) = self.control.lock() {
                let ControlState { behind, deletes_left, overflow, .. } = &mut *ctl;
                if let Some(b) = behind.get_mut(&frame.chat_id) {
                    if !b.note(frame, deletes_left) {
                        *overflow = true;
                        drop(ctl);
                        self.wake.notify_one();
                    }
                    return false;
                }
            }
        }
        self.hand(frame, true, || self.enqueue(frame))
    }

    /// To the direct writer, counted as handed over when it takes the frame;
    /// else `queue` (which counts what it queues).
    fn hand(&self, frame: &Arc<EventFrame>, hold: bool, mut queue: impl FnMut()) -> bool {
        let Some(direct) = self.direct.get() else {
            queue();
            return false;
        };
        match direct.offer(frame, hold, &mut queue) {
            Offered::Queued => false,
            taken => {
                self.enqueued.fetch_add(1, Ordering::Release);
                taken == Offered::Held
            }
        }
    }

    /// Writes what the direct writer held.
    pub fn flush(&self) {
        if let Some(direct) = self.direct.get() {
            direct.flush();
        }
    }

    fn enqueue(&self, frame: &Arc<EventFrame>) {
        match self.queue.try_send(frame.clone()) {
            Ok(()) => {
                self.enqueued.fetch_add(1, Ordering::Release);
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.fall_behind(frame),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Queues an ephemeral frame (typing) if there is room; never falls
    /// behind for it and never remembers it.
    pub(super) fn offer_ephemeral(&self, frame: &Arc<EventFrame>) {
        self.hand(frame, false, || {
            if self.queue.try_send(frame.clone()).is_ok() {
                self.enqueued.fetch_add(1, Ordering::Release);
            }
        });
    }

    /// Live frames go through `direct` from now on when it takes them (set
    /// once; later calls change nothing).
    pub fn set_direct(&self, direct: Arc<dyn Direct>) {
        let _ = self.direct.set(direct);
    }

    /// A user's presence in a chat changed (coalesced with any change not
    /// taken yet).
    pub(super) fn presence(&self, chat_id: Uuid, user_id: Uuid, online: bool) {
        if let Ok(mut ctl) = self.control.lock() {
            ctl.presence.insert((chat_id, user_id), online);
        }
        self.wake.notify_one();
    }

    /// Presence changes or inbox frames wait to be taken.
    pub fn side_waiting(&self) -> bool {
        self.control.lock().is_ok_and(|ctl| !ctl.presence.is_empty() || !ctl.inbox.is_empty())
    }

    /// An inbox frame for `chat`: taken by the direct writer when it can
    /// and none waits here (that one would be older); else it replaces one
    /// of that chat not taken yet (so a connection that is behind gets the
    /// latest summary per chat, and at most one per chat waits). True when
    /// the writer held it: the caller owes [`Conn::flush`], once it has
    /// released its own locks.
    pub fn inbox_frame(&self, chat: Uuid, text: Utf8Bytes) -> bool {
        if let Some(direct) = self.direct.get() {
            let mut waiting = || self.control.lock().map_or(true, |ctl| !ctl.inbox.is_empty());
            match direct.offer_side(&text, &mut waiting) {
                Offered::Queued => {}
                taken => return taken == Offered::Held,
            }
        }
        if let Ok(mut ctl) = self.control.lock() {
            ctl.inbox_turn += 1;
            let turn = ctl.inbox_turn;
            ctl.inbox.insert(chat, (turn, text));
        }
        self.wake.notify_one();
        false
    }

    /// Drops inbox frames not taken yet for these chats (an answer the
    /// session writes first supersedes them), or all with None.
    pub fn inbox_forget(&self, chats: Option<&[Uuid]>) {
        if let Ok(mut ctl) = self.control.lock() {
            match chats {
                None => ctl.inbox = HashMap::default(),
                Some(chats) => {
                    for c in chats {
                        ctl.inbox.remove(c);
                    }
                }
            }
        }
    }

    /// Forgets presence changes of a chat not taken yet (a fresh snapshot
    /// supersedes them).
    pub(super) fn forget_presence(&self, chat_id: Uuid) {
        if let Ok(mut ctl) = self.control.lock() {
            if !ctl.presence.is_empty() {
                ctl.presence.retain(|(c, _), _| *c != chat_id);
            }
        }
    }

    fn fall_behind(&self, frame: &EventFrame) {
        let Ok(mut ctl) = self.control.lock() else { return };
        let after = self.enqueued.load(Ordering::Acquire);
        let ControlState { behind, deletes_left, overflow, .. } = &mut *ctl;
        let b = behind.entry(frame.chat_id).or_insert_with(|| {
            self.behind_chats.fetch_add(1, Ordering::AcqRel);
            Behind { after, ..Default::default() }
        });
        if !b.note(frame, deletes_left) {
            *overflow = true;
        }
        drop(ctl);
        self.wake.notify_one();
    }

    pub(super) fn revoke(&self, chat_id: Uuid) {
        if let Ok(mut ctl) = self.control.lock() {
            if let Some(b) = ctl.behind.remove(&chat_id) {
                self.behind_chats.fetch_sub(1, Ordering::AcqRel);
                ctl.deletes_left += b.deletes.len();
            }
            ctl.revoked.push(chat_id);
        }
        self.wake.notify_one();
    }

    pub(super) fn resync(&self) {
        if let Ok(mut ctl) = self.control.lock() {
            ctl.resync = true;
        }
        self.wake.notify_one();
    }

    /// True when behind subscriptions are waiting to be taken.
    pub fn has_behind(&self) -> bool {
        self.behind_chats.load(Ordering::Acquire) > 0
    }

    /// Takes what is pending beside the queue. Behind subscriptions are taken
    /// only once the session has taken (`dequeued`) every frame queued before
    /// they fell behind, so nothing older overtakes the catch-up; from the
    /// moment one is taken, its live frames are queued again.
    ///
    /// Presence changes and inbox frames are taken only `with_presence`: the
    /// session asks for them when its socket has room, and until then they
    /// stay here, coalesced per chat and user (presence) or per chat (inbox),
    /// so a reader that is behind costs one entry each, never a backlog.
    pub fn take(&self, dequeued: u64, with_presence: bool) -> Control {
        let Ok(mut ctl) = self.control.lock() else { return Control::default() };
        // Taken, not drained: an idle connection keeps no table behind.
        let presence = match with_presence {
            true => std::mem::take(&mut ctl.presence).into_iter().map(|((c, u), online)| (c, u, online)).collect(),
            false => Vec::new(),
        };
        let inbox = match with_presence && !ctl.inbox.is_empty() {
            true => {
                let mut frames: Vec<(u64, Utf8Bytes)> = std::mem::take(&mut ctl.inbox).into_values().collect();
                frames.sort_unstable_by_key(|(turn, _)| *turn);
                frames.into_iter().map(|(_, text)| text).collect()
            }
            false => Vec::new(),
        };
        let ready: Vec<Uuid> = ctl.behind.iter().filter(|(_, b)| b.after <= dequeued).map(|(c, _)| *c).collect();
        let mut behind = HashMap::with_capacity(ready.len());
        for chat in ready {
            if let Some(b) = ctl.behind.remove(&chat) {
                self.behind_chats.fetch_sub(1, Ordering::AcqRel);
                ctl.deletes_left += b.deletes.len();
                behind.insert(chat, b);
            }
        }
        Control {
            revoked: std::mem::take(&mut ctl.revoked),
            resync: std::mem::take(&mut ctl.resync),
            behind,
            overflow: ctl.overflow,
            presence,
            inbox,
        }
    }
}
