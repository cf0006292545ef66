// French first, English available: every string the portal shows, the language switch, dates.
//
// The choice is remembered in localStorage (a preference, not a secret) and sets <html lang>, so screen
// readers pronounce each language correctly. Elements carrying data-i18n="key" get their text from here;
// views built in JavaScript call t(key, values) and re-render on a language change.

const STORAGE_KEY = 'emage.lang';
export const LANGUAGES = ['fr', 'en'];
const LOCALES = { fr: 'fr-FR', en: 'en-GB' };

const MESSAGES = {
  'app.title': ['e-mage — portail', 'e-mage — portal'],
  'lang.switch': ['English', 'Français'],
  'lang.switchLabel': ['Display in English', 'Afficher en français'],
  'common.skip': ['Aller au contenu', 'Skip to content'],
  'common.signOut': ['Se déconnecter', 'Sign out'],
  'common.signedInAs': ['Connecté : {name}', 'Signed in: {name}'],
  'common.loading': ['Chargement…', 'Loading…'],
  'common.error': ['Une erreur est survenue : {detail}', 'Something went wrong: {detail}'],
  'common.unavailable': [
    'Service momentanément indisponible. Réessayez dans un instant.',
    'Service temporarily unavailable. Please try again shortly.',
  ],
  'common.notFound': ['Examen introuvable ou non accessible.', 'Exam not found or not accessible.'],
  'common.cancel': ['Annuler', 'Cancel'],
  'common.close': ['Fermer', 'Close'],
  'common.openViewer': ['Ouvrir', 'Open'],
  'common.openViewerLabel': ['Ouvrir dans la visionneuse', 'Open in the viewer'],
  'common.revoke': ['Révoquer', 'Revoke'],
  'common.previous': ['Précédent', 'Previous'],
  'common.next': ['Suivant', 'Next'],
  'common.page': ['Page {page} sur {pages}', 'Page {page} of {pages}'],
  'common.copy': ['Copier le lien', 'Copy the link'],
  'common.copied': ['Lien copié.', 'Link copied.'],
  'common.portal': ['Aller au portail', 'Go to the portal'],
  'status.active': ['Actif', 'Active'],
  'status.revoked': ['Révoqué', 'Revoked'],
  'status.expired': ['Expiré', 'Expired'],
  'status.locked': ['Bloqué', 'Locked'],
  'status.exhausted': ['Épuisé', 'Used up'],
  'status.scheduled': ['Programmé', 'Scheduled'],
  'status.lifted': ['Levée', 'Lifted'],
  'role.radiologist': ['Radiologue', 'Radiologist'],
  'role.referring_physician': ['Médecin', 'Physician'],
  'role.nurse': ['Infirmier ou infirmière', 'Nurse'],
  'role.imaging_technician': ['Manipulateur ou manipulatrice radio', 'Imaging technician'],
  'role.patient': ['Patient', 'Patient'],
  'role.dpo': ['Délégué à la protection des données', 'Data protection officer'],

  'login.title': ['Bienvenue sur e-mage', 'Welcome to e-mage'],
  'login.intro': [
    "Consultez et partagez vos examens d'imagerie médicale en toute sécurité.",
    'View and share medical imaging exams securely.',
  ],
  'login.professional.title': ['Professionnel de santé', 'Health professional'],
  'login.professional.text': [
    'Radiologues, médecins, infirmiers, manipulateurs : connexion avec authentification forte.',
    'Radiologists, physicians, nurses, technicians: sign in with strong authentication.',
  ],
  'login.professional.button': ['Connexion professionnel', 'Professional sign-in'],
  'login.patient.title': ['Patient', 'Patient'],
  'login.patient.text': [
    'Vos examens, vos partages, vos consentements, et qui a consulté vos images.',
    'Your exams, your shares, your consents, and who viewed your images.',
  ],
  'login.patient.button': ['Connexion patient', 'Patient sign-in'],

  'nav.label': ['Navigation principale', 'Main navigation'],
  'nav.studies': ['Examens', 'Studies'],
  'nav.exams': ['Mes examens', 'My exams'],
  'nav.shares': ['Partages', 'Shares'],
  'nav.links': ['Liens de partage', 'Share links'],
  'nav.breakGlass': ['Bris de glace', 'Break the glass'],
  'nav.consents': ['Consentements', 'Consents'],
  'nav.log': ['Qui a vu mes examens', 'Who saw my exams'],
  'nav.alerts': ['Alertes', 'Alerts'],

  'studies.title': ['Examens accessibles', 'Studies you may access'],
  'studies.filters': ['Rechercher des examens', 'Search studies'],
  'studies.patientName': ['Nom du patient', 'Patient name'],
  'studies.patientId': ['Identifiant patient (IPP)', 'Patient ID'],
  'studies.from': ['Date du', 'From date'],
  'studies.to': ['Date au', 'To date'],
  'studies.modality': ['Modalité', 'Modality'],
  'studies.anyModality': ['Toutes', 'Any'],
  'studies.accession': ["N° d'accession", 'Accession number'],
  'studies.search': ['Rechercher', 'Search'],
  'studies.reset': ['Effacer', 'Clear'],
  'studies.caption': ['Résultats', 'Results'],
  'studies.count.zero': ['Aucun examen', 'No study'],
  'studies.count.one': ['1 examen', '1 study'],
  'studies.count.other': ['{n} examens', '{n} studies'],
  'exams.title': ['Mes examens', 'My exams'],
  'exams.empty': ['Aucun examen pour le moment.', 'No exams yet.'],
  'col.date': ['Date', 'Date'],
  'col.patient': ['Patient', 'Patient'],
  'col.patientId': ['IPP', 'Patient ID'],
  'col.modalities': ['Modalités', 'Modalities'],
  'col.description': ['Description', 'Description'],
  'col.accession': ['Accession', 'Accession'],
  'col.actions': ['Actions', 'Actions'],
  'col.study': ['Examen', 'Exam'],
  'col.grantee': ['Destinataire', 'Recipient'],
  'col.until': ["Jusqu'au", 'Until'],
  'col.status': ['État', 'Status'],
  'col.uses': ['Ouvertures', 'Opens'],
  'col.created': ['Créé le', 'Created'],
  'col.factor': ['Vérification', 'Check'],
  'col.opened': ['Ouvert le', 'Opened'],
  'col.justification': ['Justification', 'Justification'],
  'col.kind': ['Type', 'Type'],
  'col.scope': ['Portée', 'Scope'],
  'col.when': ['Quand', 'When'],
  'col.who': ['Qui', 'Who'],
  'col.what': ['Quoi', 'What'],
  'actions.share': ['Partager', 'Share'],
  'actions.shareLabel': ['Partager cet examen avec un professionnel', 'Share this exam with a professional'],
  'actions.link': ['Créer un lien', 'Create a link'],
  'actions.linkLabel': ['Créer un lien de partage de cet examen', 'Create a share link to this exam'],

  'share.title': ['Partager avec un professionnel de santé', 'Share with a health professional'],
  'share.study': ['Examen : {study}', 'Exam: {study}'],
  'share.search': ['Nom ou numéro RPPS du professionnel', "Professional's name or RPPS number"],
  'share.searchHint': [
    'Au moins 2 caractères, ou les 11 chiffres du RPPS.',
    'At least 2 characters, or the 11 digits of the RPPS number.',
  ],
  'share.find': ['Chercher', 'Find'],
  'share.results': ['Professionnels trouvés', 'Professionals found'],
  'share.noResult': ['Aucun professionnel trouvé.', 'No professional found.'],
  'share.byRpps': ['Professionnel RPPS {rpps}', 'Professional RPPS {rpps}'],
  'share.selected': ['Destinataire : {name}', 'Recipient: {name}'],
  'share.until': ["Partagé jusqu'au", 'Shared until'],
  'share.submit': ['Partager', 'Share'],
  'share.done': ["Examen partagé avec {name} jusqu'au {date}.", 'Exam shared with {name} until {date}.'],
  'share.pickFirst': ["Choisissez d'abord un professionnel.", 'Choose a professional first.'],

  'link.title': ['Créer un lien de partage', 'Create a share link'],
  'link.expires': ["Valable jusqu'au", 'Valid until'],
  'link.maxUses': ["Nombre maximum d'ouvertures", 'Maximum number of opens'],
  'link.maxUsesHint': ['Laissez vide pour ne pas limiter.', 'Leave empty for no limit.'],
  'link.factor': ["Vérification à l'ouverture", 'Check when opening'],
  'link.factor.birth_date': ['Date de naissance du patient', "The patient's birth date"],
  'link.factor.one_time_code': ['Code à usage unique', 'One-time code'],
  'link.factor.none': ['Aucune (déconseillé)', 'None (not recommended)'],
  'link.submit': ['Créer le lien', 'Create the link'],
  'link.created': [
    "Lien créé. Il ne sera plus affiché : copiez-le ou faites scanner le QR code maintenant.",
    'Link created. It will not be shown again: copy it or have the QR code scanned now.',
  ],
  'link.url': ['Adresse du lien', 'Link address'],
  'link.qrAlt': ['QR code du lien de partage', 'QR code of the share link'],
  'link.code': ['Code à transmettre séparément du lien', 'Code to pass on separately from the link'],

  'shares.title': ['Partages', 'Shares'],
  'shares.empty': ['Aucun partage.', 'No shares.'],
  'shares.all': ['Tous les examens', 'All exams'],
  'shares.revoked': ['Partage révoqué.', 'Share revoked.'],
  'links.title': ['Liens de partage', 'Share links'],
  'links.empty': ['Aucun lien de partage.', 'No share links.'],
  'links.revoked': ['Lien révoqué.', 'Link revoked.'],
  'links.unlimited': ['{uses} (sans limite)', '{uses} (no limit)'],

  'bg.title': ['Bris de glace', 'Break the glass'],
  'bg.warning': [
    "Réservé à l'urgence : l'accès est limité dans le temps, en consultation seule, tracé et signalé au patient.",
    'For emergencies only: access is time-limited, view-only, traced and reported to the patient.',
  ],
  'bg.study': ["UID de l'examen (Study Instance UID)", 'Study Instance UID'],
  'bg.justification': ['Justification médicale', 'Medical justification'],
  'bg.justificationHint': ['De 10 à 2 000 caractères.', 'From 10 to 2,000 characters.'],
  'bg.duration': ['Durée', 'Duration'],
  'bg.minutes': ['{n} minutes', '{n} minutes'],
  'bg.submit': ["Ouvrir l'accès d'urgence", 'Open emergency access'],
  'bg.done': ["Accès d'urgence ouvert jusqu'au {date}.", 'Emergency access open until {date}.'],
  'bg.notFound': [
    "Examen introuvable, ou votre rôle ne permet pas le bris de glace.",
    'Exam not found, or your role may not break the glass.',
  ],
  'bg.grants': ["Mes accès d'urgence", 'My emergency accesses'],
  'bg.none': ["Aucun accès d'urgence.", 'No emergency access.'],
  'bg.inForce': ['En cours', 'In force'],
  'bg.ended': ['Terminé', 'Ended'],

  'consents.title': ['Consentements et oppositions', 'Consents and objections'],
  'consents.intro': [
    "Partager un examen avec un professionnel vaut consentement à ce partage. Vous pouvez aussi autoriser un établissement ou un professionnel à voir tous vos examens, ou vous opposer à tout partage de vos examens hors de l'établissement qui les a réalisés.",
    'Sharing an exam with a professional is consent to that share. You may also allow a facility or a professional to see all your exams, or object to any sharing of your exams outside the facility that performed them.',
  ],
  'consents.grantTitle': ['Autoriser un établissement ou un professionnel', 'Allow a facility or a professional'],
  'consents.kind': ['Qui', 'Who'],
  'consents.kindFacility': ['Un établissement (FINESS)', 'A facility (FINESS)'],
  'consents.kindProfessional': ['Un professionnel (RPPS)', 'A professional (RPPS)'],
  'consents.identifier': ['Numéro FINESS ou RPPS', 'FINESS or RPPS number'],
  'consents.identifierHint': [
    "FINESS : 9 caractères ; RPPS : 11 chiffres. L'autorisation vaut pour tous vos examens.",
    'FINESS: 9 characters; RPPS: 11 digits. The permission covers all your exams.',
  ],
  'consents.until': ["Jusqu'au (facultatif)", 'Until (optional)'],
  'consents.untilHint': ['Sans date, jusqu\'à ce que vous la révoquiez.', 'Without a date, until you revoke it.'],
  'consents.grant': ['Autoriser', 'Allow'],
  'consents.granted': ['Consentement enregistré.', 'Consent recorded.'],
  'consents.badFiness': ['Un numéro FINESS a 9 caractères.', 'A FINESS number has 9 characters.'],
  'consents.badRpps': ['Un numéro RPPS a 11 chiffres.', 'An RPPS number has 11 digits.'],
  'consents.oppose': ["Je m'oppose au partage de mes examens", 'I object to the sharing of my exams'],
  'consents.opposed': ['Opposition enregistrée.', 'Objection recorded.'],
  'consents.empty': ['Aucun consentement ni opposition.', 'No consents or objections.'],
  'consents.permit': ['Consentement', 'Consent'],
  'consents.deny': ['Opposition', 'Objection'],
  'consents.scopeAll': ['Tous les examens', 'All exams'],
  'consents.scopeStudy': ['Un examen ({uid})', 'One exam ({uid})'],
  'consents.lift': ["Lever l'opposition", 'Lift the objection'],
  'consents.lifted': ['Opposition levée.', 'Objection lifted.'],
  'consents.revoked': ['Consentement révoqué.', 'Consent revoked.'],
  'grantee.professional': ['Professionnel (RPPS {rpps})', 'Professional (RPPS {rpps})'],
  'grantee.facility': ['Établissement (FINESS {finess})', 'Facility (FINESS {finess})'],
  'grantee.share': ["Bénéficiaire d'un partage", 'Holder of a share'],

  'log.title': ['Qui a vu mes examens', 'Who saw my exams'],
  'log.intro': [
    'Chaque consultation de vos examens est enregistrée ; voici les plus récentes.',
    'Every access to your exams is recorded; here are the most recent.',
  ],
  'log.empty': ["Personne n'a encore consulté vos examens.", 'Nobody has viewed your exams yet.'],
  'log.breakGlass': ['Bris de glace', 'Break the glass'],
  'alerts.title': ['Alertes de bris de glace', 'Break-the-glass alerts'],
  'alerts.intro': [
    "Accès d'urgence à vos examens sans votre consentement, avec la justification donnée.",
    'Emergency accesses to your exams without your consent, with the justification given.',
  ],
  'alerts.empty': ['Aucune alerte.', 'No alerts.'],

  'linkpage.title': ['Ouvrir un examen partagé', 'Open a shared exam'],
  'linkpage.intro': [
    "Un examen d'imagerie a été partagé avec vous. Pour l'ouvrir, indiquez l'information transmise avec le lien.",
    'An imaging exam was shared with you. To open it, give the information passed on with the link.',
  ],
  'linkpage.factor': ['Information transmise avec le lien', 'Information passed on with the link'],
  'linkpage.birthDate': ['Date de naissance du patient', "The patient's birth date"],
  'linkpage.code': ['Code à usage unique', 'One-time code'],
  'linkpage.none': ["Rien d'autre", 'Nothing else'],
  'linkpage.withBirthDate': ['Une date de naissance', 'A birth date'],
  'linkpage.withCode': ['Un code à usage unique', 'A one-time code'],
  'linkpage.submit': ["Ouvrir l'examen", 'Open the exam'],
  'linkpage.opening': ['Ouverture…', 'Opening…'],
  'linkpage.refused': [
    "Ce lien ne peut pas être ouvert. Vérifiez l'information saisie ; un lien expiré, révoqué ou déjà utilisé autant de fois que prévu est refusé de la même façon.",
    'This link cannot be opened. Check what you entered; an expired or revoked link, or one already used as many times as allowed, is refused the same way.',
  ],
  'linkpage.missing': [
    "Ce lien est incomplet : son adresse doit se terminer par # suivi du code du lien.",
    'This link is incomplete: its address must end with # followed by the link code.',
  ],
  'linkpage.privacy': [
    "L'accès est en lecture seule, limité dans le temps et tracé.",
    'Access is read-only, time-limited and traced.',
  ],

  'iid.title': ['Affichage des images', 'Image display'],
  'iid.signingIn': ['Connexion…', 'Signing in…'],
  'iid.searching': ['Recherche des examens…', 'Finding the studies…'],
  'iid.none': ['Aucun examen', 'No study'],
  'iid.noneText': [
    "Aucun examen ne correspond à cette demande, ou vous n'avez pas accès aux examens demandés.",
    'No study matches this request, or you may not access the requested studies.',
  ],
  'iid.several': ['{n} examens trouvés, du plus récent au plus ancien.', '{n} studies found, most recent first.'],
  'iid.openAll': ['Ouvrir les {n} examens dans la visionneuse', 'Open the {n} studies in the viewer'],
  'iid.opening': ['Ouverture de la visionneuse…', 'Opening the viewer…'],

  'callback.title': ['Connexion en cours…', 'Signing in…'],
  'callback.failed': ['La connexion a échoué : {detail}', 'Sign-in failed: {detail}'],
};

