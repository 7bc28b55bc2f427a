// scratch (not committed): join N topics and print every message
import { Socket } from "phoenix";
import WebSocket from "ws";
import { postToken } from "./token.mjs";
const [url, ...topics] = process.argv.slice(2);
const socket = new Socket(url.replace("http", "ws") + "/socket", { transport: WebSocket });
socket.connect();
for (const topic of topics) {
  const { body } = await postToken(url, topic, "probe");
  const ch = socket.channel(topic, { token: body.token });
  ch.onMessage = (event, payload, ref) => { if (!event.startsWith("phx_")) console.log(Date.now(), topic, event, JSON.stringify(payload)); return payload; };
  ch.join().receive("ok", () => console.log("joined", topic)).receive("error", (e) => console.log("join error", JSON.stringify(e)));
}
