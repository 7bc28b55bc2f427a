// Conformance of `channel` with the official phoenix.js client (phoenix@1.8.16) under Node, with
// the `ws` package as its WebSocket transport. Run by `cargo test --test phoenix_js`, which
// starts a private Redis and the server and sets:
//   CHANNEL_URL  http://127.0.0.1:<port> of the running server
//   REDIS_URL    redis://127.0.0.1:<port> of the Redis the server uses
//   CHANNEL_URL_B (optional) a second process of the same deployment: sockets then alternate
//                between the two (the Redis Cluster run of tests/phoenix_js.rs), so that two
//                clients of one test sit on different processes
// By hand: CHANNEL_URL=... REDIS_URL=... node --test conformance.test.mjs
//
// Each test is one behaviour a browser relies on; every wait has a deadline, and a refusal must
// show up as phoenix.js's `error` callback, never as its `timeout`.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import WebSocket from "ws";
import { Socket } from "phoenix";
import { RedisConnection } from "./resp.mjs";
import { postToken } from "./token.mjs";

const CHANNEL_URL = process.env.CHANNEL_URL;
const REDIS_URL = process.env.REDIS_URL;
if (!CHANNEL_URL || !REDIS_URL) {
  throw new Error("set CHANNEL_URL (http://host:port of the server) and REDIS_URL (redis://host:port)");
}
// phoenix.js appends /websocket
const SOCKET_ENDPOINTS = [CHANNEL_URL, process.env.CHANNEL_URL_B]
  .filter(Boolean)
  .map((url) => url.replace(/^http/, "ws"));
let socketsOpened = 0;

// phoenix.js gives up on a push after this long and reports `timeout`.
const PUSH_TIMEOUT_MS = 5000;
// How long a test waits for something that must arrive.
const WAIT_MS = 5000;
// How long a test waits to be sure that something does not arrive.
const QUIET_MS = 300;

const cleanups = [];
after(() => {
  for (const cleanup of cleanups.reverse()) {
    try {
      cleanup();
    } catch {
      // best effort: the test result is already decided
    }
  }
});

// A topic name unique to this run, so the suite can also be pointed at a shared server.
function uniqueTopic(prefix) {
  return `${prefix}:${randomBytes(4).toString("hex")}`;
}

async function mintToken(channel, id) {
  const { body, text } = await postToken(CHANNEL_URL, channel, id);
  assert.equal(body.channel, channel, `POST /token body: ${text}`);
  assert.equal(body.id, id, `POST /token body: ${text}`);
  assert.equal(typeof body.token, "string", `POST /token body: ${text}`);
  return body.token;
}

