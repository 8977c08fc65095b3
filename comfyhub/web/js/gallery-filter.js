// The gallery's filter bar: dates, status, mark, kind, tag, text. One filter drives the
// grid (as a query string) and the export (as a JSON body), so the export holds exactly
// what the grid shows.

import { h } from "./dom.js";

const TYPING_MS = 350; // text fields apply once typing pauses

const MARKS = [
  ["", "全部"],
  ["pass", "通过"],
  ["fail", "不通过"],
  ["none", "未标注"],
];
const STATUSES = [
  ["", "全部状态"],
  ["success", "成功"],
  ["error", "失败"],
  ["interrupted", "已中断"],
];
const KINDS = [
  ["", "全部类型"],
  ["image", "图片"],
  ["video", "视频"],
  ["audio", "音频"],
  ["other", "其他"],
];

/** A local calendar day "2026-12-01" → the instant it starts, as ISO (the API's `since`/`until`). */
function dayStart(value, plusDays = 0) {
  const [y, m, d] = value.split("-").map(Number);
  return new Date(y, m - 1, d + plusDays).toISOString();
}

function field(label, control, className = "") {
  return h("label", { class: `filter-field ${className}`.trim() }, h("span", { class: "filter-label", text: label }), control);
}

function select(options, name) {
  return h("select", { name }, options.map(([value, text]) => h("option", { value }, text)));
}

/**
 * The bar. `onChange()` runs when the filter changes (text fields after a pause).
 * `scope` owns the pause timer. Returns {el, query(), body(), active()}.
 */
export function filterBar(scope, onChange) {
  const since = h("input", { type: "date", name: "since" });
  const until = h("input", { type: "date", name: "until" });
  const status = select(STATUSES, "status");
  const kind = select(KINDS, "media_type");
  const tag = h("input", { type: "search", name: "tag", placeholder: "标签", maxlength: "64", autocomplete: "off" });
  const text = h("input", { type: "search", name: "q", placeholder: "提示词或文件名", maxlength: "200", autocomplete: "off" });
  let mark = "";
  const markButtons = MARKS.map(([value, label]) =>
    h("button", {
      type: "button",
      class: "seg",
      dataset: { mark: value },
      "aria-pressed": String(value === mark),
      onclick: () => {
        if (mark === value) return;
        mark = value;
        for (const b of markButtons) b.setAttribute("aria-pressed", String(b.dataset.mark === mark));
        onChange();
      },
    }, label));

  let pause = null;
  const typed = () => {
    scope.clear(pause);
    pause = scope.later(TYPING_MS, onChange);
  };
  for (const input of [tag, text]) {
    input.addEventListener("input", typed);
    input.addEventListener("keydown", (event) => {
      if (event.key !== "Enter") return;
      scope.clear(pause);
      onChange();
    });
  }
  for (const control of [since, until, status, kind]) control.addEventListener("change", onChange);

  const reset = h("button", {
    type: "button",
    class: "btn btn-ghost btn-sm",
    onclick: () => {
      for (const input of [since, until, tag, text]) input.value = "";
      status.value = "";
      kind.value = "";
      mark = "";
      for (const b of markButtons) b.setAttribute("aria-pressed", String(b.dataset.mark === ""));
      onChange();
    },
  }, "清除筛选");

  const el = h("form", { class: "filters", role: "search", "aria-label": "筛选产出", onsubmit: (e) => e.preventDefault() },
    h("div", { class: "segmented", role: "group", "aria-label": "标注" }, markButtons),
    field("开始日期", since),
    field("结束日期", until),
    field("状态", status),
    field("类型", kind),
    field("标签", tag),
    field("搜索", text, "filter-grow"),
    reset);

  /** The filter as the export's JSON body (empty fields left out). */
  function body() {
    const out = {};
    if (since.value) out.since = dayStart(since.value);
    if (until.value) out.until = dayStart(until.value, 1); // the API ends before it: the whole day
    if (status.value) out.status = status.value;
    if (mark) out.mark = mark;
    if (tag.value.trim()) out.tags = [tag.value.trim()];
    if (text.value.trim()) out.text = text.value.trim();
    if (kind.value) out.media_type = kind.value;
    return out;
  }

  /** The same filter as the list's query string. */
  function query() {
    const b = body();
    const params = new URLSearchParams();
    for (const key of ["since", "until", "status", "mark", "media_type"]) if (b[key]) params.set(key, b[key]);
    if (b.tags) params.set("tag", b.tags[0]);
    if (b.text) params.set("q", b.text);
    return params;
  }

  return { el, body, query, active: () => Object.keys(body()).length > 0 };
}
