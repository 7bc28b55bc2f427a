// A crowd of raw WebSocket clients in a process of its own (the console's scale test: one
// process cannot hold 20,000 sockets under `ulimit -n` 20000). Run by console.test.mjs with
// `node crowd.mjs`; reads one JSON line on stdin, `{"urls": [...], "jwtSecret", "prefix",
// "topics": [...], "count"}`, opens `count` sockets (alternating over `urls`), each joined to
// one topic (`topics[i % topics.length]`), prints `ready <count>` once every join is answered
// ok (or `error <reason>`), and holds them until stdin closes.
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import WebSocket from "ws";

function sign(secret, channel, id) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part({ id, channel, iat: now, exp: now + 600 })}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

function join(url, secret, id, topic) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace(/^http/, "ws")}/socket/websocket?vsn=2.0.0`);
    ws.on("error", reject);
    ws.on("open", () => ws.send(JSON.stringify(["1", "1", topic, "phx_join", { token: sign(secret, topic, id) }])));
    ws.on("message", (data) => {
      const [, , , event, payload] = JSON.parse(data.toString());
      if (event !== "phx_reply") return;
      if (payload.status !== "ok") reject(new Error(`join refused: ${JSON.stringify(payload)}`));
      else resolve(ws);
    });
  });
}

const lines = createInterface({ input: process.stdin });
const sockets = [];
lines.once("line", async (line) => {
  const { urls, jwtSecret, prefix, topics, count } = JSON.parse(line);
  try {
    let batch = [];
    for (let i = 0; i < count; i++) {
      batch.push(join(urls[i % urls.length], jwtSecret, `${prefix}-${i}`, topics[i % topics.length]));
      if (batch.length === 100) {
        sockets.push(...(await Promise.all(batch)));
        batch = [];
      }
    }
    sockets.push(...(await Promise.all(batch)));
    console.log(`ready ${sockets.length}`);
  } catch (err) {
    console.log(`error ${err?.message ?? err}`);
  }
});
lines.on("close", () => {
  for (const ws of sockets) ws.terminate();
  process.exit(0);
});
