// Small DOM helpers: elements built from data, never from HTML strings (no injection through names).

/**
 * An element: `h('button', { type: 'button', onclick: fn, class: 'primary' }, 'text', child…)`.
 * Attributes named on* are listeners; `text` sets textContent; null/false children and attributes are skipped.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'text') {
      element.textContent = value;
    } else if (value === true) {
      element.setAttribute(name, '');
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the content of `element` with `children`. */
export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A message box; errors are announced at once (role=alert), others politely (role=status). */
export function message(kind, text) {
  return h('div', { class: `message ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

let idCounter = 0;

/** A labelled form field: `<label for=id>` + the control (`input` attributes, or a prebuilt control). */
export function field(labelText, control, hint) {
  idCounter += 1;
  const id = control.id || `f${idCounter}`;
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  return h(
    'div',
    { class: 'field' },
    h('label', { for: id }, labelText),
    control,
    hint ? h('small', { id: hintId, class: 'muted' }, hint) : null,
  );
}
