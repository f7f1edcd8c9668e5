// The console: loads the host's console config, switches views by the URL's
// hash, keeps the visible view fresh by polling (slower while the host does
// not answer, paused while the tab is hidden) and holds the admin token UI.

import { h, fill } from './dom.js';
import { tokens, getJson } from './api.js';
import * as modules from './modules.js';
import * as topics from './topics.js';
import * as deadLetters from './dead-letters.js';
import * as messages from './messages.js';
import * as send from './send.js';

const VIEWS = { modules, topics, 'dead-letters': deadLetters, messages, send };
/** Poll every this many ms while the host answers ... */
const POLL_MS = 2000;
/** ... and back off to at most this while it does not. */
const MAX_POLL_MS = 30000;

const live = document.getElementById('live');

/** Says what the last refresh did, in the status line. */
function say(text, tone = 'ok') {
  live.textContent = text;
  live.dataset.tone = tone;
}

/** Repeats the current view's `poll` while it is shown and the tab visible. */
class Poller {
  constructor() {
    this.task = null;
    this.timer = null;
    this.delay = POLL_MS;
    this.generation = 0;
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) this.pause();
      else if (this.task) this.run(this.generation);
    });
  }

  follow(task) {
    this.pause();
    this.generation += 1;
    this.task = task;
    this.delay = POLL_MS;
    if (task) this.run(this.generation);
  }

  pause() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async run(generation) {
    this.pause();
    try {
      await this.task();
      if (generation !== this.generation) return;
      this.delay = POLL_MS;
      say(`Live: updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      if (generation !== this.generation) return;
      this.delay = Math.min(this.delay * 2, MAX_POLL_MS);
      say(`The host did not answer (${error.message}); trying again in ${Math.round(this.delay / 1000)} s`, 'error');
    }
    if (generation === this.generation && !document.hidden) {
      this.timer = setTimeout(() => this.run(generation), this.delay);
    }
  }
}

/**
 * A form asking for the admin token once; keeping it tells the shown view
 * (its `tokenChanged`), which then loads what it needs.
 */
function tokenForm(why) {
  const input = h('input', { type: 'password', id: `token-${Math.random().toString(36).slice(2)}`, autocomplete: 'off', required: true });
  const form = h('form', { class: 'token-form', on: { submit: (event) => {
    event.preventDefault();
    tokens.setAdmin(input.value.trim());
  } } },
  why ? h('p', { text: why }) : null,
  h('label', { attrs: { for: input.id }, text: 'Admin token' }),
  input,
  h('button', { type: 'submit', text: 'Use for this tab' }));
  return form;
}

let config = { admin_api: false, features: {} };

/**
 * For a view that needs the admin API: renders why it cannot be used
 * (off on this host, or no token yet: asks for it) into `container` and
 * returns false; returns true when a token is there.
 */
function adminReady(container) {
  if (!config.admin_api) {
    fill(container, h('p', { class: 'notice', data: { admin: 'off' },
      text: 'The admin API is off on this host: no admin token is configured (set the variable named by admin-token-env in plugins.toml and restart the host).' }));
    return false;
  }
  if (!tokens.admin()) {
    fill(container, tokenForm('This view uses the admin API. The token is kept for this tab only.'));
    return false;
  }
  return true;
}

function renderAdminBar() {
  const bar = document.getElementById('admin');
  if (!config.admin_api) {
    fill(bar, h('span', { class: 'badge badge-off', text: 'admin API off' }));
  } else if (tokens.admin()) {
    fill(bar, h('span', { class: 'muted', text: 'Admin token set for this tab' }), ' ',
      h('button', { type: 'button', class: 'link', text: 'Forget', on: { click: () => tokens.setAdmin('') } }));
  } else {
    fill(bar, h('span', { class: 'muted', text: 'No admin token' }));
  }
}

const poller = new Poller();
const context = { adminReady, say, get config() { return config; } };
let current = null;

function show() {
  const name = location.hash.slice(1);
  const next = VIEWS[name] ? name : 'modules';
  for (const key of Object.keys(VIEWS)) {
    document.getElementById(`view-${key}`).hidden = key !== next;
    const link = document.querySelector(`nav a[data-view="${key}"]`);
    if (key === next) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (current !== next) {
    current = next;
    const view = VIEWS[next];
    if (view.show) view.show(context);
    poller.follow(view.poll ? () => view.poll(context) : null);
    if (!view.poll) say('');
  }
}

async function start() {
  try {
    config = await getJson('/console/config.json');
    document.getElementById('host-version').textContent = `host ${config.version}`;
  } catch (error) {
    say(`Could not read the console config (${error.message})`, 'error');
  }
  renderAdminBar();
  tokens.onChange(() => {
    renderAdminBar();
    const view = VIEWS[current];
    if (view && view.tokenChanged) view.tokenChanged(context);
  });
  window.addEventListener('hashchange', show);
  show();
}

start();
