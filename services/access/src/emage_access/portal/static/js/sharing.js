// Sharing, common to professionals and patients: the share dialog (find a professional, choose an expiry),
// the share-link dialog (expiry, maximum opens, second factor; the link shown once with its QR code), and
// the lists of shares and links with their revocation.

import { ApiError, getJson, postJson, remove } from './api.js';
import { field, h, message, replace } from './dom.js';
import { formatDateTime, formatDicomDate, t } from './i18n.js';

const DAY_MS = 24 * 3600 * 1000;

/** A short description of a study for dialogs: "CT — 1 nov. 2026". */
export function studyLabel(study) {
  return [study.description || study.modalities, formatDicomDate(study.studyDate)].filter(Boolean).join(' — ');
}

function dateInputValue(offsetDays) {
  return new Date(Date.now() + offsetDays * DAY_MS).toISOString().slice(0, 10);
}

/** The end of the chosen day (local time), as an ISO instant with its offset. */
function endOfDay(dateValue) {
  return new Date(`${dateValue}T23:59:00`).toISOString();
}

export function errorText(error) {
  if (error instanceof ApiError) {
    if (error.status === 404) return t('common.notFound');
    if (error.status >= 500) return t('common.unavailable');
    return t('common.error', { detail: error.detail || error.status });
  }
  return t('common.error', { detail: error.message });
}

function openDialog(title, ...content) {
  const dialog = document.getElementById('dialog');
  replace(
    dialog,
    h('h2', { id: 'dialog-title' }, title),
    ...content,
    h('div', { class: 'actions' }, h('button', { type: 'button', onclick: () => dialog.close() }, t('common.close'))),
  );
  dialog.setAttribute('aria-labelledby', 'dialog-title');
  dialog.showModal();
  return dialog;
}

export function professionalName(professional) {
  const role = professional.role ? t(`role.${professional.role}`) : null;
  return [professional.name || t('share.byRpps', { rpps: professional.rpps }), role, professional.facility_name]
    .filter(Boolean)
    .join(' — ');
}

/** The dialog sharing `study` with a professional found by name or RPPS. */
export function openShareDialog(study, onDone) {
  let chosen = null;
  const query = h('input', { type: 'search', name: 'q', autocomplete: 'off', maxlength: 100 });
  const results = h('ul', { class: 'results', 'aria-label': t('share.results') });
  const selected = h('p', { 'aria-live': 'polite' });
  const until = h('input', { type: 'date', name: 'expires', required: true, value: dateInputValue(30), min: dateInputValue(1) });
  const status = h('div', { 'aria-live': 'polite' });

  function choose(professional, button) {
    chosen = professional;
    for (const other of results.querySelectorAll('button')) other.setAttribute('aria-pressed', 'false');
    if (button) button.setAttribute('aria-pressed', 'true');
    replace(selected, t('share.selected', { name: professionalName(professional) }));
  }

  async function find(event) {
    event.preventDefault();
    const text = query.value.trim();
    replace(results);
    try {
      const found = (await getJson(`/api/v1/professionals?q=${encodeURIComponent(text)}`)).professionals;
      if (found.length === 0 && /^\d{11}$/.test(text)) found.push({ rpps: text, name: null, role: null });
      if (found.length === 0) {
        replace(results, h('li', {}, t('share.noResult')));
        return;
      }
      for (const professional of found) {
        const button = h('button', { type: 'button', 'aria-pressed': 'false' }, professionalName(professional));
        button.addEventListener('click', () => choose(professional, button));
        results.append(h('li', {}, button));
      }
    } catch (error) {
      replace(status, message('error', errorText(error)));
    }
  }

  async function submit(event) {
    event.preventDefault();
    if (!chosen) {
      replace(status, message('error', t('share.pickFirst')));
      return;
    }
    try {
      const share = await postJson('/api/v1/shares', {
        study_instance_uid: study.studyUid,
        grantee_rpps: chosen.rpps,
        expires_at: endOfDay(until.value),
      });
      replace(status, message('success', t('share.done', { name: professionalName(chosen), date: formatDateTime(share.expires_at) })));
      if (onDone) onDone();
    } catch (error) {
      replace(status, message('error', errorText(error)));
    }
  }

  const searchForm = h(
    'form',
    { onsubmit: find, role: 'search' },
    field(t('share.search'), query, t('share.searchHint')),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, t('share.find'))),
  );
  const shareForm = h(
    'form',
    { onsubmit: submit },
    results,
    selected,
    field(t('share.until'), until),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, t('share.submit'))),
  );
  openDialog(t('share.title'), h('p', {}, t('share.study', { study: studyLabel(study) })), searchForm, shareForm, status);
  query.focus();
}

/** The dialog creating a share link to `study`; the link, its QR code and its code are shown this once. */
export function openLinkDialog(study, onDone) {
  const expires = h('input', { type: 'date', name: 'expires', required: true, value: dateInputValue(7), min: dateInputValue(1) });
  const maxUses = h('input', { type: 'number', name: 'max_uses', min: 1, max: 10000, inputmode: 'numeric' });
  const factor = h(
    'select',
    { name: 'second_factor' },
    ['birth_date', 'one_time_code', 'none'].map((value) => h('option', { value }, t(`link.factor.${value}`))),
  );
  const status = h('div', { 'aria-live': 'polite' });

  async function submit(event) {
    event.preventDefault();
    try {
      const created = await postJson('/api/v1/share-links', {
        study_instance_uid: study.studyUid,
        expires_at: endOfDay(expires.value),
        max_uses: maxUses.value ? Number(maxUses.value) : null,
        second_factor: factor.value,
      });
      form.hidden = true;
      showCreatedLink(status, created);
      if (onDone) onDone();
    } catch (error) {
      replace(status, message('error', errorText(error)));
    }
  }

  const form = h(
    'form',
    { onsubmit: submit },
    field(t('link.expires'), expires),
    field(t('link.maxUses'), maxUses, t('link.maxUsesHint')),
    field(t('link.factor'), factor),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, t('link.submit'))),
  );
  openDialog(t('link.title'), h('p', {}, t('share.study', { study: studyLabel(study) })), form, status);
  expires.focus();
}