const listeners = new Set();

/** The language in use: the remembered choice, French by default. */
export function currentLanguage() {
  const stored = localStorage.getItem(STORAGE_KEY);
  return LANGUAGES.includes(stored) ? stored : 'fr';
}

export function locale() {
  return LOCALES[currentLanguage()];
}

/** The text of `key` in the current language, `{name}` placeholders replaced from `values`. */
export function t(key, values = {}) {
  const entry = MESSAGES[key];
  if (!entry) throw new Error(`missing translation: ${key}`);
  const text = entry[LANGUAGES.indexOf(currentLanguage())];
  return text.replace(/\{(\w+)\}/g, (match, name) => (name in values ? String(values[name]) : match));
}

/** `key.zero`, `key.one` or `key.other` by the number `n`, with `{n}` replaced. */
export function plural(key, n) {
  if (n === 0) return t(`${key}.zero`, { n });
  const category = new Intl.PluralRules(locale()).select(n);
  return t(category === 'one' ? `${key}.one` : `${key}.other`, { n: n.toLocaleString(locale()) });
}

/** Every key of both languages (the browser tests check that none is missing or empty). */
export function allMessages() {
  return MESSAGES;
}

/** Fill every `data-i18n` element of `root`, and `data-i18n-label` aria-labels. */
export function translate(root = document) {
  document.documentElement.lang = currentLanguage();
  for (const element of root.querySelectorAll('[data-i18n]')) {
    element.textContent = t(element.dataset.i18n);
  }
  for (const element of root.querySelectorAll('[data-i18n-label]')) {
    element.setAttribute('aria-label', t(element.dataset.i18nLabel));
  }
}

