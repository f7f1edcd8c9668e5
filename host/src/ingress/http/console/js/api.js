// The host's /v1 API as the page uses it, and the tokens it sends. Tokens
// live in sessionStorage: this tab only, gone when it closes.

const ADMIN_KEY = 'switchyard.admin-token';
const MESSAGE_KEY = 'switchyard.message-token';

function stored(key) {
  try {
    return sessionStorage.getItem(key) || '';
  } catch {
    return '';
  }
}

function store(key, value) {
  try {
    if (value) sessionStorage.setItem(key, value);
    else sessionStorage.removeItem(key);
  } catch {
    // Storage refused (private mode quotas): the token lasts until reload.
  }
  listeners.forEach((listener) => listener());
}

const listeners = new Set();

/** The tokens of this tab. */
export const tokens = {
  admin: () => stored(ADMIN_KEY),
  setAdmin: (token) => store(ADMIN_KEY, token),
  message: () => stored(MESSAGE_KEY),
  setMessage: (token) => store(MESSAGE_KEY, token),
  /** Calls `listener` whenever a token changes. */
  onChange: (listener) => listeners.add(listener),
};

/**
 * One request. `auth`: 'admin' or 'message' sends that token as a bearer
 * token (when there is one). Resolves to {status, ok, body} whatever the
 * status; body is the parsed JSON, or the text when it is not JSON. Rejects
 * only when the host does not answer.
 */
export async function call(method, path, { body, auth, headers = {} } = {}) {
  const sent = { ...headers };
  const token = auth === 'admin' ? tokens.admin() : auth === 'message' ? tokens.message() : '';
  if (token) sent.Authorization = `Bearer ${token}`;
  if (body !== undefined) sent['Content-Type'] = 'application/json';
  const response = await fetch(path, { method, headers: sent, body, cache: 'no-store' });
  const text = await response.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Not JSON: shown as the text it is.
  }
  if (auth === 'admin' && response.status === 401) tokens.setAdmin('');
  return { status: response.status, ok: response.ok, body: parsed };
}

/** GET of a JSON document that must answer 2xx; throws otherwise. */
export async function getJson(path, options) {
  const result = await call('GET', path, options);
  if (!result.ok) {
    const message = result.body && result.body.error ? result.body.error.message : `HTTP ${result.status}`;
    const error = new Error(message);
    error.result = result;
    throw error;
  }
  return result.body;
}

/** A path segment, encoded. */
export const segment = (text) => encodeURIComponent(text);
