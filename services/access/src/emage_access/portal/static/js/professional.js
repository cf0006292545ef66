// The professional's pages: studies, shares, share links, break-the-glass.

import { ApiError, getJson, postJson } from './api.js';
import { loadConfig, viewerUrl } from './config.js';
import { field, h, message, replace } from './dom.js';
import { formatDateTime, t } from './i18n.js';
import { errorText, renderLinks, renderShares } from './sharing.js';
import { renderStudies } from './studies.js';

const DURATIONS = [30, 60, 120, 240];

async function renderBreakGlass(container) {
  const config = await loadConfig();
  const study = h('input', { name: 'study', required: true, autocomplete: 'off', pattern: '[0-9.]{1,64}', maxlength: 64 });
  const justification = h('textarea', { name: 'justification', required: true, minlength: 10, maxlength: 2000 });
  const duration = h('select', { name: 'duration' }, DURATIONS.map((n) => h('option', { value: n, selected: n === 60 }, t('bg.minutes', { n }))));
  const status = h('div', { 'aria-live': 'polite' });
  const grants = h('div');

  async function listGrants() {
    const found = (await getJson('/api/v1/break-glass')).grants;
    replace(
      grants,
      h('h2', {}, t('bg.grants')),
      found.length === 0
        ? h('p', {}, t('bg.none'))
        : h(
            'table',
            {},
            h('caption', {}, t('bg.grants')),
            h('thead', {}, h('tr', {}, ['col.study', 'col.opened', 'col.until', 'col.justification', 'col.status', 'col.actions'].map((key) => h('th', { scope: 'col' }, t(key))))),
            h(
              'tbody',
              {},
              found.map((grant) =>
                h(
                  'tr',
                  {},
                  h('td', {}, grant.study_instance_uid),
                  h('td', {}, formatDateTime(grant.opened_at)),
                  h('td', {}, formatDateTime(grant.expires_at)),
                  h('td', {}, grant.justification),
                  h('td', {}, t(grant.in_force ? 'bg.inForce' : 'bg.ended')),
                  h('td', {}, grant.in_force ? h('a', { href: viewerUrl(config, grant.study_instance_uid) }, t('common.openViewer')) : null),
                ),
              ),
            ),
          ),
    );
  }

  async function submit(event) {
    event.preventDefault();
    try {
      const grant = await postJson('/api/v1/break-glass', {
        study_instance_uid: study.value.trim(),
        justification: justification.value,
        duration_minutes: Number(duration.value),
      });
      replace(
        status,
        message('success', t('bg.done', { date: formatDateTime(grant.expires_at) })),
        h('a', { class: 'button primary', href: viewerUrl(config, grant.study_instance_uid) }, t('common.openViewerLabel')),
      );
      await listGrants();
    } catch (error) {
      const text = error instanceof ApiError && error.status === 404 ? t('bg.notFound') : errorText(error);
      replace(status, message('error', text));
    }
  }

  replace(
    container,
    h('h1', {}, t('bg.title')),
    message('warning', t('bg.warning')),
    h(
      'form',
      { class: 'card', onsubmit: submit },
      field(t('bg.study'), study),
      field(t('bg.justification'), justification, t('bg.justificationHint')),
      field(t('bg.duration'), duration),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, t('bg.submit'))),
    ),
    status,
    grants,
  );
  await listGrants();
}

/** The professional's pages, by route. */
export function professionalViews(session) {
  const studiesState = { filters: {}, page: 0 };
  return [
    { route: 'studies', label: 'nav.studies', render: (main) => renderStudies(main, { professional: true, state: studiesState }) },
    { route: 'shares', label: 'nav.shares', render: (main) => renderShares(main, { canRevoke: (share) => share.shared_by === session.claims.sub }) },
    { route: 'links', label: 'nav.links', render: (main) => renderLinks(main) },
    { route: 'break-glass', label: 'nav.breakGlass', render: (main) => renderBreakGlass(main) },
  ];
}
