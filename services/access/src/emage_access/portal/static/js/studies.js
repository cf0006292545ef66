// The study list: QIDO-RS through /dicomweb/studies (only the studies the caller may see, counted in
// X-Total-Count), filters for professionals, paging, and each study's actions.

import { searchStudies } from './api.js';
import { loadConfig, viewerUrl } from './config.js';
import { field, h, message, replace } from './dom.js';
import { formatDicomDate, plural, t } from './i18n.js';
import { errorText, openLinkDialog, openShareDialog, studyLabel } from './sharing.js';

export const PAGE_SIZE = 25;
const MODALITIES = ['CR', 'CT', 'DX', 'MG', 'MR', 'NM', 'PT', 'US', 'XA'];

/** A DICOM person name (FAMILY^Given^Middle^Prefix^Suffix) as people write it: "FAMILY, Given Middle". */
export function personName(value) {
  if (!value) return '—';
  const [family, ...others] = value.split('^');
  const rest = others.filter(Boolean).join(' ');
  return rest ? `${family}, ${rest}` : family;
}

/** QIDO-RS matching keys of the filter form's values. */
export function qidoFilters(values) {
  const pairs = [];
  if (values.patientName) pairs.push(['PatientName', `*${values.patientName.replace(/[*?\\]/g, '')}*`]);
  if (values.patientId) pairs.push(['PatientID', values.patientId.replace(/[*?\\]/g, '')]);
  if (values.from || values.to) {
    const day = (value) => (value ? value.replaceAll('-', '') : '');
    pairs.push(['StudyDate', `${day(values.from)}-${day(values.to)}`]);
  }
  if (values.modality) pairs.push(['ModalitiesInStudy', values.modality]);
  if (values.accession) pairs.push(['AccessionNumber', values.accession.replace(/[*?\\]/g, '')]);
  return pairs;
}

/**
 * Render the study list into `container`: `professional` adds the filters and the patient columns.
 * `state` (filters and page) survives re-renders, e.g. a language change.
 */
export async function renderStudies(container, { professional, state }) {
  const config = await loadConfig();
  const results = h('div', { 'aria-live': 'polite' });
  const children = [h('h1', {}, t(professional ? 'studies.title' : 'exams.title'))];
  if (professional) children.push(filterForm(state, () => load(0)));
  children.push(results);
  replace(container, ...children);

  async function load(page) {
    state.page = page;
    replace(results, h('p', {}, t('common.loading')));
    try {
      const pairs = [...qidoFilters(state.filters), ['limit', String(PAGE_SIZE)], ['offset', String(page * PAGE_SIZE)]];
      const { studies, total } = await searchStudies(pairs);
      replace(results, ...resultView(config, studies, total, page, professional, load));
    } catch (error) {
      replace(results, message('error', errorText(error)));
    }
  }
  await load(state.page || 0);
}

function filterForm(state, search) {
  const values = state.filters;
  const input = (name, attributes = {}) => h('input', { name, value: values[name] || '', ...attributes });
  const modality = h(
    'select',
    { name: 'modality' },
    h('option', { value: '' }, t('studies.anyModality')),
    MODALITIES.map((code) => h('option', { value: code, selected: values.modality === code }, code)),
  );
  const form = h(
    'form',
    { class: 'filters card', role: 'search', 'aria-label': t('studies.filters') },
    field(t('studies.patientName'), input('patientName', { type: 'search', autocomplete: 'off' })),
    field(t('studies.patientId'), input('patientId', { type: 'search', autocomplete: 'off' })),
    field(t('studies.from'), input('from', { type: 'date' })),
    field(t('studies.to'), input('to', { type: 'date' })),
    field(t('studies.modality'), modality),
    field(t('studies.accession'), input('accession', { type: 'search', autocomplete: 'off', maxlength: 16 })),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', class: 'primary' }, t('studies.search')),
      h('button', { type: 'reset' }, t('studies.reset')),
    ),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    state.filters = Object.fromEntries(new FormData(form).entries());
    search();
  });
  form.addEventListener('reset', () => {
    state.filters = {};
    setTimeout(search, 0);
  });
  return form;
}

function resultView(config, studies, total, page, professional, load) {
  if (total === 0) return [h('p', {}, professional ? plural('studies.count', 0) : t('exams.empty'))];
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  const columns = professional
    ? ['col.date', 'col.patient', 'col.patientId', 'col.modalities', 'col.description', 'col.accession', 'col.actions']
    : ['col.date', 'col.modalities', 'col.description', 'col.actions'];
  const rows = studies.map((study) => {
    const label = studyLabel(study);
    const cells = [h('td', {}, formatDicomDate(study.studyDate))];
    if (professional) cells.push(h('td', {}, personName(study.patientName)), h('td', {}, study.patientId || '—'));
    cells.push(h('td', {}, study.modalities || '—'), h('td', {}, study.description || '—'));
    if (professional) cells.push(h('td', {}, study.accession || '—'));
    cells.push(
      h(
        'td',
        {},
        h(
          'div',
          { class: 'actions' },
          h('a', { class: 'button', href: viewerUrl(config, study.studyUid), 'aria-label': `${t('common.openViewerLabel')} — ${label}` }, t('common.openViewer')),
        h('button', { type: 'button', 'aria-label': `${t('actions.shareLabel')} — ${label}`, onclick: () => openShareDialog(study) }, t('actions.share')),
          h('button', { type: 'button', 'aria-label': `${t('actions.linkLabel')} — ${label}`, onclick: () => openLinkDialog(study) }, t('actions.link')),
        ),
      ),
    );
    return h('tr', { 'data-study-uid': study.studyUid }, cells);
  });
  return [
    h('p', { id: 'study-count' }, plural('studies.count', total)),
    h(
      'table',
      { id: 'studies' },
      h('caption', {}, t('studies.caption')),
      h('thead', {}, h('tr', {}, columns.map((key) => h('th', { scope: 'col' }, t(key))))),
      h('tbody', {}, rows),
    ),
    pages > 1
      ? h(
          'div',
          { class: 'pager' },
          h('button', { type: 'button', disabled: page === 0, onclick: () => load(page - 1) }, t('common.previous')),
          h('span', {}, t('common.page', { page: page + 1, pages })),
          h('button', { type: 'button', disabled: page + 1 >= pages, onclick: () => load(page + 1) }, t('common.next')),
        )
      : null,
  ];
}
