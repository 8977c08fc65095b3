// Tiny DOM helpers: build elements, keep keyed lists in place, show toasts.

/**
 * h("button", {class: "btn", onclick: fn}, "text", child...) → element.
 * Attributes: `class`, `text`, `hidden`, on* handlers, `dataset`, anything else via setAttribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Set text only when it changed (keeps selections and screen readers quiet). */
export function setText(el, text) {
  const value = text ?? "";
  if (el.textContent !== value) el.textContent = value;
}

export function show(el, visible) {
  if (el.hidden === !visible) return;
  el.hidden = !visible;
}

/**
 * Keep `container`'s children equal to `items`, reusing the element of each key: a
 * refresh never replaces a node the user is focused on. `create(item)` returns an
 * object with `el` and `update(item)`; `cache` (a Map) remembers them between calls.
 */
export function syncKeyed(container, items, keyOf, create, cache) {
  const wanted = new Set(items.map(keyOf));
  for (const [key, view] of cache) {
    if (!wanted.has(key)) {
      view.el.remove();
      if (view.destroy) view.destroy();
      cache.delete(key);
    }
  }
  let index = 0;
  for (const item of items) {
    const key = keyOf(item);
    let view = cache.get(key);
    if (!view) {
      view = create(item);
      cache.set(key, view);
    }
    view.update(item);
    const current = container.children[index];
    if (current !== view.el) container.insertBefore(view.el, current || null);
    index += 1;
  }
}

/** A short message in the corner; errors stay a little longer. */
export function toast(message, kind = "info", extra = null) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = h("div", { class: `toast toast-${kind}` }, h("span", { text: message }), extra);
  box.append(item);
  const close = () => item.remove();
  setTimeout(close, kind === "error" ? 8000 : 4000);
}

/** Copy `text`: the Clipboard API, or a selected textarea inside `host` where it is refused
 * (plain http, permissions). `host` should be inside any open modal: the page behind one is inert. */
export async function copyText(text, host) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = h("textarea", { class: "copy-buffer", readonly: true, "aria-hidden": "true" });
    area.value = text;
    host.append(area);
    area.select();
    let done = false;
    try {
      done = document.execCommand("copy");
    } catch {
      done = false;
    }
    area.remove();
    return done;
  }
}