function showCreatedLink(status, created) {
  const url = new URL(created.url, window.location.origin).toString();
  const copied = h('span', { 'aria-live': 'polite' });
  replace(
    status,
    message('success', t('link.created')),
    h(
      'div',
      { class: 'qr' },
      h('img', { src: created.qr_code, alt: t('link.qrAlt'), id: 'link-qr' }),
      h(
        'div',
        {},
        h('p', {}, h('strong', {}, t('link.url'))),
        h('p', { class: 'secret-url', id: 'link-url' }, url),
        h(
          'div',
          { class: 'actions' },
          h('button', {
            type: 'button',
            onclick: async () => {
              await navigator.clipboard.writeText(url);
              replace(copied, t('common.copied'));
            },
          }, t('common.copy')),
          copied,
        ),
        created.one_time_code
          ? [h('p', {}, h('strong', {}, t('link.code'))), h('p', { class: 'code', id: 'link-code' }, created.one_time_code)]
          : null,
      ),
    ),
  );
}

function statusText(value) {
  return t(`status.${value}`);
}

function table(captionKey, columns, rows) {
  return h(
    'table',
    {},
    h('caption', {}, t(captionKey)),
    h('thead', {}, h('tr', {}, columns.map((key) => h('th', { scope: 'col' }, t(key))))),
    h('tbody', {}, rows),
  );
}

/** The shares the caller made, received, or that concern their record; revocable ones with a button. */
export async function renderShares(container, { canRevoke }) {
  const { shares } = await getJson('/api/v1/shares');
  const status = h('div', { 'aria-live': 'polite' });
  const names = await grantees(shares.map((share) => share.grantee_rpps));
  const rows = shares.map((share) =>
    h(
      'tr',
      { 'data-share-id': share.share_id },
      h('td', {}, share.all_studies ? t('shares.all') : share.study_instance_uid),
      h('td', {}, names.get(share.grantee_rpps) || t('share.byRpps', { rpps: share.grantee_rpps })),
      h('td', {}, formatDateTime(share.expires_at)),
      h('td', {}, statusText(share.status)),
      h(
        'td',
        {},
        share.status === 'active' && canRevoke(share)
          ? revokeButton({
              path: `/api/v1/shares/${encodeURIComponent(share.share_id)}`,
              label: `${t('common.revoke')} — ${names.get(share.grantee_rpps) || share.grantee_rpps}`,
              redraw: () => renderShares(container, { canRevoke }),
              container,
              status,
              revoked: 'shares.revoked',
            })
          : null,
      ),
    ),
  );
  replace(
    container,
    h('h1', {}, t('shares.title')),
    status,
    shares.length === 0 ? h('p', {}, t('shares.empty')) : table('shares.title', ['col.study', 'col.grantee', 'col.until', 'col.status', 'col.actions'], rows),
  );
}

/**
 * A button that deletes `path`, then draws the list again (`redraw`) with the `revoked` message above it in
 * `container`; a failure is shown in `status`. `label`, when given, is its accessible name.
 */
function revokeButton({ path, label, redraw, container, status, revoked }) {
  return h('button', {
    type: 'button',
    class: 'danger',
    'aria-label': label,
    onclick: async () => {
      try {
        await remove(path);
        await redraw();
        container.prepend(message('success', t(revoked)));
      } catch (error) {
        replace(status, message('error', errorText(error)));
      }
    },
  }, t('common.revoke'));
}

/** Names of the professionals with these RPPS numbers, from the directory (best effort). */
async function grantees(rppsNumbers) {
  const names = new Map();
  await Promise.all(
    [...new Set(rppsNumbers)].map(async (rpps) => {
      try {
        const [found] = (await getJson(`/api/v1/professionals?q=${rpps}&limit=1`)).professionals;
        if (found && found.rpps === rpps) names.set(rpps, professionalName(found));
      } catch (error) {
        // the RPPS number alone is shown
      }
    }),
  );
  return names;
}

/** The share links the caller made or that concern their record, with their revocation. */
export async function renderLinks(container) {
  const { links } = await getJson('/api/v1/share-links');
  const status = h('div', { 'aria-live': 'polite' });
  const rows = links.map((link) =>
    h(
      'tr',
      { 'data-link-id': link.link_id },
      h('td', {}, link.study_instance_uid),
      h('td', {}, formatDateTime(link.created_at)),
      h('td', {}, formatDateTime(link.expires_at)),
      h('td', {}, link.max_uses ? `${link.uses} / ${link.max_uses}` : t('links.unlimited', { uses: link.uses })),
      h('td', {}, t(`link.factor.${link.second_factor}`)),
      h('td', {}, statusText(link.status)),
      h(
        'td',
        {},
        link.status === 'active' || link.status === 'locked'
          ? revokeButton({
              path: `/api/v1/share-links/${encodeURIComponent(link.link_id)}`,
              redraw: () => renderLinks(container),
              container,
              status,
              revoked: 'links.revoked',
            })
          : null,
      ),
    ),
  );
  replace(
    container,
    h('h1', {}, t('links.title')),
    status,
    links.length === 0
      ? h('p', {}, t('links.empty'))
      : table('links.title', ['col.study', 'col.created', 'col.until', 'col.uses', 'col.factor', 'col.status', 'col.actions'], rows),
  );
}