export function onLanguageChange(listener) {
  listeners.add(listener);
}

export function setLanguage(language) {
  if (!LANGUAGES.includes(language)) return;
  localStorage.setItem(STORAGE_KEY, language);
  translate();
  for (const listener of listeners) listener(language);
}

/** Set up the page: its language, its translated elements, and the switch button `#lang-switch`. */
export function initLanguage() {
  translate();
  const button = document.getElementById('lang-switch');
  if (!button) return;
  const label = () => {
    const other = currentLanguage() === 'fr' ? 'en' : 'fr';
    button.textContent = t('lang.switch');
    button.lang = other;
    button.setAttribute('aria-label', t('lang.switchLabel'));
  };
  label();
  button.addEventListener('click', () => {
    setLanguage(currentLanguage() === 'fr' ? 'en' : 'fr');
    label();
  });
}

// --- Dates ---------------------------------------------------------------------------------------------

/** A DICOM DA value (YYYYMMDD) as a date of the current language, e.g. 1 nov. 2026 / 1 Nov 2026. */
export function formatDicomDate(value) {
  if (!value || !/^\d{8}$/.test(value)) return value || '—';
  const date = new Date(Date.UTC(Number(value.slice(0, 4)), Number(value.slice(4, 6)) - 1, Number(value.slice(6, 8))));
  return new Intl.DateTimeFormat(locale(), { dateStyle: 'medium', timeZone: 'UTC' }).format(date);
}

/** An instant (ISO 8601) as a date and time, in Paris time where the platform's patients and staff are. */
export function formatDateTime(value) {
  if (!value) return '—';
  return new Intl.DateTimeFormat(locale(), {
    dateStyle: 'medium',
    timeStyle: 'short',
    timeZone: 'Europe/Paris',
  }).format(new Date(value));
}
