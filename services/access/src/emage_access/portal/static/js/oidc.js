// OpenID Connect sign-in for a public browser client: authorization code flow with PKCE (RFC 7636, S256).
//
// Why by hand: a few dozen lines of standard flow keep the portal free of a bundler and of a third-party
// library in the page that holds the tokens. What it does:
//   - signIn(kind, returnTo): a fresh code verifier, state and nonce, kept in sessionStorage for the
//     round trip, then the issuer's authorization endpoint;
//   - completeSignIn(): on /portal/callback, checks the state, redeems the code with the verifier, checks
//     the ID token's nonce, issuer and audience, and keeps the tokens in sessionStorage only (gone with the
//     tab; never in localStorage or a cookie);
//   - accessToken(): the access token, refreshed with the refresh token shortly before it expires;
//   - signOut(): forgets the tokens and ends the issuer session (end_session_endpoint).
// The tokens' signatures are not checked here: they come straight from the issuer's token endpoint over
// the page's own connection, and the gateway verifies every access token it is sent.

import { loadConfig } from './config.js';
import { currentLanguage } from './i18n.js';

const SESSION_KEY = 'emage.oidc.session';
const PENDING_KEY = 'emage.oidc.pending';
const CALLBACK_PATH = '/portal/callback';
const EXPIRY_MARGIN_MS = 30_000;

let discovered = null;

export class SignInRequired extends Error {}

async function discovery() {
  if (discovered === null) {
    const config = await loadConfig();
    const response = await fetch(`${config.issuer}/.well-known/openid-configuration`);
    if (!response.ok) throw new Error(`OIDC discovery failed: ${response.status}`);
    discovered = await response.json();
  }
  return discovered;
}

function base64url(bytes) {
  let binary = '';
  for (const byte of new Uint8Array(bytes)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function randomString(size = 32) {
  return base64url(crypto.getRandomValues(new Uint8Array(size)));
}

async function s256(verifier) {
  return base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
}

/** The claims of a JWT's payload (no signature check: see the header comment). */
export function jwtClaims(token) {
  const payload = token.split('.')[1] || '';
  const padded = payload.replace(/-/g, '+').replace(/_/g, '/');
  const json = decodeURIComponent(
    Array.from(atob(padded), (char) => `%${char.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''),
  );
  return JSON.parse(json);
}

/** A path of this origin to come back to, never another site (an open redirect would leak the code). */
export function safeReturnPath(path) {
  return typeof path === 'string' && path.startsWith('/') && !path.startsWith('//') ? path : '/portal/';
}

function redirectUri() {
  return `${window.location.origin}${CALLBACK_PATH}`;
}

/** Go to the issuer's sign-in page as a professional (`professional`) or a patient (`patient`). */
export async function signIn(kind, returnTo) {
  const [config, endpoints] = await Promise.all([loadConfig(), discovery()]);
  const clientId = config.clients[kind];
  if (!clientId) throw new Error(`unknown kind of user: ${kind}`);
  const pending = {
    kind,
    clientId,
    state: randomString(),
    nonce: randomString(),
    verifier: randomString(48),
    returnTo: safeReturnPath(returnTo),
  };
  sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
  const url = new URL(endpoints.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: redirectUri(),
    scope: config.scope,
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: await s256(pending.verifier),
    code_challenge_method: 'S256',
    ui_locales: currentLanguage(),
  }).toString();
  window.location.assign(url.toString());
}

async function tokenRequest(parameters) {
  const endpoints = await discovery();
  const response = await fetch(endpoints.token_endpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(parameters),
  });
  if (!response.ok) throw new SignInRequired(`token endpoint answered ${response.status}`);
  return response.json();
}

function store(kind, clientId, tokens, idToken) {
  const session = {
    kind,
    clientId,
    accessToken: tokens.access_token,
    refreshToken: tokens.refresh_token || null,
    idToken: idToken || null,
    expiresAt: Date.now() + Number(tokens.expires_in || 60) * 1000,
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  return session;
}

/** Finish the sign-in on the callback page; answers the path to go back to. */
export async function completeSignIn() {
  const params = new URLSearchParams(window.location.search);
  const pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) || 'null');
  sessionStorage.removeItem(PENDING_KEY);
  if (params.get('error')) throw new SignInRequired(params.get('error_description') || params.get('error'));
  if (!pending || !params.get('state') || params.get('state') !== pending.state) {
    throw new SignInRequired('state mismatch');
  }
  const tokens = await tokenRequest({
    grant_type: 'authorization_code',
    code: params.get('code') || '',
    redirect_uri: redirectUri(),
    client_id: pending.clientId,
    code_verifier: pending.verifier,
  });
  const config = await loadConfig();
  const idClaims = tokens.id_token ? jwtClaims(tokens.id_token) : null;
  const audiences = idClaims ? [].concat(idClaims.aud) : [];
  if (!idClaims || idClaims.nonce !== pending.nonce || idClaims.iss !== config.issuer || !audiences.includes(pending.clientId)) {
    throw new SignInRequired('ID token does not match this sign-in');
  }
  store(pending.kind, pending.clientId, tokens, tokens.id_token);
  return pending.returnTo;
}

/** The signed-in session (`kind`, claims of the access token), or null. */
export function currentSession() {
  const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
  if (!session || !session.accessToken) return null;
  return { kind: session.kind, claims: jwtClaims(session.accessToken) };
}

/** A valid access token, refreshed when close to expiry; throws SignInRequired when none can be had. */
export async function accessToken({ forceRefresh = false } = {}) {
  const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
  if (!session) throw new SignInRequired('not signed in');
  if (!forceRefresh && session.expiresAt - EXPIRY_MARGIN_MS > Date.now()) return session.accessToken;
  if (!session.refreshToken) {
    sessionStorage.removeItem(SESSION_KEY);
    throw new SignInRequired('session expired');
  }
  try {
    const tokens = await tokenRequest({
      grant_type: 'refresh_token',
      refresh_token: session.refreshToken,
      client_id: session.clientId,
    });
    return store(session.kind, session.clientId, tokens, tokens.id_token || session.idToken).accessToken;
  } catch (error) {
    sessionStorage.removeItem(SESSION_KEY);
    throw new SignInRequired('session expired');
  }
}

/** Forget the tokens and end the issuer's session, coming back to the portal's home. */
export async function signOut() {
  const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
  sessionStorage.removeItem(SESSION_KEY);
  const endpoints = await discovery();
  if (!endpoints.end_session_endpoint || !session) {
    window.location.assign('/portal/');
    return;
  }
  const url = new URL(endpoints.end_session_endpoint);
  url.search = new URLSearchParams({
    client_id: session.clientId,
    post_logout_redirect_uri: `${window.location.origin}/portal/`,
    ...(session.idToken ? { id_token_hint: session.idToken } : {}),
  }).toString();
  window.location.assign(url.toString());
}
