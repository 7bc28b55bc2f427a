// Topics: every topic of the deployment with members (distinct ids), joins and messages per
// second (the `topic_rates` of the processes' stats), searchable,
// sortable, 50 per page (only the page is in the DOM, so 1,000 or 100,000 topics cost the
// same to show).

import { el, clear, pager } from '../dom.mjs';
import * as fmt from '../format.mjs';

const PAGE_SIZE = 50;

export class TopicsPanel {
  constructor(section, { deployment, navigate }) {
    this.deployment = deployment;
    this.navigate = navigate;
    this.page = 0;
    this.sort = 'members';
    this.search = el('input', { id: 'topics-search', type: 'search', placeholder: 'Search topics', spellcheck: 'false' });
    this.sortSelect = el('select', { id: 'topics-sort' },
      el('option', { value: 'members', text: 'Most members' }),
      el('option', { value: 'rate', text: 'Busiest' }),
      el('option', { value: 'metas', text: 'Most joins' }),
      el('option', { value: 'name', text: 'Name' }));
    this.summary = el('p', { className: 'muted', id: 'topics-summary' });
    this.list = el('div', { id: 'topics-list' });
    this.search.addEventListener('input', () => { this.page = 0; this.render(); });
    this.sortSelect.addEventListener('change', () => { this.sort = this.sortSelect.value; this.page = 0; this.render(); });
    clear(section).append(
      el('h1', { text: 'Topics' }),
      el('div', { className: 'toolbar' }, this.search, this.sortSelect),
      this.summary,
      this.list,
    );
  }

  show() {
    this.render();
  }

  render() {
    const needle = this.search.value.trim().toLowerCase();
    const rates = this.deployment.topicRates();
    const rate = { get: (name) => rates.get(name) || 0 };
    let rows = [...this.deployment.topics.entries()];
    if (needle) rows = rows.filter(([name]) => name.toLowerCase().includes(needle));
    const bySort = {
      members: (a, b) => b[1].members - a[1].members || a[0].localeCompare(b[0]),
      metas: (a, b) => b[1].metas - a[1].metas || a[0].localeCompare(b[0]),
      name: (a, b) => a[0].localeCompare(b[0]),
      rate: (a, b) => rate.get(b[0]) - rate.get(a[0]) || a[0].localeCompare(b[0]),
    };
    rows.sort(bySort[this.sort]);
    const pages = Math.max(Math.ceil(rows.length / PAGE_SIZE), 1);
    this.page = Math.min(this.page, pages - 1);
    const shown = rows.slice(this.page * PAGE_SIZE, (this.page + 1) * PAGE_SIZE);
    this.summary.textContent = this.deployment.topicsError
      ? `topics unavailable: ${this.deployment.topicsError}`
      : `${fmt.count(rows.length)} topics${needle ? ' matching' : ''}`;
    const body = el('tbody');
    for (const [name, counts] of shown) {
      const link = el('a', { href: `#/topic/${encodeURIComponent(name)}`, className: 'topic-link', text: name });
      body.append(el('tr', { className: 'topic-row', dataset: { topic: name } },
        el('td', {}, link),
        el('td', { className: 'num', text: fmt.count(counts.members) }),
        el('td', { className: 'num', text: fmt.count(counts.metas) }),
        el('td', { className: 'num topic-rate', text: fmt.rate(rate.get(name)) })));
    }
    const head = el('thead', {}, el('tr', {}, el('th', { text: 'Topic' }), el('th', { text: 'Members', className: 'num' }), el('th', { text: 'Joins', className: 'num' }), el('th', { text: 'Messages/s', className: 'num' })));
    clear(this.list).append(
      el('table', { id: 'topics-table' }, head, body),
      pager(this.page, pages, (page) => { this.page = page; this.render(); }),
    );
  }
}
