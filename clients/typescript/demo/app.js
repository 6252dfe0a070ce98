// The demo page: one ChatRelayClient per pane, nothing else.
import { ChatRelayClient, IndexedDbStorage } from "/client/index.js";

const config = await (await fetch("/demo/config")).json();
const only = new URLSearchParams(location.search).get("as");
const users = config.users.filter((u) => !only || u.name === only);
const names = Object.fromEntries(config.users.map((u) => [u.id, u.name]));
const chatId = config.chat_id;
const TICKS = { pending: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };
const RANK = { pending: 0, sent: 1, delivered: 2, read: 3, failed: 0 };

for (const user of users) pane(user);

function pane(user) {
  const el = document.getElementById("pane").content.firstElementChild.cloneNode(true);
  el.dataset.user = user.name;
  document.getElementById("panes").append(el);
  const $ = (sel) => el.querySelector(sel);
  const list = $(".list");
  const more = $(".more");
  const peer = config.users.find((u) => u.id !== user.id);
  $(".who").textContent = user.name;
  $(".peer-name").textContent = peer ? peer.name : "";

  const client = new ChatRelayClient({
    url: config.ws_url,
    getToken: async () => (await (await fetch(`/demo/token?user=${user.id}`)).json()).token,
    storage: new IndexedDbStorage(`chat-relay-demo-${chatId}-${user.id}`),
  });
  window.clients = Object.assign(window.clients || {}, { [user.name]: client });

  const rows = new Map(); // key (id or cgid) -> element
  let oldest = null;
  let hasMore = true;
  let loading = false;

  function render(m, { key, status, prepend = false }) {
    let div = rows.get(key);
    if (!div) {
      div = document.createElement("div");
      div.className = "msg";
      rows.set(key, div);
      if (prepend) more.after(div);
      else list.append(div);
    }
    const mine = m.sender_id === user.id;
    div.classList.toggle("mine", mine);
    div.classList.toggle("pending", status === "pending");
    div.dataset.seq = m.seq ?? "";
    div.dataset.status = status ?? "";
    div.textContent = m.content;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = m.seq ? `#${m.seq} ` : "";
    if (mine) {
      const tick = document.createElement("span");
      tick.className = `tick ${status}`;
      tick.textContent = TICKS[status] ?? "";
      meta.append(tick);
    }
    div.append(meta);
    return div;
  }

  function setStatus(key, status) {
    const div = rows.get(key);
    if (!div || (RANK[status] ?? 0) < (RANK[div.dataset.status] ?? 0)) return;
    const tick = div.querySelector(".tick");
    div.dataset.status = status;
    div.classList.toggle("pending", status === "pending");
    if (tick) {
      tick.className = `tick ${status}`;
      tick.textContent = TICKS[status];
    }
  }

  const atBottom = () => list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const toBottom = () => (list.scrollTop = list.scrollHeight);

  client.on("message", (m, { replaces }) => {
    const stick = atBottom();
    if (replaces && rows.has(replaces)) {
      const div = rows.get(replaces);
      rows.delete(replaces);
      rows.set(m.id, div);
    }
    render(m, { key: m.id, status: m.status ?? "sent" });
    if (m.sender_id !== user.id) {
      hideTyping();
      if (document.visibilityState === "visible") client.markRead(chatId, m.seq);
    }
    if (stick || m.sender_id === user.id) toBottom();
  });
  client.on("update", (m) => {
    if (rows.has(m.id) && m.status) setStatus(m.id, m.status);
  });
  client.on("status", (s) => {
    if (s.status === "failed") setStatus(s.clientGeneratedId, "failed");
  });
  client.on("delete", ({ id }) => rows.get(id)?.remove());
  client.on("state", (s) => {
    $(".state").textContent = s;
    $(".state").dataset.state = s;
    showPresence();
  });
  client.on("subscribed", () => {
    el.dataset.live = "true";
    showPresence();
  });
  client.on("presence", showPresence);
  let typingTimer = null;
  client.on("typing", ({ userId }) => {
    $(".typing").textContent = `${names[userId] ?? "someone"} is typing…`;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(hideTyping, 3000);
  });
  function hideTyping() {
    $(".typing").textContent = "";
  }
  function showPresence() {
    // Offline, this side cannot know: grey.
    const on = peer && client.connectionState === "open" && client.online(chatId).includes(peer.id);
    $(".dot").classList.toggle("on", !!on);
    el.dataset.peerOnline = on ? "true" : "false";
  }

  async function loadOlder() {
    if (loading || !hasMore) return;
    loading = true;
    more.textContent = "loading…";
    const before = list.scrollHeight;
    const page = await client.history(chatId, { beforeSeq: oldest ?? undefined, limit: 20 });
    for (const m of [...page.messages].reverse()) {
      if (!rows.has(m.id)) render(m, { key: m.id, status: m.status ?? "sent", prepend: true });
    }
    if (page.messages.length) oldest = page.messages[0].seq;
    hasMore = page.hasMore;
    more.textContent = hasMore ? "scroll up for older messages" : "beginning of the chat";
    list.scrollTop += list.scrollHeight - before;
    loading = false;
    return page;
  }
  list.addEventListener("scroll", () => {
    if (list.scrollTop < 30) loadOlder();
  });

  $(".online").addEventListener("change", (e) => client.setOnline(e.target.checked));
  const input = $(".text");
  input.addEventListener("input", () => client.typing(chatId));
  $("form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    const out = client.send(chatId, text);
    render(out, { key: out.client_generated_id, status: "pending" });
    toBottom();
  });

  (async () => {
    // The newest page first, then live from its last seq.
    const page = await loadOlder();
    toBottom();
    const last = page.messages.length ? page.messages[page.messages.length - 1].seq : 0;
    for (const p of client.pendingMessages(chatId)) render(p, { key: p.client_generated_id, status: "pending" });
    await client.subscribe(chatId, { afterSeq: last });
    toBottom();
  })();
}
