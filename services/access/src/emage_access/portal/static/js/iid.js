// IHE IID landing (/iid?requestType=…): sign the professional in, find the studies, open the viewer.
//
// The gateway checked the launch's parameters and put the QIDO-RS search in <meta name="emage-iid-plan">.
// The search runs with the professional's own token, so the access policy applies: a study they may not
// see is not found, exactly like an unknown one ("aucun examen").

import { searchStudies } from './api.js';
import { loadConfig, viewerUrl } from './config.js';
import { personName } from './studies.js';
import { h, message, replace } from './dom.js';
import { formatDicomDate, initLanguage, onLanguageChange, t } from './i18n.js';
import { SignInRequired, currentSession, signIn } from './oidc.js';

const status = document.getElementById('status');
const plan = JSON.parse(document.querySelector('meta[name="emage-iid-plan"]').content);
let render = () => {};

function here() {
  return `${window.location.pathname}${window.location.search}`;
}

function showNone() {
  render = () => {
    document.title = `${t('iid.none')} — e-mage`;
    replace(
      status,
      h('h2', {}, t('iid.none')),
      h('p', {}, t('iid.noneText')),
      h('a', { href: '/portal/', class: 'button' }, t('common.portal')),
    );
  };
  render();
}

function showList(config, studies) {
  const uids = studies.map((study) => study.studyUid);
  render = () => {
    replace(
      status,
      h('p', {}, t('iid.several', { n: studies.length })),
      h('p', {}, h('a', { class: 'button primary', href: viewerUrl(config, uids) }, t('iid.openAll', { n: studies.length }))),
      h(
        'table',
        {},
        h('caption', {}, t('studies.caption')),
        h(
          'thead',
          {},
          h('tr', {}, ['col.date', 'col.patient', 'col.modalities', 'col.description', 'col.actions'].map((key) => h('th', { scope: 'col' }, t(key)))),
        ),
        h(
          'tbody',
          {},
          studies.map((study) =>
            h(
              'tr',
              {},
              h('td', {}, formatDicomDate(study.studyDate)),
              h('td', {}, personName(study.patientName)),
              h('td', {}, study.modalities || '—'),
              h('td', {}, study.description || '—'),
              h('td', {}, h('a', { href: viewerUrl(config, study.studyUid), 'aria-label': `${t('common.openViewerLabel')} — ${formatDicomDate(study.studyDate)}` }, t('common.openViewer'))),
            ),
          ),
        ),
      ),
    );
  };
  render();
}

async function launch() {
  const session = currentSession();
  if (!session || session.kind !== 'professional') {
    replace(status, message('', t('iid.signingIn')));
    await signIn('professional', here());
    return;
  }
  replace(status, message('', t('iid.searching')));
  const config = await loadConfig();
  const { studies } = await searchStudies([...plan.query, ['limit', String(plan.limit)]]);
  if (studies.length === 0) {
    showNone();
  } else if (studies.length === 1 || plan.requestType === 'STUDY') {
    // A STUDY request names the studies to display: all of them open together (most recent first).
    replace(status, message('', t('iid.opening')));
    window.location.replace(viewerUrl(config, studies.map((study) => study.studyUid)));
  } else {
    showList(config, studies);
  }
}

initLanguage();
onLanguageChange(() => render());
try {
  await launch();
} catch (error) {
  if (error instanceof SignInRequired) {
    await signIn('professional', here());
  } else {
    replace(status, message('error', t('common.error', { detail: error.message })));
  }
}