// A connected phoenix.js Socket on the ws transport. Resolves once the WebSocket is open.
function openSocket() {
  const SOCKET_ENDPOINT = SOCKET_ENDPOINTS[socketsOpened++ % SOCKET_ENDPOINTS.length];
  const socket = new Socket(SOCKET_ENDPOINT, {
    transport: WebSocket,
    timeout: PUSH_TIMEOUT_MS,
    heartbeatIntervalMs: 30000,
    reconnectAfterMs: () => 200,
    rejoinAfterMs: () => 60000, // a refused join must not be retried during the test
  });
  cleanups.push(() => socket.disconnect());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket to ${SOCKET_ENDPOINT} did not open within ${WAIT_MS} ms`)), WAIT_MS);
    socket.onOpen(() => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.onError((error) => {
      clearTimeout(timer);
      reject(new Error(`socket to ${SOCKET_ENDPOINT} failed: ${error?.message ?? error}`));
    });
    socket.connect();
  });
}

// Settles a phoenix.js Push: resolves with {status, response} for ok, error or timeout alike,
// so that tests assert which of the three happened.
function outcome(push) {
  return new Promise((resolve) => {
    push
      .receive("ok", (response) => resolve({ status: "ok", response }))
      .receive("error", (response) => resolve({ status: "error", response }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  });
}

async function subscribeRedis(pattern) {
  const subscriber = await RedisConnection.connect(REDIS_URL);
  cleanups.push(() => subscriber.close());
  await subscriber.psubscribe(pattern);
  return subscriber;
}

async function publishRedis(channel, payload) {
  const publisher = await RedisConnection.connect(REDIS_URL);
  try {
    return await publisher.command("PUBLISH", channel, payload);
  } finally {
    publisher.close();
  }
}

// Resolves with the payload of the next `event` on `channel`, or rejects after WAIT_MS.
function nextEvent(channel, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      channel.off(event, ref);
      reject(new Error(`no "${event}" on ${channel.topic} within ${WAIT_MS} ms`));
    }, WAIT_MS);
    const ref = channel.on(event, (payload) => {
      clearTimeout(timer);
      channel.off(event, ref);
      resolve(payload);
    });
  });
}

async function joinOk(socket, topic, token) {
  const channel = socket.channel(topic, { token });
  const joined = await outcome(channel.join());
  assert.deepEqual(joined.status, "ok", `join ${topic}: ${JSON.stringify(joined)}`);
  return channel;
}

test("token, connect, join, receive a Redis publish, push to Redis intact, leave", async () => {
  const topic = uniqueTopic("weather:wind");
  const token = await mintToken(topic, "node-client-1");
  const socket = await openSocket();
  const channel = await joinOk(socket, topic, token);

  // Downstream: a backend publishes to to:<topic>:<event>; the client gets the JSON payload.
  const downstream = { speed: 12.5, unit: "m/s", gusts: [14, 17], nested: { ok: true, none: null } };
  const received = nextEvent(channel, "speed");
  const receivers = await publishRedis(`to:${topic}:speed`, JSON.stringify(downstream));
  assert.ok(receivers >= 1, `PUBLISH to:${topic}:speed reached ${receivers} subscribers; the server is not subscribed`);
  assert.deepEqual(await received, downstream);

  // Upstream: the push reaches Redis on from:<topic>:<event> with the payload as sent, byte for
  // byte (fields named `message` and `token` included, key order kept), and is acknowledged.
  const subscriber = await subscribeRedis(`from:${topic}:*`);
  const upstream = { zeta: 1, message: "hello", token: "not-a-secret", alpha: [1, { b: 2, a: 1 }], unicode: "é✓" };
  const pushed = await outcome(channel.push("shout", upstream));
  assert.equal(pushed.status, "ok", `push reply: ${JSON.stringify(pushed)}`);
  const message = await subscriber.nextMessage(WAIT_MS);
  assert.equal(message.channel, `from:${topic}:shout`);
  assert.equal(message.payload.toString("utf8"), JSON.stringify(upstream));

  // Leave: acknowledged, and no further Redis message for the topic reaches the socket.
  const left = await outcome(channel.leave());
  assert.equal(left.status, "ok", `leave reply: ${JSON.stringify(left)}`);
  const afterLeave = [];
  socket.onMessage((msg) => {
    if (msg.topic === topic && msg.event === "speed") afterLeave.push(msg);
  });
  await publishRedis(`to:${topic}:speed`, JSON.stringify({ speed: 1 }));
  await new Promise((resolve) => setTimeout(resolve, QUIET_MS));
  assert.deepEqual(afterLeave, [], `"speed" frames for ${topic} after leave`);
  socket.disconnect();
});

test("a join with a token for another channel is refused with error, not timeout", async () => {
  const topic = uniqueTopic("room:private");
  const foreignToken = await mintToken(uniqueTopic("room:other"), "node-client-2");
  const socket = await openSocket();

  const foreign = socket.channel(topic, { token: foreignToken });
  const refused = await outcome(foreign.join());
  assert.deepEqual(refused, { status: "error", response: { reason: "unauthorized" } });
  foreign.leave();

  const garbage = socket.channel(uniqueTopic("room:garbage"), { token: "not.a.jwt" });
  const refusedGarbage = await outcome(garbage.join());
  assert.deepEqual(refusedGarbage, { status: "error", response: { reason: "unauthorized" } });
  garbage.leave();

  const missing = socket.channel(uniqueTopic("room:missing"), {});
  const refusedMissing = await outcome(missing.join());
  assert.deepEqual(refusedMissing, { status: "error", response: { reason: "unauthorized" } });
  missing.leave();
  socket.disconnect();
});

test("an ArrayBuffer push arrives in Redis byte for byte", async () => {
  const topic = uniqueTopic("blobs");
  const token = await mintToken(topic, "node-client-3");
  const socket = await openSocket();
  const channel = await joinOk(socket, topic, token);
  const subscriber = await subscribeRedis(`from:${topic}:*`);

  // Every byte value, invalid UTF-8 and a JSON-looking prefix: nothing may be reinterpreted.
  const bytes = new Uint8Array(2 + 256 + 3);
  bytes.set([0x7b, 0x22], 0); // `{"`
  for (let i = 0; i < 256; i++) bytes[2 + i] = i;
  bytes.set([0xff, 0xfe, 0x00], 258);
  const pushed = await outcome(channel.push("upload", bytes.buffer));
  assert.equal(pushed.status, "ok", `binary push reply: ${JSON.stringify(pushed)}`);

  const message = await subscriber.nextMessage(WAIT_MS);
  assert.equal(message.channel, `from:${topic}:upload`);
  assert.deepEqual(new Uint8Array(message.payload), bytes);
  socket.disconnect();
});

