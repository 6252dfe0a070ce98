// Real PostgreSQL and a real relay for the end-to-end tests: `chat-relay
// demo --serve-only` brings up a throwaway, migrated Postgres (and a relay
// the tests may ignore); the tests start their own `chat-relay serve`
// processes against it, to kill and restart them.
import { spawn } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

import pg from "pg";

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.CHAT_RELAY_BIN ?? path.resolve(here, "../../../target/debug/chat-relay");

/** Starts `chat-relay demo --serve-only`; resolves with its JSON line and a stop function. */
export async function startDemo(args = []) {
  const proc = spawn(BIN, ["demo", "--serve-only", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "error" },
  });
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  const line = await new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.stdout });
    rl.once("line", (l) => resolve(l));
    proc.once("exit", (code) => reject(new Error(`chat-relay demo exited with ${code} (is ${BIN} built?)`)));
  });
  const info = JSON.parse(line);
  return {
    ...info,
    async stop() {
      proc.kill("SIGTERM");
      await exited;
    },
  };
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A `chat-relay serve` on `port` with its own slot; kill and start it again at will. */
export class RelayProcess {
  constructor(demo, { port, slot = `e2e_${randomUUID().slice(0, 8)}`, env = {} } = {}) {
    this.demo = demo;
    this.port = port;
    this.slot = slot;
    this.env = env;
    this.proc = null;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  async start() {
    if (!this.port) this.port = await freePort();
    this.proc = spawn(BIN, ["serve"], {
      stdio: ["ignore", "ignore", "inherit"],
      env: {
        ...process.env,
        DATABASE_URL: this.demo.database_url,
        CHAT_RELAY_JWT_SECRET: this.demo.jwt_secret,
        CHAT_RELAY_LISTEN: `127.0.0.1:${this.port}`,
        CHAT_RELAY_SLOT: this.slot,
        RUST_LOG: process.env.RUST_LOG ?? "error",
        ...this.env,
      },
    });
    this.exited = new Promise((resolve) => this.proc.once("exit", resolve));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (this.proc.exitCode !== null) throw new Error(`relay exited with ${this.proc.exitCode}`);
      const ready = await fetch(`http://127.0.0.1:${this.port}/readyz`).then((r) => r.ok, () => false);
      if (ready) return this;
      if (Date.now() > deadline) throw new Error("relay not ready within 30 s");
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async kill() {
    this.proc.kill("SIGKILL");
    await this.exited;
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null) {
      this.proc.kill("SIGTERM");
      await this.exited;
    }
  }
}

/** An HS256 token for `sub`. */
export function token(secret, sub, ttlSecs = 3600) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlSecs })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

export async function database(demo) {
  const c = new pg.Client({ connectionString: demo.database_url });
  await c.connect();
  return c;
}

export async function createChat(db, users) {
  const chat = randomUUID();
  await db.query("INSERT INTO chats (id) VALUES ($1)", [chat]);
  for (const u of users) await db.query("INSERT INTO chat_participants (chat_id, user_id) VALUES ($1, $2)", [chat, u]);
  return chat;
}

/**
 * A TCP proxy in front of the relay: `cut()` drops every connection and
 * refuses new ones until `restore()`; `mute()` keeps forwarding what the
 * client says but swallows what the relay answers (an answer lost on the
 * way), until `cut()`.
 */
export class Proxy {
  constructor(target) {
    this.target = target;
    this.down = false;
    this.muted = false;
    this.pairs = new Set();
    this.server = net.createServer((client) => {
      if (this.down) return client.destroy();
      const upstream = net.connect(this.target, "127.0.0.1");
      const pair = { client, upstream };
      this.pairs.add(pair);
      client.on("data", (d) => upstream.write(d));
      upstream.on("data", (d) => {
        if (!this.muted) client.write(d);
      });
      const end = () => {
        client.destroy();
        upstream.destroy();
        this.pairs.delete(pair);
      };
      client.on("close", end);
      upstream.on("close", end);
      client.on("error", end);
      upstream.on("error", end);
    });
  }

  async listen() {
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = this.server.address().port;
    return this;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  cut() {
    this.down = true;
    this.muted = false;
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  mute() {
    this.muted = true;
  }

  restore() {
    this.down = false;
  }

  close() {
    this.cut();
    this.server.close();
  }
}

/** Resolves when `pred()` holds, checked on each emission of `event`. */
export function until(client, event, pred) {
  return new Promise((resolve) => {
    if (pred()) return resolve();
    const off = client.on(event, () => {
      if (pred()) {
        off();
        resolve();
      }
    });
  });
}
