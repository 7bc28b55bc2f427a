// One topic: its presence members (id, metas, process), a live tail of its messages, a form
// to publish an event to it, and its history when the server keeps one. Members come from the
// admin `presence` command (asked again when a join or leave of the topic is announced), the
// tail from `tail`, the history from `history` (a server without it answers `unknown admin
// command`, shown as "no history").

import { el, clear, pager } from '../dom.mjs';
import * as fmt from '../format.mjs';

const MEMBERS_PAGE = 100;
const TAIL_KEEP = 200;

export class TopicPanel {
  constructor(section, { session }) {
    this.session = session;
    this.topic = null;
    this.page = 0;
    this.members = [];
    this.title = el('code', { id: 'topic-name' });
    this.membersBox = el('div', { id: 'topic-members' });
    this.tailList = el('ol', { id: 'tail-list', className: 'tail' });
    this.tailState = el('p', { id: 'tail-state', className: 'muted' });
    this.historyBox = el('div', { id: 'topic-history' });
    this.event = el('input', { id: 'publish-event', placeholder: 'event', spellcheck: 'false', required: true });
    this.payload = el('textarea', { id: 'publish-payload', rows: 4, spellcheck: 'false' });
    this.payload.value = '{}';
    this.publishOutcome = el('p', { id: 'publish-outcome', className: 'muted' });
    const form = el('form', { id: 'publish-form' },
      el('label', { for: 'publish-event', text: 'Event' }), this.event,
      el('label', { for: 'publish-payload', text: 'Payload (JSON)' }), this.payload,
      el('button', { id: 'publish-submit', type: 'submit', text: 'Publish' }),
      this.publishOutcome);
    form.addEventListener('submit', (e) => { e.preventDefault(); this.publish(); });
    clear(section).append(
      el('h1', {}, 'Topic ', this.title),
      el('div', { className: 'columns' },
        el('div', {}, el('h2', { text: 'Members' }), this.membersBox),
        el('div', {},
          el('h2', { text: 'Live tail' }), this.tailState, this.tailList,
          el('h2', { text: 'Publish' }), form,
          el('h2', { text: 'History' }), this.historyBox)),
    );
    session.on('message', (m) => this.onMessage(m));
    const changed = (e) => { if (e && e.topic === this.topic) this.scheduleMembers(); };
    session.on('channel.join', changed);
    session.on('channel.leave', changed);
  }

  async show(topic) {
    if (topic !== this.topic) {
      this.topic = topic;
      this.page = 0;
      this.members = [];
      clear(this.tailList);
      clear(this.membersBox);
      this.publishOutcome.textContent = '';
    }
    this.title.textContent = topic;
    this.tailState.textContent = 'Starting the tail…';
    try {
      await this.session.request('tail', { topic });
      this.tailState.textContent = 'Messages published to this topic appear here as they arrive (at most 50 a second).';
    } catch (err) {
      this.tailState.textContent = `No tail: ${err.message}`;
    }
    this.loadMembers();
    this.loadHistory();
  }

  hide() {
    if (this.topic) this.session.request('tail', { topic: null }).catch(() => {});
  }

  /** Reads the members again at most once a second while joins and leaves keep coming (each
   *  read is one HVALS of the topic on the server's publisher thread). */
  scheduleMembers() {
    if (this.membersTimer) return;
    this.membersTimer = setTimeout(() => {
      this.membersTimer = null;
      this.loadMembers();
    }, 1000);
  }

  async loadMembers() {
    const topic = this.topic;
    let answer;
    try {
      answer = await this.session.request('presence', { topic });
    } catch (err) {
      if (topic === this.topic) clear(this.membersBox).append(el('p', { className: 'error', text: `members unavailable: ${err.message}` }));
      return;
    }
    if (topic !== this.topic) return;
    this.members = answer.members || [];
    this.truncated = answer.truncated;
    this.renderMembers();
  }

