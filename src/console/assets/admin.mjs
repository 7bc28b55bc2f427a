// The console's only connection to the server: the `admin` channel over the WebSocket, with the
// official phoenix.js client. Everything the console shows or does is a message of this
// channel (docs/operations.md, "The `admin` channel"); the page has no other power.

import { Socket } from './vendor/phoenix.mjs';

/** How often the in-memory token is renewed (it lives 5 minutes). */
const RENEW_EVERY_MS = 120_000;

/** Exchanges the operator's key for a short-lived admin token (`POST /console/login`).
 *  Resolves `{token, id, expires_in}`; rejects with the server's message. */
export async function login(key) {
  let response;
  try {
    response = await fetch('/console/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ key }),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (err) {
    throw new Error(`cannot reach the server: ${err.message}`);
  }
  let body = {};
  try {
    body = await response.json();
  } catch {
    // A non-JSON answer keeps the status as the message.
  }
  if (!response.ok) throw new Error(body.error || `login failed (HTTP ${response.status})`);
  return body;
}

/** One admin session: the socket, the joined `admin` channel, requests with replies. */
export class AdminSession {
  constructor(token) {
    this.token = token;
    this.listeners = new Map();
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    this.socket = new Socket(`${scheme}://${location.host}/socket`, { heartbeatIntervalMs: 15000 });
    this.socket.onOpen(() => this.emit('connection', 'connected'));
    this.socket.onError(() => this.emit('connection', 'reconnecting'));
    this.socket.onClose(() => this.emit('connection', 'disconnected'));
    // A closure, so that a rejoin after a reconnect presents the latest renewed token.
    this.channel = this.socket.channel('admin', () => ({ token: this.token }));
    for (const event of ['state', 'stats', 'channel.join', 'channel.leave', 'redis', 'message']) {
      this.channel.on(event, (payload) => this.emit(event, payload));
    }
  }

  /** Connects and joins; resolves when the join is accepted. A later refusal (an expired
   *  token on rejoin) is reported as the `refused` event. */
  open() {
    this.socket.connect();
    return new Promise((resolve, reject) => {
      let settled = false;
      this.channel
        .join()
        .receive('ok', () => {
          settled = true;
          resolve();
        })
        .receive('error', (response) => {
          const reason = (response && response.reason) || 'refused';
          if (!settled) {
            settled = true;
            this.close();
            reject(new Error(`the admin channel refused the token: ${reason}`));
          } else {
            this.emit('refused', reason);
          }
        })
        .receive('timeout', () => {
          if (!settled) {
            settled = true;
            this.close();
            reject(new Error('the server did not answer the join'));
          }
        });
      this.renewTimer = setInterval(() => this.renew(), RENEW_EVERY_MS);
    });
  }

  async renew() {
    try {
      const answer = await this.request('token', {});
      this.token = answer.token;
    } catch {
      // Kept: the next tick tries again; the socket stays joined meanwhile.
    }
  }

  /** Sends an admin command; resolves its `ok` response, rejects with its reason. */
  request(event, payload = {}, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      this.channel
        .push(event, payload, timeoutMs)
        .receive('ok', resolve)
        .receive('error', (response) => reject(new Error((response && response.reason) || 'error')))
        .receive('timeout', () => reject(new Error('no answer from the server')));
    });
  }

  on(event, callback) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(callback);
    return () => this.listeners.get(event).delete(callback);
  }

  emit(event, payload) {
    for (const callback of this.listeners.get(event) || []) {
      try {
        callback(payload);
      } catch (err) {
        console.error(`console: a ${event} handler failed`, err);
      }
    }
  }

  close() {
    clearInterval(this.renewTimer);
    this.token = null;
    try {
      this.channel.leave();
    } catch {
      // Leaving a channel that never joined is fine.
    }
    this.socket.disconnect();
  }
}
