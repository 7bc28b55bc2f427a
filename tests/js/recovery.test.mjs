// The README's client code, verbatim, recovering what was published while the server restarted
// (issue 14): phoenix.js (phoenix@1.8.16, ws transport) joins "room:1" with a params closure,
// keeps the last position its `msg` handler saw, and rejoins the restarted server by itself
// with `since`; it must get every message it missed, in order, once, then the live ones.
// Run by `cargo test --test phoenix_js_recovery`, which drives the restart and sets:
//   CHANNEL_URL  http://127.0.0.1:<port> of the running server (the restarted one has the same)
//   STATE_FILE   a path this script rewrites (write, then rename) after every event with
//                {"joins", "replies", "received", "reloads", "closes"}; the Rust side reads it
//                to know when to publish and restart, and asserts on its last version
// It exits once it has received message 4, or after DEADLINE_MS. Run directly (not under
// `node --test`), so that killing it on a deadline leaves no child behind.

import { renameSync, writeFileSync } from "node:fs";
import WebSocket from "ws";
import { Socket } from "phoenix";
import { postToken } from "./token.mjs";

const CHANNEL_URL = process.env.CHANNEL_URL;
const STATE_FILE = process.env.STATE_FILE;
if (!CHANNEL_URL || !STATE_FILE) {
  throw new Error("set CHANNEL_URL (http://host:port of the server) and STATE_FILE (a path to write)");
}
const DEADLINE_MS = 60000;

const state = { joins: 0, replies: [], received: [], reloads: 0, closes: [] };
function record() {
  writeFileSync(`${STATE_FILE}.tmp`, JSON.stringify(state));
  renameSync(`${STATE_FILE}.tmp`, STATE_FILE);
}
function reload() {
  state.reloads += 1;
}

const token = (await postToken(CHANNEL_URL, "room:1", "node-recovery")).body.token;
const socket = new Socket(CHANNEL_URL.replace(/^http/, "ws"), {
  transport: WebSocket,
  timeout: 5000,
  heartbeatIntervalMs: 30000,
  reconnectAfterMs: () => 200,
  rejoinAfterMs: () => 200,
});
socket.onClose((event) => {
  state.closes.push(event?.code);
  record();
});
socket.connect();

// --- the README's code, verbatim ---
let since = null
const ch = socket.channel("room:1", () => ({ token, since }))
ch.on("msg", (payload, position) => { if (position) since = position; /* … */ })
ch.join().receive("ok", (r) => { if (r.recovered === false) reload(); since = since ?? r.position })
// --- end of the README's code ---

// Bookkeeping for the Rust side (a second handler of the same event and reply).
let done;
const finished = new Promise((resolve) => (done = resolve));
ch.joinPush.receive("ok", (r) => {
  state.joins += 1;
  state.replies.push(r);
  record();
});
ch.on("msg", (payload, position) => {
  state.received.push({ n: payload.n, position });
  record();
  if (payload.n === 4) done();
});
record();

const timer = setTimeout(() => {
  console.log(`deadline passed: ${JSON.stringify(state)}`);
  socket.disconnect();
  process.exit(1);
}, DEADLINE_MS);
await finished;
clearTimeout(timer);
console.log(`received ${JSON.stringify(state)}`);
socket.disconnect();
process.exit(0);
