// The patient's pages: exams, shares, share links, consents and objections, access log, alerts.

import { getJson, postJson, request } from './api.js';
import { field, h, message, replace } from './dom.js';
import { currentLanguage, formatDateTime, t } from './i18n.js';
import { errorText, renderLinks, renderShares } from './sharing.js';
import { renderStudies } from './studies.js';

/** Python's urllib.parse.quote(value, safe=''): how the platform percent-encodes patient-key parts. */
function quote(value) {
  return encodeURIComponent(value).replace(/[!'()*]/g, (char) => `%${char.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** The patient's platform keys, from their token: the INS-based one and the local one (see principal.py). */
export function patientKeys(claims) {
  const keys = [];
  if (claims.ins && claims.ins_oid) keys.push(`ins:${claims.ins_oid}:${claims.ins}`);
  if (claims.patient_id && claims.patient_id_issuer) keys.push(`pid:${quote(claims.patient_id_issuer)}:${quote(claims.patient_id)}`);
  return keys;
}

function grantee(consent) {
  const who = consent.grantee;
  if (!who) return '—';
  if (who.kind === 'professional') return t('grantee.professional', { rpps: who.rpps });
  if (who.kind === 'facility') return t('grantee.facility', { finess: who.finess });
  return t('grantee.share');
}

async function renderConsents(container, session) {
  const status = h('div', { 'aria-live': 'polite' });
  const list = h('div');

  async function act(path, done) {
    try {
      await postJson(path, {});
      await load();
      replace(status, message('success', t(done)));
    } catch (error) {
      replace(status, message('error', errorText(error)));
    }
  }

  /** One consent per key of the patient's record (studies are filed under the INS or the local ID), each
   * with an Idempotency-Key: clicking again after a failure completes what is missing, never doubles it. */
  async function recordForEveryKey(path, body, attempt) {
    for (const key of patientKeys(session.claims)) {
      await postJson(path, { ...body, patient_key: key }, { idempotencyKey: `${attempt}:${key}` });
    }
  }

  let opposeAttempt = crypto.randomUUID();
  async function oppose() {
    try {
      await recordForEveryKey('/api/v1/consents/oppositions', {}, opposeAttempt);
      opposeAttempt = crypto.randomUUID();
      await load();
      replace(status, message('success', t('consents.opposed')));
    } catch (error) {
      replace(status, message('error', errorText(error)));
    }
  }

  const kind = h(
    'select',
    { name: 'grantee-kind' },
    h('option', { value: 'facility' }, t('consents.kindFacility')),
    h('option', { value: 'professional' }, t('consents.kindProfessional')),
  );
  const identifier = h('input', { name: 'grantee-id', required: true, autocomplete: 'off', inputmode: 'numeric' });
  const until = h('input', { name: 'valid-until', type: 'date' });
  let grantAttempt = crypto.randomUUID();
  async function grant(event) {
    event.preventDefault();
    const value = identifier.value.trim();
    const facility = kind.value === 'facility';
    if (!(facility ? /^(?:[0-9]{2}|2[AB])[0-9]{7}$/ : /^[0-9]{11}$/).test(value)) {
      replace(status, message('error', t(facility ? 'consents.badFiness' : 'consents.badRpps')));
      identifier.focus();
      return;
    }
    const body = { grantee: facility ? { kind: 'facility', finess: value } : { kind: 'professional', rpps: value } };
    // The end of the chosen day, where the patient is.
    if (until.value) body.valid_until = new Date(`${until.value}T23:59:59`).toISOString();
    try {
      await recordForEveryKey('/api/v1/consents', body, grantAttempt);
      grantAttempt = crypto.randomUUID();
      identifier.value = '';
      until.value = '';
      await load();
      replace(status, message('success', t('consents.granted')));
    } catch (error) {
      replace(status, message('error', errorText(error)));
    }
  }

  async function load() {
    const { items } = await getJson('/api/v1/consents?limit=200');
    const rows = items.map((consent) => {
      const active = consent.status === 'active' || consent.status === 'scheduled';
      let action = null;
      if (active && consent.provision === 'deny') {
        action = h('button', { type: 'button', onclick: () => act(`/api/v1/consents/oppositions/${consent.consent_id}/lift`, 'consents.lifted') }, t('consents.lift'));
      } else if (active) {
        action = h('button', { type: 'button', class: 'danger', onclick: () => act(`/api/v1/consents/${consent.consent_id}/revoke`, 'consents.revoked') }, t('common.revoke'));
      }
      return h(
        'tr',
        { 'data-consent-id': consent.consent_id },
        h('td', {}, t(consent.provision === 'deny' ? 'consents.deny' : 'consents.permit')),
        h('td', {}, grantee(consent)),
        h('td', {}, consent.study_instance_uid ? t('consents.scopeStudy', { uid: consent.study_instance_uid }) : t('consents.scopeAll')),
        h('td', {}, formatDateTime(consent.recorded_at)),
        h('td', {}, t(`status.${consent.status}`)),
        h('td', {}, action),
      );
    });
    replace(
      list,
      items.length === 0
        ? h('p', {}, t('consents.empty'))
        : h(
            'table',
            { id: 'consents' },
            h('caption', {}, t('consents.title')),
            h('thead', {}, h('tr', {}, ['col.kind', 'col.grantee', 'col.scope', 'col.created', 'col.status', 'col.actions'].map((key) => h('th', { scope: 'col' }, t(key))))),
            h('tbody', {}, rows),
          ),
    );
  }

  replace(
    container,
    h('h1', {}, t('consents.title')),
    h('p', {}, t('consents.intro')),
    h(
      'form',
      { id: 'grant-consent', class: 'card', onsubmit: grant },
      h('h2', {}, t('consents.grantTitle')),
      field(t('consents.kind'), kind),
      field(t('consents.identifier'), identifier, t('consents.identifierHint')),
      field(t('consents.until'), until, t('consents.untilHint')),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, t('consents.grant'))),
    ),
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'danger', onclick: oppose }, t('consents.oppose'))),
    status,
    list,
  );
  await load();
}

