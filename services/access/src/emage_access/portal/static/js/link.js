// /portal/link#<secret>: open a share link. The secret is in the URL fragment, which browsers never send
// to a server; it goes only to the gateway's /api/v1/share-links/open, in the request body.
//
// On success the short-lived link session is handed to the viewer through sessionStorage under
// `emage.linkSession` ({token, studyInstanceUid, expiresAt}) and the viewer opens the study read-only.

import { loadConfig, viewerUrl } from './config.js';
import { message, replace } from './dom.js';
import { initLanguage, onLanguageChange, t } from './i18n.js';

export const LINK_SESSION_KEY = 'emage.linkSession';

const secret = decodeURIComponent(window.location.hash.slice(1));
const form = document.getElementById('open-form');
const status = document.getElementById('status');
const birthField = document.getElementById('birth-field');
const codeField = document.getElementById('code-field');
let lastMessage = null;

function show(kind, key) {
  lastMessage = [kind, key];
  replace(status, message(kind, t(key)));
}

function chosenFactor() {
  return form.querySelector('input[name="factor"]:checked').value;
}

function syncFields() {
  const factor = chosenFactor();
  birthField.hidden = factor !== 'birth_date';
  codeField.hidden = factor !== 'one_time_code';
}

async function open(event) {
  event.preventDefault();
  const body = { secret };
  const factor = chosenFactor();
  if (factor === 'birth_date') body.birth_date = document.getElementById('birth-date').value;
  if (factor === 'one_time_code') body.one_time_code = document.getElementById('one-time-code').value.trim();
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  show('', 'linkpage.opening');
  try {
    const response = await fetch('/api/v1/share-links/open', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body),
    });
    if (response.ok) {
      const session = await response.json();
      sessionStorage.setItem(
        LINK_SESSION_KEY,
        JSON.stringify({
          token: session.access_token,
          studyInstanceUid: session.study_instance_uid,
          expiresAt: new Date(Date.now() + session.expires_in * 1000).toISOString(),
        }),
      );
      window.location.assign(viewerUrl(await loadConfig(), session.study_instance_uid));
      return;
    }
    // Every refusal answers alike (403; 422 for a malformed factor): one message says what to check.
    show('error', response.status >= 500 ? 'common.unavailable' : 'linkpage.refused');
  } catch (error) {
    show('error', 'common.unavailable');
  } finally {
    button.disabled = false;
  }
}

initLanguage();
onLanguageChange(() => {
  if (lastMessage) show(...lastMessage);
});
if (!secret) {
  form.hidden = true;
  show('error', 'linkpage.missing');
} else {
  for (const radio of form.querySelectorAll('input[name="factor"]')) radio.addEventListener('change', syncFields);
  form.addEventListener('submit', open);
  syncFields();
}
