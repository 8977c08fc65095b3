// One tile of the gallery: the thumbnail (loaded lazily) or an icon and the file name,
// its mark (通过 / 不通过), its tags, and a checkbox to select it.

import { h, setText, show } from "./dom.js";
import { icon } from "./icons.js";

export const MARK_WORDS = { pass: "通过", fail: "不通过" };

/** How long the trash keeps a deleted file (COMFYHUB_TRASH_DAYS, when /api/meta says it). */
export function keptFor(days) {
  if (days === undefined || days === null) return "，保留期限由管理员设置";
  return Number(days) > 0 ? `，保留 ${days} 天后才会被清除` : "，不会被自动清除";
}

/** /api/projects/{p}/outputs/{id}[/file|/thumb] */
export function outputUrl(projectId, id, tail = "") {
  return `/api/projects/${projectId}/outputs/${id}${tail ? `/${tail}` : ""}`;
}

function preview(projectId, item) {
  if (item.media_type === "image") {
    const img = h("img", {
      src: outputUrl(projectId, item.id, "thumb"),
      alt: item.prompt ? item.prompt.slice(0, 120) : item.filename,
      loading: "lazy",
      decoding: "async",
    });
    // No thumbnail (an unreadable image, a file gone from disk): the icon instead.
    img.addEventListener("error", () => img.replaceWith(placeholder("file", item.filename)), { once: true });
    return img;
  }
  const kind = item.media_type === "video" || item.media_type === "audio" ? item.media_type : "file";
  return placeholder(kind, item.filename);
}

function placeholder(kind, filename) {
  return h("span", { class: "tile-icon", dataset: { kind } }, icon(kind), h("span", { class: "tile-file", text: filename }));
}

/**
 * A tile for `item`. `onOpen(id)` opens its detail; `onToggle(id, checked, shiftKey)`
 * (de)selects it. Returns {el, update(item), select(on)} for syncKeyed.
 */
export function createTile(projectId, initial, { onOpen, onToggle }) {
  const id = initial.id;
  const open = h("button", { type: "button", class: "tile-open", "aria-label": `查看 ${initial.filename}` },
    preview(projectId, initial));
  open.addEventListener("click", () => onOpen(id));
  const check = h("input", { type: "checkbox", class: "tile-check", "aria-label": `选择 ${initial.filename}` });
  check.addEventListener("click", (event) => onToggle(id, check.checked, event.shiftKey));
  const mark = h("span", { class: "tile-mark" });
  const tags = h("span", { class: "tile-tags" });
  const el = h("article", { class: "tile", dataset: { outputId: id, kind: initial.media_type } },
    open,
    check,
    h("div", { class: "tile-foot" }, mark, tags));

  function update(item) {
    el.dataset.mark = item.mark || "none";
    setText(mark, MARK_WORDS[item.mark] || "");
    show(mark, Boolean(item.mark));
    // The tags, or else the file name (a non-image tile shows it already).
    const tagText = (item.tags || []).join(" · ");
    const text = tagText || (item.media_type === "image" ? item.filename : "");
    setText(tags, text);
    tags.classList.toggle("is-name", !tagText);
    tags.title = text;
    el.title = item.filename;
  }

  function select(on) {
    check.checked = on;
    el.classList.toggle("is-selected", on);
  }

  return { el, update, select };
}
