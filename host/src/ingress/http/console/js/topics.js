// Topics and consumers: who owns, subscribes to and emits each topic, how
// far each consumer group is behind, and the outbox backlog (GET /v1/topics).

import { h, fill, chips, duration } from './dom.js';
import { getJson } from './api.js';

const body = document.getElementById('topics-body');

function table(caption, headings, rows, empty) {
  if (rows.length === 0) return h('p', { class: 'muted', text: empty });
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('caption', { text: caption }),
      h('thead', {}, h('tr', {}, headings.map((t) => h('th', { attrs: { scope: 'col' }, text: t })))),
      h('tbody', {}, rows)));
}

function outbox(o) {
  if (!o) return null;
  if (!o.relay) {
    return h('p', { class: 'notice', data: { field: 'outbox' },
      text: 'No broker: the outbox is the embedded log itself, so nothing waits to be published; each module\'s lag below is how far its reader is behind the log.' });
  }
  if (o.unpublished === null || o.unpublished === undefined) {
    return h('p', { class: 'notice notice-error', text: `Outbox backlog unknown: ${o.error || 'no reading'}` });
  }
  return h('p', { class: 'notice', data: { field: 'outbox' } },
    h('strong', { text: String(o.unpublished) }), ' outbox entries not yet published',
    o.oldest_unpublished_age_ms !== null ? `; the oldest is ${duration(o.oldest_unpublished_age_ms)} old` : '');
}

/** Fetches GET /v1/topics and redraws the tables. */
export async function poll() {
  const answer = await getJson('/v1/topics');
  const topicRows = (answer.topics || []).map((t) => h('tr', { data: { topic: t.name } },
    h('th', { attrs: { scope: 'row' } }, h('code', { text: t.name })),
    h('td', {}, t.owner ? h('span', { text: t.owner }) : h('span', { class: 'muted', text: 'event topic' })),
    h('td', {}, chips(t.subscribers)),
    h('td', {}, chips(t.emitters))));
  const consumerRows = (answer.consumers || []).map((c) => h('tr', {},
    h('td', { text: c.module }),
    h('td', {}, h('code', { text: c.stream })),
    h('td', {}, h('code', { text: c.group })),
    h('td', { text: c.via }),
    h('td', { class: c.lag > 0 ? 'num behind' : 'num', text: String(c.lag) })));
  fill(body,
    outbox(answer.outbox),
    table('Topics', ['topic', 'owner', 'subscribers', 'emitted by'], topicRows, 'No topics: no module is loaded.'),
    table('Consumer lag per group', ['module', 'stream', 'group', 'via', 'lag'], consumerRows, 'No consumer has a lag reading yet.'));
}
