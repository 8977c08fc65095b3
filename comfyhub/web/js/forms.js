// Form fields that show the API's errors where they belong. A failed request answers
// `data.errors`: a list of {field, msg} (field as the API spells it: "code", "name"…).
// Each message goes next to its field; what names no field of the form goes to the
// form's own error line. Nothing here reads the wording of a message.

import { h, setText, show } from "./dom.js";

/** A labelled input with an optional help line and a place for its error. */
export function formField({ key, label, input, help }) {
  const base = input.id || `f-${key}`;
  input.id = base;
  const helpEl = help ? h("p", { class: "help", id: `${base}-help`, text: help }) : null;
  const errorEl = h("p", { class: "field-error", id: `${base}-error`, hidden: true });
  const describe = (withError) => {
    const ids = [withError ? errorEl.id : null, helpEl ? helpEl.id : null].filter(Boolean);
    if (ids.length) input.setAttribute("aria-describedby", ids.join(" "));
    else input.removeAttribute("aria-describedby");
  };
  describe(false);
  const setError = (message) => {
    const bad = Boolean(message);
    setText(errorEl, message || "");
    show(errorEl, bad);
    if (bad) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
    describe(bad);
  };
  const el = h("div", { class: "field" }, h("label", { for: base, text: label }), input, errorEl, helpEl);
  return { key, input, el, setError };
}

/** The structured field errors of an ApiError: [{field, msg}], or [] when it has none. */
export function fieldErrors(error) {
  const list = error && error.data && Array.isArray(error.data.errors) ? error.data.errors : [];
  return list.filter((e) => e && typeof e.field === "string");
}

export function clearErrors(fields, summary) {
  for (const f of fields) f.setError(null);
  show(summary, false);
}

/**
 * Show `error` on the form: each structured field error next to its field (the first of
 * a field wins), the rest in `summary`. Focuses the first field in error.
 */
export function showErrors(error, fields, summary) {
  clearErrors(fields, summary);
  const byKey = new Map(fields.map((f) => [f.key, f]));
  const placed = new Set();
  let unplaced = false;
  for (const e of fieldErrors(error)) {
    const f = byKey.get(e.field);
    if (!f) {
      unplaced = true;
    } else if (!placed.has(f)) {
      f.setError(e.msg || error.message);
      placed.add(f);
    }
  }
  if (unplaced || placed.size === 0) {
    setText(summary, error.message);
    show(summary, true);
  }
  const firstBad = fields.find((f) => placed.has(f));
  if (firstBad) firstBad.input.focus();
}
