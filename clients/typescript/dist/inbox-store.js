import { BaseStore } from "./store.js";
const time = (s) => Date.parse(s.last_activity) || 0;
// Chat ids are uuids: lowercase hex, so localeCompare is plain byte order here.
const order = (a, b) => time(b) - time(a) || a.chat_id.localeCompare(b.chat_id);
export class InboxStore extends BaseStore {
    client;
    pageSize;
    #next = null;
    #offs = [];
    /** Answers to an older fetch are dropped (a reconnect started a new one). */
    #gen = 0;
    constructor(client, pageSize = 50) {
        super({ chats: [], unreadChats: 0, hasMore: false, loading: false, error: null });
        this.client = client;
        this.pageSize = pageSize;
    }
    /** Fetches the next older page. */
    async loadMore() {
        if (this.#next === null || this.snap.loading)
            return;
        await this.#fetch(this.#next);
    }
    start() {
        const c = this.client;
        this.#offs = [
            c.on("chat", (s) => this.#put([s], s.unread_chats)),
            c.on("chatRemoved", ({ chatId }) => this.set({ chats: this.snap.chats.filter((s) => s.chat_id !== chatId) })),
            c.on("state", (s) => s === "open" && void this.#fetch(null)),
        ];
        if (c.connectionState === "open")
            void this.#fetch(null);
        else
            c.connect();
    }
    stop() {
        for (const off of this.#offs.splice(0))
            off();
        this.#gen += 1;
        this.client.inboxOff();
        this.set({ loading: false });
    }
    async #fetch(before) {
        const gen = ++this.#gen;
        this.set({ loading: true });
        let page;
        try {
            page = await this.client.inboxPage(before === null ? {} : { before }, this.pageSize);
        }
        catch (e) {
            if (gen === this.#gen)
                this.set({ loading: false, error: e });
            return;
        }
        if (gen !== this.#gen)
            return;
        this.#next = page.next;
        // The first page replaces the list: it is the truth now.
        if (before === null)
            this.snap = Object.freeze({ ...this.snap, chats: [] });
        this.#put(page.chats, page.unreadChats, { hasMore: page.next !== null, loading: false, error: null });
    }
    #put(summaries, unread, extra = {}) {
        const byId = new Map(this.snap.chats.map((s) => [s.chat_id, s]));
        for (const s of summaries)
            byId.set(s.chat_id, Object.freeze(s));
        this.set({
            chats: Object.freeze([...byId.values()].sort(order)),
            unreadChats: typeof unread === "number" ? unread : this.snap.unreadChats,
            ...extra,
        });
    }
}