async function renderLog(container) {
  const { body } = await request(`/api/v1/audit/me?lang=${currentLanguage()}&limit=100`);
  const rows = body.entries.map((entry) =>
    h(
      'tr',
      {},
      h('td', {}, formatDateTime(entry.time)),
      h('td', {}, [entry.who.name, entry.who.profession, entry.who.facility].filter(Boolean).join(' — ')),
      h('td', {}, entry.text, entry.break_glass ? [' ', h('span', { class: 'badge alert' }, t('log.breakGlass'))] : null),
    ),
  );
  replace(
    container,
    h('h1', {}, t('log.title')),
    h('p', {}, t('log.intro')),
    rows.length === 0
      ? h('p', {}, t('log.empty'))
      : h(
          'table',
          { id: 'access-log' },
          h('caption', {}, t('log.title')),
          h('thead', {}, h('tr', {}, ['col.when', 'col.who', 'col.what'].map((key) => h('th', { scope: 'col' }, t(key))))),
          h('tbody', {}, rows),
        ),
  );
}

async function renderAlerts(container) {
  const { alerts } = await getJson(`/api/v1/audit/alerts?lang=${currentLanguage()}&limit=100`);
  replace(
    container,
    h('h1', {}, t('alerts.title')),
    h('p', {}, t('alerts.intro')),
    alerts.length === 0
      ? h('p', {}, t('alerts.empty'))
      : h(
          'ul',
          { id: 'alerts' },
          alerts.map((alert) =>
            h(
              'li',
              { class: 'card' },
              h('p', {}, h('strong', {}, formatDateTime(alert.first_at)), ' — ', alert.text),
              alert.justification ? h('p', {}, h('strong', {}, t('col.justification')), ' — ', alert.justification) : null,
            ),
          ),
        ),
  );
}

/** The patient's pages, by route. */
export function patientViews(session) {
  const examsState = { filters: {}, page: 0 };
  return [
    { route: 'exams', label: 'nav.exams', render: (main) => renderStudies(main, { professional: false, state: examsState }) },
    { route: 'shares', label: 'nav.shares', render: (main) => renderShares(main, { canRevoke: () => true }) },
    { route: 'links', label: 'nav.links', render: (main) => renderLinks(main) },
    { route: 'consents', label: 'nav.consents', render: (main) => renderConsents(main, session) },
    { route: 'log', label: 'nav.log', render: (main) => renderLog(main) },
    { route: 'alerts', label: 'nav.alerts', render: (main) => renderAlerts(main) },
  ];
}
