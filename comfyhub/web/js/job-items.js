// 查看各项: a job's items in a dialog, a page of PAGE at a time, optionally of one state:
// each item's parameters, state, error and links to its output files. Read again every
// REFRESH_MS while the dialog is open, the job still runs and the tab is visible.

import { get } from "./api.js";
import { modal } from "./dialogs.js";
import { h, setText, show } from "./dom.js";
import { ITEM_STATES, LIVE } from "./job-card.js";
import { poll } from "./lifecycle.js";
import { badge } from "./status.js";
import { outputUrl } from "./gallery-tile.js";

const PAGE = 50;
const REFRESH_MS = 2000;

/** A parameter value as a cell shows it: text as it is, anything else as JSON. */
const shown = (value) => (typeof value === "string" ? value : JSON.stringify(value));

function itemRow(projectId, columns, item) {
  const outputs = item.outputs.length
    ? item.outputs.map((oid) => h("a", { href: outputUrl(projectId, oid, "file"), target: "_blank", rel: "noopener",
      class: "item-output" }, `#${oid}`))
    : [h("span", { class: "muted", text: "—" })];
  const tries = item.submissions > 1 ? h("span", { class: "muted small", text: ` 提交 ${item.submissions} 次` }) : null;
  return h("tr", { dataset: { idx: item.idx, state: item.state } },
    h("td", { class: "num", text: String(item.idx + 1) }),
    columns.map((c) => h("td", { class: "param-cell", dataset: { column: c }, title: shown(item.params[c]),
      text: shown(item.params[c]) })),
    h("td", {}, badge(item.state, ITEM_STATES).el, tries),
    h("td", { class: "item-error", text: item.error || "" }),
    h("td", {}, h("span", { class: "item-outputs" }, outputs)));
}

/** Open the items of `job` (of project `projectId`); closes with the view `within`. */
export function itemsDialog({ projectId, job, within }) {
  const columns = job.columns || [];
  const url = `/api/projects/${projectId}/jobs/${job.id}`;
  // `stale`: the page on screen is not the one asked for (or the job ended since it was read).
  const page = { offset: 0, state: "", live: LIVE.has(job.state), stale: true };
  const filter = h("select", { id: "items-state", "aria-label": "按状态筛选" },
    h("option", { value: "" }, "全部状态"),
    Object.entries(ITEM_STATES).map(([key, { label }]) => h("option", { value: key }, label)));
  const info = h("p", { class: "muted items-info", "aria-live": "polite" });
  const error = h("p", { class: "list-error", role: "alert", hidden: true });
  const body = h("tbody");
  const prev = h("button", { type: "button", class: "btn btn-sm" }, "上一页");
  const next = h("button", { type: "button", class: "btn btn-sm" }, "下一页");
  const table = h("table", { class: "table items-table" },
    h("thead", {}, h("tr", {}, h("th", { text: "序号" }), columns.map((c) => h("th", { text: c })),
      h("th", { text: "状态" }), h("th", { text: "错误" }), h("th", { text: "产出" }))),
    body);

  async function load(isCurrent) {
    const query = new URLSearchParams({ limit: String(PAGE), offset: String(page.offset) });
    if (page.state) query.set("state", page.state);
    try {
      const [data, fresh] = await Promise.all([get(`${url}/items?${query}`), page.live ? get(url) : null]);
      if (!isCurrent()) return;
      page.stale = false;
      if (fresh && !LIVE.has(fresh.state)) Object.assign(page, { live: false, stale: true }); // once more, settled
      body.replaceChildren(...data.items.map((item) => itemRow(projectId, columns, item)));
      if (!data.items.length) body.append(h("tr", {}, h("td", { colspan: String(columns.length + 4), class: "muted", text: "没有项" })));
      const last = Math.min(page.offset + data.items.length, data.total);
      setText(info, data.total ? `共 ${data.total} 项 · 第 ${page.offset + 1}–${last} 项` : "共 0 项");
      prev.disabled = page.offset === 0;
      next.disabled = last >= data.total;
      show(error, false);
    } catch (err) {
      if (!isCurrent() || err.status === 401) return;
      setText(error, `读取各项失败：${err.message}`);
      show(error, true);
    }
  }

  return modal({
    title: `各项 · ${job.name}`,
    className: "dialog-wide items-dialog",
    within,
    build: (close, scope) => {
      // Polls only while the job runs: a finished job's items no longer change.
      const poller = poll(scope, (isCurrent) => (page.live || page.stale ? load(isCurrent) : null), REFRESH_MS);
      const go = (offset) => {
        page.offset = Math.max(0, offset);
        page.stale = true;
        poller.now();
      };
      prev.addEventListener("click", () => go(page.offset - PAGE));
      next.addEventListener("click", () => go(page.offset + PAGE));
      filter.addEventListener("change", () => {
        page.state = filter.value;
        go(0);
      });
      poller.now();
      return h("div", { class: "dialog-body" },
        h("div", { class: "items-tools" }, filter, info),
        error,
        h("div", { class: "table-wrap" }, table),
        h("div", { class: "dialog-actions" },
          prev, next,
          h("a", { href: `#/projects/${projectId}/outputs`, class: "btn", onclick: () => close() }, "在产出中查看"),
          h("button", { type: "button", class: "btn", autofocus: true, onclick: () => close() }, "关闭")));
    },
  });
}
