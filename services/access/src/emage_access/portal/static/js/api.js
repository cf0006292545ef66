// Calls to the gateway (/api/v1 and /dicomweb) with the signed-in user's access token.

import { SignInRequired, accessToken } from './oidc.js';

/** An answer the gateway refused: `status` and the problem's `detail` (RFC 9457). */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

async function send(path, options, token) {
  const headers = { Accept: options.accept || 'application/json', Authorization: `Bearer ${token}` };
  // A creation the client may retry after losing the answer: the server records it once (consents).
  if (options.idempotencyKey) headers['Idempotency-Key'] = options.idempotencyKey;
  let body;
  if (options.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(options.body);
  }
  return fetch(path, { method: options.method || 'GET', headers, body });
}

async function problemDetail(response) {
  try {
    const problem = await response.json();
    if (typeof problem.detail === 'string') return problem.detail;
    if (Array.isArray(problem.detail)) return problem.detail.map((item) => item.msg).join(' ; ');
  } catch (error) {
    // not JSON: the status says enough
  }
  return null;
}

/** Call the gateway; the JSON answer (null for 204). A 401 refreshes the token once, then asks to sign in. */
export async function request(path, options = {}) {
  let response = await send(path, options, await accessToken());
  if (response.status === 401) {
    response = await send(path, options, await accessToken({ forceRefresh: true }));
    if (response.status === 401) throw new SignInRequired('token refused');
  }
  if (!response.ok) throw new ApiError(response.status, await problemDetail(response));
  if (response.status === 204) return { body: null, headers: response.headers };
  return { body: await response.json(), headers: response.headers };
}

export async function getJson(path) {
  return (await request(path)).body;
}

export async function postJson(path, body, { idempotencyKey } = {}) {
  return (await request(path, { method: 'POST', body, idempotencyKey })).body;
}

export async function remove(path) {
  await request(path, { method: 'DELETE' });
}

// --- QIDO-RS -------------------------------------------------------------------------------------------

const TAGS = {
  studyUid: '0020000D',
  studyDate: '00080020',
  studyTime: '00080030',
  accession: '00080050',
  modalities: '00080061',
  description: '00081030',
  patientName: '00100010',
  patientId: '00100020',
  patientBirthDate: '00100030',
  instances: '00201208',
};

function value(dataset, tag) {
  const element = dataset[tag];
  if (!element || !Array.isArray(element.Value) || element.Value.length === 0) return null;
  const first = element.Value[0];
  if (first && typeof first === 'object' && 'Alphabetic' in first) return first.Alphabetic;
  return element.Value.length > 1 ? element.Value.join(', ') : first;
}

/** A QIDO-RS study (DICOM JSON model) as the portal shows it. */
export function studyOf(dataset) {
  return Object.fromEntries(Object.entries(TAGS).map(([name, tag]) => [name, value(dataset, tag)]));
}

/** Search studies the caller may see: `{ studies, total }`, total from X-Total-Count. */
export async function searchStudies(pairs) {
  const query = new URLSearchParams(pairs);
  query.append('includefield', 'StudyDescription');
  const { body, headers } = await request(`/dicomweb/studies?${query}`, { accept: 'application/dicom+json' });
  const studies = (body || []).map(studyOf);
  const total = Number(headers.get('X-Total-Count') ?? studies.length);
  return { studies, total };
}
