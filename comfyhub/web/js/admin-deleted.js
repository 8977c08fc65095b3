// 管理 → 已删除的项目: a deleted project keeps its outputs and records; an admin can see
// them, restore the project (恢复), or export its outputs (导出).

import { get, post } from "./api.js";
import { h, setText, show, syncKeyed, toast } from "./dom.js";
import { formatDateTime, parseTime } from "./format.js";
import { exportWithProgress } from "./gallery-export.js";

/** The panel. `scope`: the admin view's; `onRestored()` refreshes the other lists. Returns {el, load}. */
export function deletedProjectsPanel(scope, onRestored) {
  const body = h("tbody");
  const count = h("span", { class: "count" });
  const note = h("p", { class: "muted table-empty", text: "没有已删除的项目。", hidden: true });
  const progress = h("p", { class: "export-progress", role: "status", hidden: true });
  const rows = new Map();
  const th = (text) => h("th", { scope: "col", text });
  const table = h("div", { class: "table-wrap" },
    h("table", { class: "table" },
      h("thead", {}, h("tr", {}, th("项目"), th("所有者"), th("删除时间"), th("保留的产出"),
        h("th", { scope: "col" }, h("span", { class: "sr-only", text: "操作" })))),
      body));
  const el = h("section", { class: "panel", "aria-labelledby": "deleted-title", id: "admin-deleted" },
    h("div", { class: "panel-head" }, h("h2", { id: "deleted-title", text: "已删除的项目" }), count),
    progress,
    table,
    note);

  function createRow(initial) {
    const id = initial.id;
    const name = h("span", { class: "strong" });
    const code = h("span", { class: "muted small" });
    const cells = [h("td", {}, name, h("br"), code), h("td"), h("td"), h("td", { class: "num" })];
    const view = h("a", { href: `/#/projects/${id}/outputs`, class: "btn btn-sm btn-ghost" }, "查看产出");
    const exportButton = h("button", { type: "button", class: "btn btn-sm" }, "导出");
    const restore = h("button", { type: "button", class: "btn btn-sm btn-primary" }, "恢复");
    let current = initial;
    exportButton.addEventListener("click", () =>
      exportWithProgress(scope, id, {}, { button: exportButton, status: progress }));
    restore.addEventListener("click", async () => {
      restore.disabled = true;
      try {
        const answer = await post(`/api/admin/projects/${id}/restore`, undefined, { envelope: true });
        toast(answer.msg || "项目已恢复", "success");
        onRestored();
      } catch (error) {
        if (error.status !== 401) toast(error.message, "error");
      }
      restore.disabled = false;
    });
    const el = h("tr", { dataset: { projectId: id } }, cells,
      h("td", { class: "actions-cell" }, view, exportButton, restore));
    return {
      el,
      update(p) {
        current = p;
        setText(name, current.name);
        setText(code, current.code);
        setText(cells[1], current.owner_username || `#${current.owner_user_id}`);
        setText(cells[2], formatDateTime(parseTime(current.deleted_at)));
        setText(cells[3], String(current.outputs_kept));
        exportButton.disabled = current.outputs_kept === 0;
        exportButton.setAttribute("aria-label", `导出 ${current.name} 的产出`);
        restore.setAttribute("aria-label", `恢复 ${current.name}`);
      },
    };
  }

  async function load(isCurrent) {
    try {
      const projects = await get("/api/admin/projects/deleted");
      if (!isCurrent()) return;
      const items = Array.isArray(projects) ? projects : [];
      syncKeyed(body, items, (p) => p.id, createRow, rows);
      setText(count, `共 ${items.length} 个`);
      show(table, items.length > 0);
      show(note, items.length === 0);
    } catch (error) {
      if (!isCurrent()) return;
      if (error.status === 404) show(el, false); // a deployment without this API
      else {
        setText(note, `读取失败：${error.message}`);
        show(note, true);
      }
    }
  }

  return { el, load };
}
