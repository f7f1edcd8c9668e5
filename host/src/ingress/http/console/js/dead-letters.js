// Dead letters (admin): filter by topic (on the host) and module (here),
// each with its error and envelope; replay one, or every unreplayed one of
// the topic filtered on.

import { h, fill, pretty, time, answerView, badge } from './dom.js';
import { call, segment } from './api.js';

const body = document.getElementById('dead-letters-body');
/** Letters one listing asks for. */
const LIMIT = 200;

let filters = { topic: '', module: '' };
let letters = [];
let last = null;

function letterView(letter, ctx) {
  const result = h('div', { class: 'result', attrs: { 'aria-live': 'polite' } });
  const replay = h('button', { type: 'button', text: 'Replay', on: { click: async () => {
    replay.disabled = true;
    const answer = await call('POST', `/v1/dead-letters/${segment(letter.id)}/replay`, { auth: 'admin' });
    fill(result, answerView(answer));
    replay.disabled = false;
    if (answer.status !== 401) last = answer;
    if (answer.ok) load(ctx);
  } } });
  return h('article', { class: 'card letter', data: { deadLetter: letter.id, messageId: letter.message_id } },
    h('header', { class: 'card-head' },
      h('h2', {}, h('code', { text: `${letter.topic}/${letter.subtopic}` })),
      badge(letter.replayed_at ? 'replayed' : 'dead-lettered'),
      h('span', { class: 'muted', text: `${letter.module} · ${letter.attempts} attempt(s) · ` }),
      time(letter.created_at)),
    h('p', {}, 'message ', h('code', { text: letter.message_id }), ' · error ', h('strong', { text: letter.error_kind })),
    h('pre', { class: 'error-text', data: { field: 'error' }, text: letter.error_message }),
    h('details', {}, h('summary', { text: 'Envelope' }), h('pre', { class: 'json', text: pretty(letter.envelope) })),
    h('div', { class: 'actions' }, replay),
    result);
}

function render(ctx) {
  const moduleNames = [...new Set(letters.map((l) => l.module))].sort();
  const topic = h('input', { type: 'text', id: 'dl-topic', value: filters.topic, placeholder: 'all topics', attrs: { list: 'dl-topics' } });
  const topicList = h('datalist', { id: 'dl-topics' }, [...new Set(letters.map((l) => l.topic))].map((t) => h('option', { value: t })));
  const module = h('select', { id: 'dl-module' },
    h('option', { value: '', text: 'all modules' }),
    moduleNames.map((m) => h('option', { value: m, text: m, selected: m === filters.module })));
  const form = h('form', { class: 'filters', on: { submit: (event) => {
    event.preventDefault();
    filters = { topic: topic.value.trim(), module: module.value };
    load(ctx);
  } } },
  h('div', { class: 'field' }, h('label', { attrs: { for: 'dl-topic' }, text: 'Topic' }), topic, topicList),
  h('div', { class: 'field' }, h('label', { attrs: { for: 'dl-module' }, text: 'Module' }), module),
  h('button', { type: 'submit', text: 'Filter' }));
  module.addEventListener('change', () => {
    filters.module = module.value;
    render(ctx);
  });

  const all = h('div', { class: 'result', attrs: { 'aria-live': 'polite' } });
  const replayAll = filters.topic
    ? h('button', { type: 'button', id: 'dl-replay-all', text: `Replay all unreplayed of ${filters.topic}`, on: { click: async () => {
      replayAll.disabled = true;
      const answer = await call('POST', `/v1/dead-letters/replay?topic=${segment(filters.topic)}`, { auth: 'admin' });
      last = answer;
      load(ctx);
    } } })
    : h('p', { class: 'muted', text: 'Filter on a topic to replay all of its dead letters at once.' });
  if (last) fill(all, h('h2', { text: 'Last replay' }), answerView(last));

  const shown = letters.filter((l) => !filters.module || l.module === filters.module);
  fill(body, form, h('div', { class: 'actions' }, replayAll), all,
    shown.length === 0
      ? h('p', { class: 'muted', data: { field: 'empty' }, text: 'No dead letters.' })
      : h('div', { class: 'cards' }, shown.map((l) => letterView(l, ctx))));
}

async function load(ctx) {
  if (!ctx.adminReady(body)) return;
  const query = new URLSearchParams({ limit: String(LIMIT) });
  if (filters.topic) query.set('topic', filters.topic);
  let answer;
  try {
    answer = await call('GET', `/v1/dead-letters?${query}`, { auth: 'admin' });
  } catch (error) {
    fill(body, h('p', { class: 'notice notice-error', text: `The host did not answer: ${error.message}` }));
    return;
  }
  if (answer.status === 401) {
    ctx.adminReady(body);
    body.prepend(h('p', { class: 'notice notice-error', text: 'The host refused that admin token.' }));
    return;
  }
  if (!answer.ok) {
    fill(body, answerView(answer));
    return;
  }
  letters = answer.body.dead_letters || [];
  render(ctx);
}

export function show(ctx) {
  load(ctx);
}

export function tokenChanged(ctx) {
  load(ctx);
}