test("a non-JSON Redis message arrives as an ArrayBuffer", async () => {
  const topic = uniqueTopic("sensors:raw");
  const token = await mintToken(topic, "node-client-4");
  const socket = await openSocket();
  const channel = await joinOk(socket, topic, token);

  const bytes = Buffer.from([0x00, 0x01, 0xff, 0x80, ...Buffer.from("not json {")]);
  const received = nextEvent(channel, "frame");
  await publishRedis(`to:${topic}:frame`, bytes);
  const payload = await received;
  assert.ok(payload instanceof ArrayBuffer, `payload should be an ArrayBuffer, got ${Object.prototype.toString.call(payload)}: ${JSON.stringify(payload)}`);
  assert.deepEqual(new Uint8Array(payload), new Uint8Array(bytes));

  // Valid JSON that is not an object still arrives as JSON, decoded.
  const scalar = nextEvent(channel, "count");
  await publishRedis(`to:${topic}:count`, "42");
  assert.equal(await scalar, 42);
  socket.disconnect();
});

// Resolves once `check()` is true after a Presence sync, or rejects after WAIT_MS.
function presenceUntil(presence, check, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`presence never showed ${what}: ${JSON.stringify(presence.list())}`)), WAIT_MS);
    const test = () => {
      if (check()) {
        clearTimeout(timer);
        resolve();
      }
    };
    presence.onSync(test);
    test();
  });
}

test("phoenix.js Presence: two clients see each other, and a disconnect is a leave", async () => {
  const { Presence } = await import("phoenix");
  const topic = uniqueTopic("presence");
  const aliceSocket = await openSocket();
  const alice = aliceSocket.channel(topic, { token: await mintToken(topic, "alice") });
  const aliceView = new Presence(alice);
  assert.equal((await outcome(alice.join())).status, "ok");
  await presenceUntil(aliceView, () => aliceView.list().length === 1, "alice alone");

  const bobSocket = await openSocket();
  const bob = bobSocket.channel(topic, { token: await mintToken(topic, "bob") });
  const bobView = new Presence(bob);
  assert.equal((await outcome(bob.join())).status, "ok");
  const ids = (view) => view.list((id) => id).sort();
  await presenceUntil(bobView, () => ids(bobView).join() === "alice,bob", "alice and bob (syncState)");
  await presenceUntil(aliceView, () => ids(aliceView).join() === "alice,bob", "bob joining (syncDiff)");
  for (const [id, { metas }] of Object.entries(bobView.state)) {
    assert.equal(metas.length, 1, `${id} has one meta`);
    assert.equal(typeof metas[0].phx_ref, "string");
    assert.equal(typeof metas[0].online_at, "number");
  }

  bobSocket.disconnect();
  await presenceUntil(aliceView, () => ids(aliceView).join() === "alice", "bob leaving on disconnect");
});

test("admin refuses a token minted for another channel, and /token will not mint admin anonymously", async () => {
  const socket = await openSocket();
  const topic = uniqueTopic("room");
  const channel = socket.channel("admin", { token: await mintToken(topic, "eve") });
  const joined = await outcome(channel.join());
  assert.deepEqual(joined, { status: "error", response: { reason: "unauthorized" } });
  const response = await fetch(`${CHANNEL_URL}/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ channel: "admin", id: "eve" }),
  });
  assert.equal(response.status, 403, await response.text());
});

test("system sends datetime ticks with an increasing counter to its joiners", async () => {
  const socket = await openSocket();
  const channel = await joinOk(socket, "system", await mintToken("system", "clock-watcher"));
  // The server's default interval is 1 s; nextEvent waits up to WAIT_MS for each tick.
  const first = await nextEvent(channel, "datetime");
  const second = await nextEvent(channel, "datetime");
  for (const tick of [first, second]) {
    assert.equal(tick.status, "ok", JSON.stringify(tick));
    assert.match(tick.response.datetime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, JSON.stringify(tick));
    const skew = Math.abs(Date.parse(tick.response.datetime) - Date.now());
    assert.ok(skew < 5000, `datetime ${tick.response.datetime} is ${skew} ms off`);
    assert.ok(Number.isInteger(tick.response.counter), JSON.stringify(tick));
  }
  assert.equal(second.response.counter, first.response.counter + 1);
});
