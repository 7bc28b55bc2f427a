// Latency: the histogram of Redis-receive → queued on every local subscriber's socket, per
// downstream message, summed over the processes (the channel_downstream_latency_seconds
// series of /metrics), since each process started.

import { el, clear, table } from '../dom.mjs';
import { drawBars } from '../chart.mjs';
import * as fmt from '../format.mjs';

export class LatencyPanel {
  constructor(section, { deployment }) {
    this.deployment = deployment;
    this.canvas = el('canvas', { id: 'chart-latency', className: 'chart wide' });
    this.summary = el('p', { id: 'latency-summary', className: 'muted' });
    this.details = el('div', { id: 'latency-table' });
    clear(section).append(
      el('h1', { text: 'Latency' }),
      el('p', { className: 'muted', text: 'From the Redis reader reading a downstream message to the shard having queued it on every local subscriber, per message, all processes, since start.' }),
      this.summary,
      this.canvas,
      this.details,
    );
  }

  show() {
    this.render();
  }

  render() {
    const { bounds, counts } = this.deployment.latency();
    const labels = bounds.map((b) => `≤ ${fmt.seconds(b)}`).concat(bounds.length ? [`> ${fmt.seconds(bounds[bounds.length - 1])}`] : []);
    const total = counts.reduce((a, b) => a + b, 0);
    this.summary.textContent = total
      ? `${fmt.count(total)} messages; median ${quantile(bounds, counts, 0.5)}, p99 ${quantile(bounds, counts, 0.99)} (bucket upper bounds)`
      : 'No downstream message yet.';
    drawBars(this.canvas, labels, counts);
    clear(this.details).append(table('latency-buckets', ['Bucket', 'Messages'], labels.map((l, i) => [l, fmt.count(counts[i] || 0)])));
  }
}

function quantile(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  let seen = 0;
  for (let i = 0; i < counts.length; i += 1) {
    seen += counts[i];
    if (seen >= q * total) return i < bounds.length ? `≤ ${fmt.seconds(bounds[i])}` : `> ${fmt.seconds(bounds[bounds.length - 1])}`;
  }
  return '–';
}
