// Building the page without parsing markup: every value shown here may come
// from a module or a client (names, error text, bodies), so it only ever
// becomes a text node or an attribute value, never HTML.

/**
 * Creates an element. `props`: `class`, `text`, `attrs` (set with
 * setAttribute), `data` (dataset), `on` (event listeners) and any other key
 * as a DOM property (`type`, `value`, `disabled`, ...). Children are nodes
 * or strings (strings become text nodes); null, undefined and false are
 * skipped, arrays are flattened.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'attrs') {
      for (const [name, v] of Object.entries(value)) {
        if (v !== undefined && v !== null && v !== false) el.setAttribute(name, String(v));
      }
    } else if (key === 'data') Object.assign(el.dataset, value);
    else if (key === 'on') {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else el[key] = value;
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el` with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** JSON, indented; strings that are not JSON as they are. */
export function pretty(value) {
  if (typeof value === 'string') return value;
  return JSON.stringify(value, null, 2);
}

/** A byte count for people: 1.5 MiB. */
export function bytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** A duration in milliseconds for people: 850 ms, 12 s, 3 min, 2 h. */
export function duration(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '—';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120000) return `${Math.round(ms / 1000)} s`;
  if (ms < 7200000) return `${Math.round(ms / 60000)} min`;
  return `${Math.round(ms / 3600000)} h`;
}

/** An RFC 3339 time as local time, with the original in a tooltip. */
export function time(text) {
  if (!text) return h('span', { class: 'muted', text: '—' });
  const at = new Date(text);
  const shown = Number.isNaN(at.getTime()) ? text : at.toLocaleString();
  return h('time', { attrs: { datetime: text, title: text }, text: shown });
}

/** A list of names as chips, or a dash. */
export function chips(list) {
  if (!Array.isArray(list) || list.length === 0) return h('span', { class: 'muted', text: '—' });
  return h('ul', { class: 'chips' }, list.map((item) => h('li', { class: 'chip', text: item })));
}

/** A status badge; the class is picked from a fixed set, never from data. */
export function badge(status) {
  const known = ['loaded', 'failed', 'processed', 'duplicate', 'dead-lettered', 'pending', 'replayed', 'off', 'ok'];
  const tone = known.includes(status) ? status : 'other';
  return h('span', { class: `badge badge-${tone}`, text: status ?? 'unknown' });
}

/** A definition list from [term, value] pairs; pairs with a null value are left out. */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs
    .filter(([, value]) => value !== null && value !== undefined)
    .map(([term, value, field]) => h('div', { class: 'fact' },
      h('dt', { text: term }),
      h('dd', { data: field ? { field } : undefined }, value))));
}

/** A status line and the body of an API answer, as the API returned it. */
export function answerView(result) {
  const tone = result.ok ? 'ok' : 'error';
  const kind = result.body && result.body.error ? ` ${result.body.error.kind}` : '';
  return h('div', { class: `answer answer-${tone}`, data: { status: String(result.status) } },
    h('p', { class: 'answer-status', text: `HTTP ${result.status}${kind}` }),
    h('pre', { class: 'answer-body', text: pretty(result.body) }));
}
