// The demo page: a small chat app on @chat-relay/react. alice, bob and carol
// in four chats; alice on two devices (a phone and a laptop). Each pane is
// one ChatRelayClient (one socket, one signed-in user) with its conversation
// list (useInbox: live order, unread badges, the total badge) and a
// conversation (useChat: history, live messages and the outbox in one list,
// ticks, typing, presence, reads while shown). A read on alice's laptop
// clears the badge on her phone: the relay's inbox follows her watermarks.
//
// Bundled with React into demo/app.js by `npm run build` (scripts/bundle-demo.mjs).
// ?panes=alice-laptop,bob shows only those panes; ?timeout=ms sets
// requestTimeoutMs (tests).
import { memo, useLayoutEffect, useRef, useState } from "react";
import { createRoot } from "react-dom/client";
import { ChatRelayClient, IndexedDbStorage } from "@chat-relay/client";
import { ChatRelayProvider, useChat, useChatRelay, useConnection, useInbox } from "@chat-relay/react";

const config = await (await fetch("/demo/config")).json();
const params = new URLSearchParams(location.search);
const byName = Object.fromEntries(config.users.map((u) => [u.name, u]));
const names = Object.fromEntries(config.users.map((u) => [u.id, u.name]));
const chatById = Object.fromEntries(config.chats.map((c) => [c.id, c]));
const chatByKey = Object.fromEntries(config.chats.map((c) => [c.key, c]));
// Storage names are per demo run (its chats are new each time) and per pane (a device).
const run = config.chats[0]?.id ?? "demo";
const TICKS = { pending: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };

const PANES = [
  { id: "alice-phone", user: "alice", device: "phone", open: null },
  { id: "alice-laptop", user: "alice", device: "laptop", open: "alice-bob" },
  { id: "bob", user: "bob", device: null, open: "alice-bob" },
  { id: "carol", user: "carol", device: null, open: "group" },
];
const only = params.get("panes")?.split(",");
const panes = PANES.filter((p) => !only || only.includes(p.id));

/** One client per pane: what one device of one user holds. */
function connect(pane) {
  const user = byName[pane.user];
  const client = new ChatRelayClient({
    url: config.ws_url,
    getToken: async () => (await (await fetch(`/demo/token?user=${user.id}`)).json()).token,
    storage: new IndexedDbStorage(`chat-relay-demo-${run}-${pane.id}`),
    requestTimeoutMs: Number(params.get("timeout")) || undefined,
  });
  // The stores are made here so they get a smaller page than the default.
  for (const c of config.chats) client.chat(c.id, { pageSize: 20 });
  return client;
}

const clients = Object.fromEntries(panes.map((p) => [p.id, connect(p)]));
window.demo = { config, clients };

/** A chat's name for `me`: a group's title, or the other people in it. */
function title(chat, me) {
  if (!chat) return "unknown chat";
  return chat.title ?? chat.members.filter((m) => m !== me).join(", ");
}

