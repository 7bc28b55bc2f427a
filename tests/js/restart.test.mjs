// A server restart seen by the official phoenix.js client (phoenix@1.8.16, ws transport): the
// socket is closed with 1012, phoenix.js reconnects and rejoins its channel by itself, and
// messages flow again. Run by `cargo test --test phoenix_js_restart`, which drives the restart
// and sets:
//   CHANNEL_URL   http://127.0.0.1:<port> of the running server (the restarted one has the same)
//   JOINED_FILE   a path this test writes the topic to once it has joined; the Rust side then
//                 stops the server with SIGTERM, starts a new one on the same port, same secret
//                 and Redis, and publishes {"generation":"restarted"} to to:<topic>:after
//                 every 100 ms until this process exits or writes RECEIVED_FILE
//   RECEIVED_FILE a path this test writes once that message has arrived (so the Rust side can
//                 time the rejoin without counting Node's own exit)
// Run directly (`node restart.test.mjs`), not under `node --test`, so that killing this process
// on a deadline leaves no child behind.
//
// The test never calls join() after the first time: the rejoin is phoenix.js's own.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { renameSync, writeFileSync } from "node:fs";
import WebSocket from "ws";
import { Socket } from "phoenix";
import { postToken } from "./token.mjs";

const CHANNEL_URL = process.env.CHANNEL_URL;
const JOINED_FILE = process.env.JOINED_FILE;
const RECEIVED_FILE = process.env.RECEIVED_FILE;
if (!CHANNEL_URL || !JOINED_FILE || !RECEIVED_FILE) {
  throw new Error("set CHANNEL_URL (http://host:port of the server), JOINED_FILE and RECEIVED_FILE (paths to write)");
}
const SOCKET_ENDPOINT = CHANNEL_URL.replace(/^http/, "ws"); // phoenix.js appends /websocket

// How long the first join may take.
const JOIN_WAIT_MS = 5000;
// From the first join to the message through the restarted server: the Rust side needs up to
// 5 s to stop the old server and a few to start the new one; it enforces the tighter bound
// (10 s from the new server being up) and kills this process when it passes.
const RESTART_WAIT_MS = 30000;

async function mintToken(channel, id) {
  return (await postToken(CHANNEL_URL, channel, id)).body.token;
}

// Writes `text` to `path` in one step (write, then rename), for the Rust side to poll.
function signal(path, text) {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

function log(line) {
  console.log(`[restart.test ${new Date().toISOString()}] ${line}`);
}

test("phoenix.js reconnects and rejoins a restarted server without user code", async () => {
  const topic = `restart:${randomBytes(4).toString("hex")}`;
  const token = await mintToken(topic, "node-restart-client");
  const socket = new Socket(SOCKET_ENDPOINT, {
    transport: WebSocket,
    timeout: 5000,
    heartbeatIntervalMs: 30000,
    reconnectAfterMs: () => 200,
    rejoinAfterMs: () => 200,
  });
  const closeCodes = [];
  socket.onClose((event) => {
    closeCodes.push(event?.code);
    log(`socket closed with ${event?.code}`);
  });
  socket.onOpen(() => log("socket open"));
  socket.connect();

  const channel = socket.channel(topic, { token });
  let joins = 0;
  const errors = [];
  let firstJoin;
  const joinedOnce = new Promise((resolve, reject) => {
    firstJoin = { resolve, reject };
  });
  // These callbacks stay on the join push: phoenix.js runs them again on every rejoin.
  channel
    .join()
    .receive("ok", () => {
      joins += 1;
      log(`joined ${topic} (join ${joins})`);
      if (joins === 1) firstJoin.resolve();
    })
    .receive("error", (response) => {
      errors.push(response);
      log(`join refused: ${JSON.stringify(response)}`);
      if (joins === 0) firstJoin.reject(new Error(`join refused: ${JSON.stringify(response)}`));
    });
  channel.onError(() => log("channel errored (the socket went away)"));

  try {
    await Promise.race([
      joinedOnce,
      new Promise((_, reject) =>
        setTimeout(() => reject(new Error(`no join ok within ${JOIN_WAIT_MS} ms`)), JOIN_WAIT_MS),
      ),
    ]);

    let received = null;
    const after = new Promise((resolve) => {
      channel.on("after", (payload) => {
        if (payload?.generation === "restarted" && received === null) {
          received = payload;
          resolve(payload);
        }
      });
    });
    // Tell the Rust side: joined, restart the server now.
    signal(JOINED_FILE, topic);
    log("JOINED");

    let timer;
    await Promise.race([
      after,
      new Promise((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new Error(
                `no "after" through the restarted server within ${RESTART_WAIT_MS} ms ` +
                  `(joins ${joins}, channel ${channel.state}, socket closes ${JSON.stringify(closeCodes)}, ` +
                  `join errors ${JSON.stringify(errors)})`,
              ),
            ),
          RESTART_WAIT_MS,
        );
      }),
    ]);
    clearTimeout(timer);
    signal(RECEIVED_FILE, JSON.stringify(received));
    log("REJOINED: received the message published after the restart");

    assert.deepEqual(closeCodes.slice(0, 1), [1012], `the restart closes with 1012: ${JSON.stringify(closeCodes)}`);
    assert.equal(joins, 2, `one join by the test and one rejoin by phoenix.js (errors ${JSON.stringify(errors)})`);
    assert.equal(channel.state, "joined");
  } finally {
    socket.disconnect();
  }
});
