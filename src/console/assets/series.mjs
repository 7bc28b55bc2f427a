// What the console knows about the deployment, from the admin channel's messages: every
// process's latest `stats`, the deployment's totals over the last 10 minutes, and the topics
// with their member counts. Panels read it; only app.mjs writes it.

/** How much history the overview charts keep. */
export const WINDOW_MS = 10 * 60 * 1000;
/** A process whose stats are older than this is shown as silent. */
export const SILENT_AFTER_MS = 20_000;
/** A process silent for this long is forgotten. */
const FORGET_AFTER_MS = 120_000;

export class Deployment {
  constructor() {
    this.processes = new Map(); // node -> { stats, seenAt }
    this.points = []; // { t, connections, joins, messagesIn, messagesOut, bytesIn, bytesOut }
    this.topics = new Map(); // topic -> { members, metas }
    this.topicsError = null;
  }

  /** A `state` or `stats` payload of one process. */
  takeStats(stats) {
    if (!stats || typeof stats.node !== 'string') return;
    this.processes.set(stats.node, { stats, seenAt: Date.now() });
    if (stats.topics && typeof stats.topics === 'object') this.takeTopics(stats);
    if (stats.topics_error) this.topicsError = stats.topics_error;
  }

  /** A `list` answer or a `state` push: the deployment's topics. */
  takeTopics(answer) {
    const topics = new Map();
    for (const [name, counts] of Object.entries(answer.topics || {})) {
      topics.set(name, { members: counts.members || 0, metas: counts.metas || 0 });
    }
    this.topics = topics;
    this.topicsError = null;
  }

  /** A `channel.join` event: the topic exists now, with at least one more join. */
  joined(topic) {
    const known = this.topics.get(topic) || { members: 0, metas: 0 };
    this.topics.set(topic, { members: Math.max(known.members, 1), metas: known.metas + 1 });
  }

  /** A `channel.leave` event; the next `list` has the exact counts. */
  left(topic) {
    const known = this.topics.get(topic);
    if (!known) return;
    const metas = Math.max(known.metas - 1, 0);
    if (metas === 0) this.topics.delete(topic);
    else this.topics.set(topic, { members: Math.min(known.members, metas), metas });
  }

  /** Messages per second by topic: for each topic the largest rate a live process reports
   *  (each process with a subscriber gets every message of the topic). A topic no process
   *  reports has none (only the busiest 500 topics of each process are reported). */
  topicRates() {
    const rates = new Map();
    for (const { stats, silent } of this.liveProcesses()) {
      if (silent || !stats.topic_rates) continue;
      for (const [topic, r] of Object.entries(stats.topic_rates)) {
        if (typeof r === 'number' && r > (rates.get(topic) || 0)) rates.set(topic, r);
      }
    }
    return rates;
  }

  /** The processes heard from recently, by node name. */
  liveProcesses(now = Date.now()) {
    for (const [node, p] of this.processes) {
      if (now - p.seenAt > FORGET_AFTER_MS) this.processes.delete(node);
    }
    return [...this.processes.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([node, p]) => ({ node, stats: p.stats, silent: now - p.seenAt > SILENT_AFTER_MS }));
  }

  /** The sums over the processes that are not silent. */
  totals(now = Date.now()) {
    const sum = {
      processes: 0, connections: 0, channels: 0, joins: 0, messagesIn: 0, messagesOut: 0,
      bytesIn: 0, bytesOut: 0, slowConsumerCloses: 0, inboxDrops: 0,
    };
    for (const { stats, silent } of this.liveProcesses(now)) {
      if (silent) continue;
      const rates = stats.rates || {};
      sum.processes += 1;
      sum.connections += stats.connections?.total || 0;
      sum.channels += stats.channels || 0;
      sum.joins += rates.joins || 0;
      sum.messagesIn += rates.messages_in || 0;
      sum.messagesOut += rates.messages_out || 0;
      sum.bytesIn += rates.bytes_in || 0;
      sum.bytesOut += rates.bytes_out || 0;
      sum.slowConsumerCloses += stats.slow_consumer_closes || 0;
      sum.inboxDrops += stats.inbox_drops || 0;
    }
    return sum;
  }

  /** Adds the current totals as a point of the charts; drops points older than the window. */
  sample(now = Date.now()) {
    this.points.push({ t: now, ...this.totals(now) });
    while (this.points.length && now - this.points[0].t > WINDOW_MS) this.points.shift();
  }

  /** The latency histogram summed over the processes: `{ bounds, counts }`. */
  latency() {
    let bounds = [];
    let counts = [];
    for (const { stats } of this.liveProcesses()) {
      const l = stats.latency;
      if (!l || !Array.isArray(l.counts)) continue;
      bounds = l.bounds_secs || bounds;
      if (counts.length < l.counts.length) counts = counts.concat(new Array(l.counts.length - counts.length).fill(0));
      l.counts.forEach((c, i) => { counts[i] += c; });
    }
    return { bounds, counts };
  }
}
