// The portal's configuration, served by the gateway from its settings (/portal/config.json).

let loaded = null;

/** The issuer, the OIDC clients and the paths of the platform's parts (fetched once per page). */
export function loadConfig() {
  if (loaded === null) {
    loaded = fetch('/portal/config.json', { headers: { Accept: 'application/json' } }).then((response) => {
      if (!response.ok) throw new Error(`portal configuration unavailable: ${response.status}`);
      return response.json();
    });
  }
  return loaded;
}

/** The viewer URL that opens these studies. */
export function viewerUrl(config, studyUids) {
  const uids = Array.isArray(studyUids) ? studyUids : [studyUids];
  return `${config.viewerPath}?StudyInstanceUIDs=${uids.map(encodeURIComponent).join(',')}`;
}
