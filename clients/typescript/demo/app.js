// The demo page: one ChatRelayClient per pane, each pane rendering its
// chat store (client.chat(chatId)): history, live messages and the outbox
// in one list, ticks, typing, presence, and reads while the page is visible.
// ?as=alice shows one pane; ?timeout=ms sets requestTimeoutMs (tests).
import { ChatRelayClient, IndexedDbStorage } from "/client/index.js";

const config = await (await fetch("/demo/config")).json();
const params = new URLSearchParams(location.search);
const only = params.get("as");
const users = config.users.filter((u) => !only || u.name === only);
const names = Object.fromEntries(config.users.map((u) => [u.id, u.name]));
const chatId = config.chat_id;
const TICKS = { pending: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };

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
    requestTimeoutMs: Number(params.get("timeout")) || undefined,
  });
  window.clients = Object.assign(window.clients || {}, { [user.name]: client });
  const chat = client.chat(chatId, { pageSize: 20 });

  const rows = new Map(); // item key -> element
  let settled = false; // the first page came (or failed)
  let shown = null;

  function line(item) {
    const div = document.createElement("div");
    div.className = "msg";
    div.append(document.createTextNode(""));
    const meta = document.createElement("span");
    meta.className = "meta";
    const tick = document.createElement("span");
    meta.append(document.createTextNode(""), tick);
    div.append(meta);
    if (item.mine) div.addEventListener("click", () => div.dataset.status === "failed" && chat.retry(item.key));
    return div;
  }

  function update(div, item) {
    div.firstChild.textContent = item.content;
    div.classList.toggle("mine", item.mine);
    div.classList.toggle("pending", item.status === "pending");
    div.dataset.seq = item.seq ?? "";
    div.dataset.status = item.status;
    const [seq, tick] = div.querySelector(".meta").childNodes;
    seq.textContent = item.seq ? `#${item.seq} ` : "";
    tick.className = `tick ${item.status}`;
    tick.textContent = item.mine ? TICKS[item.status] ?? "" : "";
    div.title = item.status === "failed" ? `failed (${item.error}): click to send again` : "";
  }

  function render(s) {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const height = list.scrollHeight;
    const firstBefore = shown?.items[0]?.key;
    const lastBefore = shown?.items.at(-1)?.key;
    const keys = new Set();
    let prev = more;
    for (const item of s.items) {
      keys.add(item.key);
      let div = rows.get(item.key);
      if (!div) rows.set(item.key, (div = line(item)));
      if (div.item !== item) update(div, (div.item = item));
      if (prev.nextSibling !== div) prev.after(div);
      prev = div;
    }
    for (const [key, div] of rows) if (!keys.has(key)) (div.remove(), rows.delete(key));
    if (s.live && !s.loading) settled = true;
    el.dataset.live = String(s.live && settled);
    more.toggleAttribute("data-error", !!s.error && !s.loading);
    more.textContent = s.loading
      ? "loading…"
      : s.error
        ? "could not load older messages: scroll up to try again"
        : s.hasMore
          ? "scroll up for older messages"
          : "beginning of the chat";
    $(".typing").textContent = s.typing.length ? `${s.typing.map((id) => names[id] ?? "someone").join(", ")} is typing…` : "";
    const last = s.items.at(-1);
    if (shown === null || s.items[0]?.key !== firstBefore && rows.has(firstBefore ?? "") && last?.key === lastBefore) {
      // Older messages went in above: keep what was on screen in place.
      if (shown !== null) list.scrollTop += list.scrollHeight - height;
      else list.scrollTop = list.scrollHeight;
    } else if (last?.key !== lastBefore && (atBottom || last?.mine)) {
      list.scrollTop = list.scrollHeight;
    }
    shown = s;
    showPresence();
  }

  function showPresence() {
    // Offline, this side cannot know: grey.
    const on = peer && client.connectionState === "open" && chat.getSnapshot().online.includes(peer.id);
    $(".dot").classList.toggle("on", !!on);
    el.dataset.peerOnline = on ? "true" : "false";
  }

  chat.subscribe(() => render(chat.getSnapshot()));
  render(chat.getSnapshot());
  client.on("state", (s) => {
    $(".state").textContent = s;
    $(".state").dataset.state = s;
    showPresence();
  });

  const visible = () => chat.setVisible(document.visibilityState === "visible");
  document.addEventListener("visibilitychange", visible);
  visible();
  list.addEventListener("scroll", () => {
    if (list.scrollTop < 30) chat.loadOlder();
  });
  $(".online").addEventListener("change", (e) => client.setOnline(e.target.checked));
  const input = $(".text");
  input.addEventListener("input", () => chat.typing());
  $("form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    chat.send(text);
  });
}
