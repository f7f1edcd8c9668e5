// Modules: each loaded (or failed) module with what it declares, its counts,
// its last error and its rollback; refreshed by the app's poller.

import { h, fill, chips, badge, bytes, facts, time, pretty } from './dom.js';
import { getJson } from './api.js';

const list = document.getElementById('modules-list');
const manifestError = document.getElementById('manifest-error');

/** A shortened sha256 with the whole of it in a tooltip. */
function digest(sha) {
  if (!sha) return null;
  return h('code', { attrs: { title: sha }, text: `${sha.slice(0, 12)}…` });
}

/**
 * A shadow run's status and counts, when the API reports one for this
 * module (`shadow` in GET /v1/modules; hosts without shadow runs leave it
 * out and nothing is shown).
 */
function shadow(m) {
  const s = m.shadow;
  if (!s || typeof s !== 'object') return null;
  const pairs = Object.entries(s).map(([key, value]) => [key.replaceAll('_', ' '),
    typeof value === 'object' && value !== null ? pretty(value) : String(value)]);
  return h('section', { class: 'shadow', data: { field: 'shadow' } },
    h('h3', { text: 'Shadow run' }), facts(pairs));
}

function card(m) {
  const peak = typeof m.peak_memory_bytes === 'number' ? bytes(m.peak_memory_bytes) : null;
  const counts = m.status === 'loaded'
    ? h('p', { class: 'counts' },
      h('span', { class: 'count' }, h('strong', { data: { field: 'handled' }, text: String(m.handled ?? 0) }), ' handled'),
      h('span', { class: 'count' }, h('strong', { data: { field: 'failed' }, text: String(m.failed ?? 0) }), ' failed'),
      peak ? h('span', { class: 'count' }, h('strong', { text: peak }), ' peak memory') : null)
    : null;
  return h('article', { class: 'card module', data: { module: m.name } },
    h('header', { class: 'card-head' },
      h('h2', { text: m.name }),
      m.version ? h('span', { class: 'muted', text: `v${m.version}` }) : null,
      badge(m.status)),
    counts,
    facts([
      ['sha256', digest(m.sha256)],
      ['source', m.source ?? null],
      ['file', m.file ?? null],
      ['loaded', m.loaded_at ? time(m.loaded_at) : null],
      ['owns', m.status === 'loaded' ? chips(m.topics) : null],
      ['subscribes', m.status === 'loaded' ? chips(m.subscribes) : null],
      ['emits', m.status === 'loaded' ? chips(m.emits) : null],
      ['reads', m.status === 'loaded' ? chips(m.reads) : null],
      ['rolled back from', m.rolled_back_from ? h('code', { attrs: { title: m.rolled_back_from }, text: `${m.rolled_back_from.slice(0, 12)}…` }) : null],
    ]),
    shadow(m),
    m.last_error ? h('div', { class: 'last-error' },
      h('h3', { text: 'Last error' }),
      h('pre', { class: 'error-text', data: { field: 'last-error' }, text: m.last_error })) : null);
}

/** Fetches GET /v1/modules and redraws the cards. */
export async function poll() {
  const answer = await getJson('/v1/modules');
  if (answer.manifest_error) {
    fill(manifestError, h('div', { class: 'notice notice-error' },
      h('strong', { text: 'plugins.toml could not be read; the host keeps what it had. ' }),
      h('pre', { class: 'error-text', text: answer.manifest_error })));
  } else {
    fill(manifestError);
  }
  const modules = [...(answer.modules || [])].sort((a, b) => String(a.name).localeCompare(String(b.name)));
  if (modules.length === 0) {
    fill(list, h('p', { class: 'muted', text: 'No module is loaded. Drop a *.wasm into the plugins folder.' }));
    return;
  }
  fill(list, modules.map(card));
}
