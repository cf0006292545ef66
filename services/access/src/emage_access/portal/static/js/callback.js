// /portal/callback: the issuer sends the browser back here with the authorization code.

import { h, replace } from './dom.js';
import { initLanguage, t } from './i18n.js';
import { completeSignIn } from './oidc.js';

initLanguage();
const status = document.getElementById('status');
try {
  const returnTo = await completeSignIn();
  // replace(): the callback URL (with its used code) stays out of the history.
  window.location.replace(returnTo);
} catch (error) {
  replace(
    status,
    h('div', { class: 'message error', role: 'alert' }, t('callback.failed', { detail: error.message })),
    h('a', { href: '/portal/', class: 'button' }, t('common.portal')),
  );
}
