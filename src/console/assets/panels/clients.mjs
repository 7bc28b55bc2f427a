// Clients: find a client id's sockets (with their process) and the topics each joined, and
// disconnect it everywhere (after a confirmation). The console never lists every connection:
// at 20,000 connections a list is no use; an id is what an operator has.

import { el, clear, table } from '../dom.mjs';

export class ClientsPanel {
  constructor(section, { session }) {
    this.session = session;
    this.input = el('input', { id: 'client-id', type: 'search', placeholder: 'Client id', spellcheck: 'false' });
    const find = el('button', { id: 'client-find', type: 'submit', text: 'Find' });
    const form = el('form', { id: 'client-form' }, this.input, find);
    form.addEventListener('submit', (e) => { e.preventDefault(); this.find(this.input.value.trim()); });
    this.result = el('div', { id: 'client-result' });
    clear(section).append(el('h1', { text: 'Clients' }), form, this.result);
  }

  show(id) {
    if (id) {
      this.input.value = id;
      this.find(id);
    }
  }

  async find(id) {
    if (!id) return;
    clear(this.result).append(el('p', { className: 'muted', text: 'Looking…' }));
    let answer;
    try {
      answer = await this.session.request('client', { id });
    } catch (err) {
      clear(this.result).append(el('p', { className: 'error', text: `cannot look up ${id}: ${err.message}` }));
      return;
    }
    const disconnect = el('button', { id: 'client-disconnect', type: 'button', className: 'danger', text: 'Disconnect' });
    disconnect.addEventListener('click', () => this.disconnect(id));
    const sockets = answer.sockets || [];
    clear(this.result).append(
      el('h2', {}, 'Client ', el('code', { id: 'client-name', text: answer.id })),
      el('p', { className: 'muted', text: `${sockets.length} socket(s) joined to at least one topic` }),
      table('client-sockets', ['Socket', 'Process', 'Topics'], sockets.map((s) => [
        s.socket,
        s.node,
        el('span', {}, (s.topics || []).flatMap((t, i) => [i ? ', ' : '', el('a', { href: `#/topic/${encodeURIComponent(t)}`, text: t })])),
      ])),
      disconnect,
      el('p', { id: 'client-outcome', className: 'muted' }),
    );
  }

  async disconnect(id) {
    if (!window.confirm(`Disconnect every socket of client "${id}" in every process?`)) return;
    const outcome = document.getElementById('client-outcome');
    try {
      const answer = await this.session.request('disconnect', { id });
      outcome.textContent = `Asked ${answer.processes} process(es); ${answer.disconnected} socket(s) found in presence closed.`;
    } catch (err) {
      outcome.textContent = `Disconnect failed: ${err.message}`;
    }
  }
}
