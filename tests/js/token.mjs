// POST /token, shared by the Node tests: the parsed JSON body of a 200 answer (fails the test
// on any other status). Callers check the fields they rely on.
import assert from "node:assert/strict";

export async function postToken(channelUrl, channel, id) {
  const response = await fetch(`${channelUrl}/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ channel, id }),
  });
  const text = await response.text();
  assert.equal(response.status, 200, `POST /token for ${channel}: ${response.status} ${text}`);
  return { body: JSON.parse(text), text };
}