  renderMembers() {
    const pages = Math.max(Math.ceil(this.members.length / MEMBERS_PAGE), 1);
    this.page = Math.min(this.page, pages - 1);
    const body = el('tbody');
    for (const member of this.members.slice(this.page * MEMBERS_PAGE, (this.page + 1) * MEMBERS_PAGE)) {
      const metas = member.metas || [];
      const nodes = [...new Set(metas.map((m) => m.node).filter(Boolean))];
      const since = Math.min(...metas.map((m) => m.online_at || Infinity));
      body.append(el('tr', { className: 'member-row', dataset: { id: member.id } },
        el('td', {}, el('a', { href: `#/clients/${encodeURIComponent(member.id)}`, className: 'member-id', text: member.id })),
        el('td', { className: 'num', text: String(metas.length) }),
        el('td', { className: 'member-nodes', text: nodes.join(', ') }),
        el('td', { text: Number.isFinite(since) ? new Date(since).toISOString().replace('T', ' ').slice(0, 19) : '–' })));
    }
    const head = el('thead', {}, el('tr', {}, ['Id', 'Joins', 'Process', 'Online since'].map((h) => el('th', { text: h }))));
    clear(this.membersBox).append(
      el('p', { className: 'muted', id: 'members-summary', text: `${fmt.count(this.members.length)} member(s)${this.truncated ? ' (list truncated)' : ''}` }),
      el('table', { id: 'members-table' }, head, body),
      pager(this.page, pages, (page) => { this.page = page; this.renderMembers(); }),
    );
  }

  onMessage(message) {
    if (!message || message.topic !== this.topic) return;
    const payload = message.binary ? `(binary, base64) ${message.payload}` : JSON.stringify(message.payload, null, 2);
    const item = el('li', { className: 'tail-item' },
      el('div', { className: 'tail-head' },
        el('span', { className: 'muted', text: fmt.time(Date.now()) }), ' ',
        el('strong', { className: 'tail-event', text: message.event }),
        message.position !== undefined ? el('span', { className: 'muted', text: ` position ${message.position}` }) : null,
        message.skipped ? el('span', { className: 'warn', text: ` (${message.skipped} skipped before)` }) : null),
      el('pre', { className: 'tail-payload', text: payload }));
    this.tailList.prepend(item);
    while (this.tailList.childElementCount > TAIL_KEEP) this.tailList.lastElementChild.remove();
  }

  async publish() {
    const topic = this.topic;
    const event = this.event.value.trim();
    let payload;
    try {
      payload = JSON.parse(this.payload.value || '{}');
    } catch (err) {
      this.publishOutcome.textContent = `The payload is not JSON: ${err.message}`;
      return;
    }
    if (!window.confirm(`Publish event "${event}" to every subscriber of "${topic}"?`)) return;
    try {
      await this.session.request('publish', { topic, event, payload });
      this.publishOutcome.textContent = `Published "${event}".`;
    } catch (err) {
      this.publishOutcome.textContent = `Not published: ${err.message}`;
    }
  }

  async loadHistory() {
    const topic = this.topic;
    let answer;
    try {
      answer = await this.session.request('history', { topic, limit: 50 });
    } catch (err) {
      if (topic !== this.topic) return;
      const text = err.message === 'unknown admin command'
        ? 'No history: this server keeps no history.'
        : `No history (${err.message}).`;
      clear(this.historyBox).append(el('p', { className: 'muted', id: 'history-none', text }));
      return;
    }
    if (topic !== this.topic) return;
    const entries = Array.isArray(answer) ? answer
      : answer.messages || answer.entries || answer.items || [];
    if (!entries.length) {
      clear(this.historyBox).append(el('p', { className: 'muted', id: 'history-none', text: 'No history for this topic.' }));
      return;
    }
    const list = el('ol', { id: 'history-list', className: 'tail' });
    for (const entry of entries) {
      const position = entry.position ?? entry.offset ?? entry.id;
      list.append(el('li', { className: 'tail-item' },
        el('div', { className: 'tail-head' },
          position !== undefined ? el('span', { className: 'muted', text: `#${position} ` }) : null,
          el('strong', { text: entry.event ?? '' })),
        el('pre', { className: 'tail-payload', text: JSON.stringify(entry.payload ?? entry, null, 2) })));
    }
    clear(this.historyBox).append(list);
  }
}
