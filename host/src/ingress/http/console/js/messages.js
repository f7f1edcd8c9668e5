// Message lookup (admin): where one message is, per module (processed with
// its answer and events, failed, dead-lettered, pending), from
// GET /v1/messages/{id}.

import { h, fill, pretty, time, badge, answerView, facts } from './dom.js';
import { call, segment } from './api.js';

const body = document.getElementById('messages-body');
let lastId = '';

function handling(m) {
  const details = [];
  if (m.output !== undefined && m.output !== null) {
    details.push(h('h4', { text: 'Answer' }), h('pre', { class: 'json', text: pretty(m.output) }));
  }
  if (Array.isArray(m.events) && m.events.length > 0) {
    details.push(h('h4', { text: `Events (${m.events.length})` }),
      h('ul', { class: 'events' }, m.events.map((e) => h('li', {},
        h('code', { text: `${e.topic}/${e.subtopic}` }), ' ', h('code', { class: 'muted', text: e.id }),
        h('details', {}, h('summary', { text: 'Envelope' }), h('pre', { class: 'json', text: pretty(e) }))))));
  }
  if (m.error) {
    details.push(h('h4', { text: `Error: ${m.error.kind}` }), h('pre', { class: 'error-text', text: m.error.message ?? '' }));
  }
  return h('article', { class: 'card', data: { handling: m.module } },
    h('header', { class: 'card-head' }, h('h3', { text: m.module }), badge(m.status)),
    facts([
      ['processed', m.processed_at ? time(m.processed_at) : null],
      ['failed', m.failed_at ? time(m.failed_at) : null],
      ['attempts', m.attempts !== undefined && m.attempts !== null ? String(m.attempts) : null],
      ['dead letter', m.dead_letter ? h('code', { text: m.dead_letter.id }) : null],
    ]),
    details);
}

function result(answer) {
  if (!answer.ok) return answerView(answer);
  const a = answer.body;
  return h('div', { class: 'lookup', data: { status: a.status } },
    h('header', { class: 'card-head' }, h('h2', {}, h('code', { text: a.id })), badge(a.status)),
    facts([
      ['topic', a.topic ? h('code', { text: `${a.topic}/${a.subtopic}` }) : null],
      ['in the log', a.log ? `#${a.log.seq}, from ${a.log.source}` : null],
      ['logged', a.log ? time(a.log.created_at) : null],
      ['published', a.log && a.log.published_at ? time(a.log.published_at) : null],
    ]),
    h('div', { class: 'cards' }, (a.modules || []).map(handling)),
    h('details', {}, h('summary', { text: 'The answer as JSON' }), h('pre', { class: 'json', text: pretty(a) })));
}

function render(ctx, answer) {
  const input = h('input', { type: 'text', id: 'lookup-id', value: lastId, required: true, spellcheck: false, autocomplete: 'off' });
  const out = h('div', { id: 'lookup-result', attrs: { 'aria-live': 'polite' } }, answer ? result(answer) : null);
  const form = h('form', { class: 'filters', on: { submit: async (event) => {
    event.preventDefault();
    lastId = input.value.trim();
    if (!lastId) return;
    const found = await call('GET', `/v1/messages/${segment(lastId)}`, { auth: 'admin' });
    if (found.status === 401) return;
    render(ctx, found);
  } } },
  h('div', { class: 'field grow' }, h('label', { attrs: { for: 'lookup-id' }, text: 'Message id' }), input),
  h('button', { type: 'submit', text: 'Look up' }));
  fill(body, form, out);
}

export function show(ctx) {
  if (!ctx.adminReady(body)) return;
  render(ctx, null);
}

export function tokenChanged(ctx) {
  show(ctx);
}
