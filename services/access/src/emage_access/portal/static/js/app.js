// The portal's home (/portal/): the sign-in choice, then the professional's or the patient's pages.
//
// Pages are routes of the URL fragment (#/studies, #/exams…); other fragments (the skip link's #main) are
// left to the browser.

import { h, message, replace } from './dom.js';
import { initLanguage, onLanguageChange, t } from './i18n.js';
import { SignInRequired, currentSession, signIn, signOut } from './oidc.js';
import { patientViews } from './patient.js';
import { professionalViews } from './professional.js';
import { errorText } from './sharing.js';

const main = document.getElementById('main');
const tabs = document.getElementById('tabs');

function renderLogin() {
  document.title = t('app.title');
  const choice = (kind) =>
    h(
      'section',
      { class: 'card choice', 'aria-labelledby': `choice-${kind}` },
      h('h2', { id: `choice-${kind}` }, t(`login.${kind}.title`)),
      h('p', {}, t(`login.${kind}.text`)),
      h('button', { type: 'button', class: 'primary', id: `sign-in-${kind}`, onclick: () => signIn(kind, '/portal/') }, t(`login.${kind}.button`)),
    );
  replace(main, h('h1', {}, t('login.title')), h('p', {}, t('login.intro')), h('div', { class: 'choices' }, choice('professional'), choice('patient')));
}

function signedIn(session) {
  const views = session.kind === 'patient' ? patientViews(session) : professionalViews(session);
  const who = document.getElementById('who');
  const signOutButton = document.getElementById('sign-out');
  who.hidden = false;
  signOutButton.hidden = false;
  signOutButton.addEventListener('click', () => signOut());
  tabs.hidden = false;

  function current() {
    const route = window.location.hash.startsWith('#/') ? window.location.hash.slice(2) : '';
    return views.find((view) => view.route === route) || views[0];
  }

  function renderTabs(active) {
    who.textContent = t('common.signedInAs', { name: session.claims.name || session.claims.preferred_username || '' });
    replace(
      tabs.querySelector('ul'),
      views.map((view) =>
        h('li', {}, h('a', { href: `#/${view.route}`, 'aria-current': view === active ? 'page' : null }, t(view.label))),
      ),
    );
  }

  async function route() {
    const view = current();
    renderTabs(view);
    document.title = `${t(view.label)} — e-mage`;
    // Each navigation renders into a container of its own: a page still loading when the user moves on
    // finishes into a detached node instead of over the page now shown.
    const page = h('div');
    replace(main, page);
    try {
      await view.render(page);
    } catch (error) {
      if (!page.isConnected) return;
      if (error instanceof SignInRequired) {
        replace(page, message('', t('callback.title')));
        await signIn(session.kind, `/portal/${window.location.hash}`);
        return;
      }
      replace(page, message('error', errorText(error)));
    }
  }

  window.addEventListener('hashchange', () => {
    if (window.location.hash.startsWith('#/')) {
      route().then(() => main.focus());
    }
  });
  onLanguageChange(() => route());
  route();
}

initLanguage();
const session = currentSession();
if (session) {
  signedIn(session);
} else {
  renderLogin();
  onLanguageChange(renderLogin);
}
