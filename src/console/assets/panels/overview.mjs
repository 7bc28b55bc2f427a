// Overview: the deployment's processes and totals, with 10-minute charts of connections,
// joins/s, messages/s and bytes/s (one point per stats interval).

import { el, clear, table } from '../dom.mjs';
import { drawLines } from '../chart.mjs';
import { WINDOW_MS } from '../series.mjs';
import * as fmt from '../format.mjs';

export class OverviewPanel {
  constructor(section, { deployment }) {
    this.section = section;
    this.deployment = deployment;
    this.cards = el('div', { className: 'cards', id: 'overview-cards' });
    this.charts = {
      connections: el('canvas', { id: 'chart-connections', className: 'chart' }),
      joins: el('canvas', { id: 'chart-joins', className: 'chart' }),
      messages: el('canvas', { id: 'chart-messages', className: 'chart' }),
      bytes: el('canvas', { id: 'chart-bytes', className: 'chart' }),
    };
    this.processes = el('div', { id: 'overview-processes' });
    clear(section).append(
      el('h1', { text: 'Overview' }),
      this.cards,
      el('div', { className: 'chart-grid' },
        figure('Connections', this.charts.connections),
        figure('Joins per second', this.charts.joins),
        figure('Messages per second', this.charts.messages),
        figure('Bytes per second', this.charts.bytes)),
      el('h2', { text: 'Processes' }),
      this.processes,
    );
  }

  show() {
    this.render();
  }

  render() {
    const totals = this.deployment.totals();
    clear(this.cards).append(
      card('Processes', fmt.count(totals.processes), 'card-processes'),
      card('Connections', fmt.count(totals.connections), 'card-connections'),
      card('Topics', fmt.count(this.deployment.topics.size), 'card-topics'),
      card('Joins/s', fmt.rate(totals.joins), 'card-joins'),
      card('Messages in/s', fmt.rate(totals.messagesIn), 'card-messages-in'),
      card('Messages out/s', fmt.rate(totals.messagesOut), 'card-messages-out'),
      card('Bytes in/s', fmt.bytes(totals.bytesIn), 'card-bytes-in'),
      card('Bytes out/s', fmt.bytes(totals.bytesOut), 'card-bytes-out'),
      card('Slow-consumer closes', fmt.count(totals.slowConsumerCloses), 'card-slow'),
    );
    const rows = this.deployment.liveProcesses().map(({ node, stats, silent }) => {
      const redis = stats.redis || {};
      const rates = stats.rates || {};
      return [
        node,
        silent ? 'silent' : 'up',
        fmt.duration(stats.uptime_secs),
        fmt.count(stats.shards),
        redis.mode || '–',
        redis.connected ? 'connected' : 'DOWN',
        fmt.count(redis.reconnects),
        fmt.count(stats.connections?.total),
        fmt.count(stats.channels),
        fmt.rate(rates.messages_in),
        fmt.rate(rates.messages_out),
        fmt.count(stats.slow_consumer_closes),
        fmt.count(stats.inbox_drops),
      ];
    });
    clear(this.processes).append(table('processes-table', [
      'Node', 'State', 'Uptime', 'Shards', 'Redis mode', 'Redis', 'Reconnects', 'Connections',
      'Channels', 'Msg in/s', 'Msg out/s', 'Slow closes', 'Inbox drops',
    ], rows));
    const points = this.deployment.points;
    const times = points.map((p) => p.t);
    drawLines(this.charts.connections, times, [{ label: 'connections', values: points.map((p) => p.connections) }], WINDOW_MS, fmt.count);
    drawLines(this.charts.joins, times, [{ label: 'joins/s', values: points.map((p) => p.joins) }], WINDOW_MS, fmt.rate);
    drawLines(this.charts.messages, times, [
      { label: 'in', values: points.map((p) => p.messagesIn) },
      { label: 'out', values: points.map((p) => p.messagesOut) },
    ], WINDOW_MS, fmt.rate);
    drawLines(this.charts.bytes, times, [
      { label: 'in', values: points.map((p) => p.bytesIn) },
      { label: 'out', values: points.map((p) => p.bytesOut) },
    ], WINDOW_MS, fmt.bytes);
  }
}

function card(label, value, id) {
  return el('div', { className: 'card', id }, el('div', { className: 'card-value', text: value }), el('div', { className: 'card-label', text: label }));
}

function figure(caption, canvas) {
  return el('figure', {}, canvas, el('figcaption', { text: `${caption}, last 10 minutes` }));
}
