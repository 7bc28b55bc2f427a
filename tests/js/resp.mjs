// A minimal, binary-safe Redis (RESP2) client for the conformance suite: commands and
// PSUBSCRIBE, nothing else. Payloads stay Buffers end to end so that byte-for-byte checks mean
// what they say. It exists so the suite needs no Redis package and no redis-cli parsing.

import net from "node:net";

// Parses one RESP2 value from buf at offset; returns [value, nextOffset] or null if incomplete.
function parse(buf, offset) {
  if (offset >= buf.length) return null;
  const lineEnd = buf.indexOf("\r\n", offset);
  if (lineEnd < 0) return null;
  const type = String.fromCharCode(buf[offset]);
  const line = buf.toString("utf8", offset + 1, lineEnd);
  const next = lineEnd + 2;
  switch (type) {
    case "+":
      return [line, next];
    case "-":
      return [new Error(line), next];
    case ":":
      return [Number(line), next];
    case "$": {
      const len = Number(line);
      if (len < 0) return [null, next];
      if (buf.length < next + len + 2) return null;
      return [buf.subarray(next, next + len), next + len + 2];
    }
    case "*": {
      const count = Number(line);
      if (count < 0) return [null, next];
      const items = [];
      let at = next;
      for (let i = 0; i < count; i++) {
        const parsed = parse(buf, at);
        if (parsed === null) return null;
        items.push(parsed[0]);
        at = parsed[1];
      }
      return [items, at];
    }
    default:
      throw new Error(`unexpected RESP type byte ${buf[offset]}`);
  }
}

function encode(args) {
  const parts = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = Buffer.isBuffer(arg) ? arg : Buffer.from(String(arg));
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from("\r\n"));
  }
  return Buffer.concat(parts);
}

export class RedisConnection {
  static connect(url) {
    const { hostname, port } = new URL(url);
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ host: hostname || "127.0.0.1", port: Number(port || 6379) });
      socket.once("connect", () => resolve(new RedisConnection(socket)));
      socket.once("error", reject);
    });
  }

  constructor(socket) {
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    this.pending = []; // resolvers of command replies, in order
    this.messages = []; // pmessages not yet taken: {channel, payload}
    this.waiters = []; // takers waiting for a pmessage
    this.closed = false;
    socket.on("data", (chunk) => this.onData(chunk));
    socket.on("error", () => {});
    socket.on("close", () => {
      this.closed = true;
      for (const { reject } of this.pending) reject(new Error("Redis connection closed"));
      this.pending = [];
    });
  }

  onData(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const parsed = parse(this.buffer, 0);
      if (parsed === null) break;
      this.buffer = this.buffer.subarray(parsed[1]);
      this.dispatch(parsed[0]);
    }
  }

  dispatch(value) {
    if (Array.isArray(value) && value.length === 4 && String(value[0]) === "pmessage") {
      const message = { channel: value[2].toString("utf8"), payload: Buffer.from(value[3]) };
      const waiter = this.waiters.shift();
      if (waiter) waiter(message);
      else this.messages.push(message);
      return;
    }
    const next = this.pending.shift();
    if (!next) return;
    if (value instanceof Error) next.reject(value);
    else next.resolve(value);
  }

  // Sends one command; resolves with its reply (bulk strings as Buffers).
  command(...args) {
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(encode(args));
    });
  }

  // PSUBSCRIBE; resolves once Redis confirmed the subscription.
  psubscribe(pattern) {
    return this.command("PSUBSCRIBE", pattern);
  }

  // The next pmessage as {channel, payload: Buffer}; rejects after timeoutMs.
  nextMessage(timeoutMs) {
    const ready = this.messages.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== taker);
        reject(new Error(`no Redis message within ${timeoutMs} ms`));
      }, timeoutMs);
      const taker = (message) => {
        clearTimeout(timer);
        resolve(message);
      };
      this.waiters.push(taker);
    });
  }

  close() {
    this.socket.destroy();
  }
}