function clock(rfc3339) {
  const d = new Date(rfc3339);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function Badge({ n, className = "" }) {
  return n > 0 ? <span className={`badge ${className}`}>{n > 99 ? "99+" : n}</span> : null;
}

function App() {
  return panes.map((pane) => (
    <ChatRelayProvider key={pane.id} client={clients[pane.id]}>
      <Pane pane={pane} />
    </ChatRelayProvider>
  ));
}

function Pane({ pane }) {
  const [open, setOpen] = useState(() => chatByKey[pane.open]?.id ?? null);
  return (
    <section className={`pane ${pane.device ?? "wide"}`} data-pane={pane.id} data-user={pane.user}>
      <Header pane={pane} />
      <div className="body" data-showing={open ? "chat" : "list"}>
        <Inbox me={pane.user} open={open} onOpen={setOpen} />
        {open ? (
          <Conversation key={open} me={pane.user} chatId={open} onBack={() => setOpen(null)} />
        ) : (
          <div className="empty">Pick a conversation</div>
        )}
      </div>
    </section>
  );
}

function Header({ pane }) {
  const client = useChatRelay();
  const { state } = useConnection();
  const { unreadChats } = useInbox();
  const [online, setOnline] = useState(true);
  return (
    <header data-unread-chats={unreadChats}>
      <span className="who">{pane.user}</span>
      {pane.device && <span className="device">{pane.device}</span>}
      <Badge n={unreadChats} className="total" />
      <span className="state" data-state={state}>
        {state}
      </span>
      <label className="switch">
        <input
          type="checkbox"
          className="online"
          checked={online}
          onChange={(e) => {
            setOnline(e.target.checked);
            client.setOnline(e.target.checked);
          }}
        />{" "}
        online
      </label>
    </header>
  );
}

/** The conversation list: most recent first, as the relay's inbox orders it. */
function Inbox({ me, open, onOpen }) {
  const { chats, loading, error, hasMore, loadMore } = useInbox();
  return (
    <nav
      className="inbox"
      onScroll={(e) => {
        const el = e.currentTarget;
        if (hasMore && el.scrollHeight - el.scrollTop - el.clientHeight < 40) loadMore();
      }}
    >
      {chats.map((s) => {
        const chat = chatById[s.chat_id];
        const last = s.last_message;
        const who = !last ? "" : last.sender_id === byName[me].id ? "you: " : chat?.members.length > 2 ? `${names[last.sender_id]}: ` : "";
        return (
          <button
            key={s.chat_id}
            className={`row${s.chat_id === open ? " open" : ""}`}
            data-chat={chat?.key ?? s.chat_id}
            data-unread={s.unread}
            onClick={() => onOpen(s.chat_id)}
          >
            <span className="title">{title(chat, me)}</span>
            <span className="time">{clock(s.last_activity)}</span>
            <span className="preview">{last ? who + last.content : "no messages yet"}</span>
            <Badge n={s.unread} />
          </button>
        );
      })}
      {error && !loading && <div className="note">could not load the conversations ({error.code})</div>}
    </nav>
  );
}

function Conversation({ me, chatId, onBack }) {
  const chat = useChat(chatId);
  const { state } = useConnection();
  const { unreadChats } = useInbox();
  const info = chatById[chatId];
  const peers = (info?.members ?? []).filter((m) => m !== me).map((n) => byName[n]);
  // Offline, this side cannot know: nobody shows as online.
  const online = state === "open" ? peers.filter((p) => chat.online.includes(p.id)) : [];
  const settled = useRef(false); // the first page came (or failed)
  if (chat.live && !chat.loading) settled.current = true;
  const list = useRef(null);
  const shown = useRef(null);

  // Keep the view where the reader expects it: at the bottom for new
  // messages (when it was there, or they are one's own), in place when
  // older ones go in above.
  useLayoutEffect(() => {
    const el = list.current;
    const prev = shown.current;
    const [first, last] = [chat.items[0], chat.items.at(-1)];
    if (prev && prev.first && first?.key !== prev.first && last?.key === prev.last) {
      el.scrollTop += el.scrollHeight - prev.height;
    } else if (!prev || (last?.key !== prev.last && (prev.atBottom || last?.mine))) {
      el.scrollTop = el.scrollHeight;
    }
    shown.current = { first: first?.key, last: last?.key, height: el.scrollHeight, atBottom: atBottom(el) };
  }, [chat.items]);

  const more = chat.loading
    ? "loading…"
    : chat.error
      ? "could not load older messages: scroll up to try again"
      : chat.hasMore
        ? "scroll up for older messages"
        : "beginning of the chat";
  const typing = chat.typing.map((id) => names[id] ?? "someone");
  return (
    <div className="conversation" data-chat={info?.key} data-live={String(chat.live && settled.current)} data-peer-online={String(online.length > 0)}>
      <div className="bar">
        <button className="back" onClick={onBack} title="conversations">
          ‹ <Badge n={unreadChats} />
        </button>
        <span className="title">{title(info, me)}</span>
        <span className="peers">
          {peers.map((p) => (
            <span key={p.id} className={`dot${online.includes(p) ? " on" : ""}`} title={p.name} />
          ))}
          {peers.length > 1 ? `${online.length} of ${peers.length} online` : online.length ? "online" : "offline"}
        </span>
      </div>
      <div
        className="list"
        ref={list}
        onScroll={(e) => {
          const el = e.currentTarget;
          if (shown.current) shown.current.atBottom = atBottom(el);
          if (el.scrollTop < 30) chat.loadOlder();
        }}
      >
        <div className="more" data-error={chat.error && !chat.loading ? "" : undefined}>
          {more}
        </div>
        {chat.items.map((item) => (
          <Line key={item.key} item={item} group={peers.length > 1} retry={chat.retry} />
        ))}
      </div>
      <div className="typing">{typing.length ? `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing…` : ""}</div>
      <Composer send={chat.send} typing={chat.sendTyping} />
    </div>
  );
}

function atBottom(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 40;
}

/** One message; items keep their identity until they change, so memo skips the rest. */
const Line = memo(function Line({ item, group, retry }) {
  const failed = item.status === "failed";
  return (
    <div
      className={`msg${item.mine ? " mine" : ""}${item.status === "pending" ? " pending" : ""}`}
      data-seq={item.seq ?? ""}
      data-status={item.status}
      title={failed ? `failed (${item.error}): click to send again` : undefined}
      onClick={failed ? () => retry(item.key) : undefined}
    >
      {group && !item.mine && <span className="sender">{names[item.sender_id] ?? "someone"}</span>}
      <span className="text">{item.content}</span>
      <span className="meta">
        {item.seq ? `#${item.seq} ` : ""}
        <span className={`tick ${item.status}`}>{item.mine ? TICKS[item.status] ?? "" : ""}</span>
      </span>
    </div>
  );
});

function Composer({ send, typing }) {
  const [text, setText] = useState("");
  return (
    <form
      onSubmit={(e) => {
        e.preventDefault();
        const t = text.trim();
        if (!t) return;
        setText("");
        // A failure shows on the message itself (click it to send again).
        send(t).catch(() => {});
      }}
    >
      <input
        className="text"
        placeholder="Message"
        autoComplete="off"
        value={text}
        onChange={(e) => {
          setText(e.target.value);
          typing();
        }}
      />
      <button>Send</button>
    </form>
  );
}

const root = document.getElementById("panes");
root.dataset.layout = panes.length === PANES.length ? "full" : "row";
createRoot(root).render(<App />);
