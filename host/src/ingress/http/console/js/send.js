// Send: one form per command topic a loaded module owns. The body is raw
// JSON, posted as it is to POST /v1/topics/{topic}/{subtopic}; the answer
// or the error is shown as the API returned it. (When modules declare
// schemas, their fields would be built here; today none does.)

import { h, fill, answerView } from './dom.js';
import { call, getJson, segment, tokens } from './api.js';

const body = document.getElementById('send-body');
/** The topics the forms were built for, so a refresh keeps what is typed. */
let builtFor = null;

function topicForm(topic, owner) {
  const key = topic.replace(/[^A-Za-z0-9_-]/g, '_');
  const ids = { subtopic: `send-${key}-subtopic`, id: `send-${key}-id`, body: `send-${key}-body` };
  const subtopic = h('input', { type: 'text', id: ids.subtopic, required: true, spellcheck: false, autocomplete: 'off', attrs: { pattern: '[A-Za-z0-9._\\-]+' } });
  const messageId = h('input', { type: 'text', id: ids.id, spellcheck: false, autocomplete: 'off', placeholder: 'a new UUIDv7' });
  const text = h('textarea', { id: ids.body, rows: 5, spellcheck: false, value: '{}' });
  const out = h('div', { class: 'result', attrs: { 'aria-live': 'polite' } });
  const submit = h('button', { type: 'submit', text: `Send to ${topic}` });
  const form = h('form', { class: 'card send', data: { topic }, on: { submit: async (event) => {
    event.preventDefault();
    submit.disabled = true;
    const headers = {};
    if (messageId.value.trim()) headers['X-Message-Id'] = messageId.value.trim();
    try {
      const answer = await call('POST', `/v1/topics/${segment(topic)}/${segment(subtopic.value.trim())}`,
        { body: text.value, auth: 'message', headers });
      fill(out, answerView(answer));
    } catch (error) {
      fill(out, h('p', { class: 'notice notice-error', text: `The host did not answer: ${error.message}` }));
    } finally {
      submit.disabled = false;
    }
  } } },
  h('header', { class: 'card-head' }, h('h2', {}, h('code', { text: topic })), h('span', { class: 'muted', text: `owned by ${owner}` })),
  h('div', { class: 'field' }, h('label', { attrs: { for: ids.subtopic }, text: 'Subtopic' }), subtopic),
  h('div', { class: 'field' }, h('label', { attrs: { for: ids.id }, text: 'Message id (optional)' }), messageId),
  h('div', { class: 'field' }, h('label', { attrs: { for: ids.body }, text: 'Body (JSON)' }), text),
  h('div', { class: 'actions' }, submit),
  out);
  return form;
}

function messageTokenField() {
  const input = h('input', { type: 'password', id: 'send-message-token', autocomplete: 'off', value: tokens.message() });
  input.addEventListener('change', () => tokens.setMessage(input.value.trim()));
  return h('div', { class: 'field token-field' },
    h('label', { attrs: { for: 'send-message-token' }, text: 'Message token (only when the host sets message-token-env; kept for this tab)' }),
    input);
}

async function load() {
  let answer;
  try {
    answer = await getJson('/v1/modules');
  } catch (error) {
    fill(body, h('p', { class: 'notice notice-error', text: `The host did not answer: ${error.message}` }));
    builtFor = null;
    return;
  }
  const commands = [];
  for (const m of answer.modules || []) {
    if (m.status !== 'loaded') continue;
    for (const topic of m.topics || []) commands.push([topic, m.name]);
  }
  commands.sort((a, b) => a[0].localeCompare(b[0]));
  const key = JSON.stringify(commands);
  if (key === builtFor) return;
  builtFor = key;
  fill(body, messageTokenField(),
    commands.length === 0
      ? h('p', { class: 'muted', text: 'No loaded module owns a command topic.' })
      : h('div', { class: 'cards' }, commands.map(([topic, owner]) => topicForm(topic, owner))));
}

export function show() {
  builtFor = null;
  return load();
}
