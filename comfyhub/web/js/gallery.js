// 产出 (/#/projects/{id}/outputs): a project's generated files as a grid, newest first,
// a page of PAGE at a time; the first page is asked again every few seconds while the
// view is open and the tab visible, so new outputs appear while ComfyUI runs. One filter
// drives the grid and the export; selected tiles can be marked, tagged, deleted, exported.

import { get, post } from "./api.js";
import { confirmDialog } from "./dialogs.js";
import { h, setText, show, syncKeyed, toast } from "./dom.js";
import { parseTime } from "./format.js";
import { openDetail } from "./gallery-detail.js";
import { exportWithProgress } from "./gallery-export.js";
import { filterBar } from "./gallery-filter.js";
import { askTag, selectionBar } from "./gallery-selection.js";
import { createTile, keptFor } from "./gallery-tile.js";
import { Scope, poll } from "./lifecycle.js";

const PAGE = 100;

/** Whether `a` comes after `b` in the list (newest first: created_at, then id, descending). */
function after(a, b) {
  const ta = parseTime(a.created_at)?.getTime() ?? 0;
  const tb = parseTime(b.created_at)?.getTime() ?? 0;
  return ta < tb || (ta === tb && a.id < b.id);
}

/** What a tile needs of a detail answer (the graph stays with the dialog). */
function listItem(detail) {
  const { graph, error, source, started_at: _s, finished_at: _f, ...item } = detail;
  return item;
}

/** Render project `projectId`'s gallery into `main`; returns the function that ends it. */
export function renderGallery(main, { me, meta, projectId }) {
  document.title = "产出 · comfyhub";
  const scope = new Scope();
  const refreshMs = Math.max(1, Number(meta.list_refresh_seconds) || 8) * 1000;
  const base = `/api/projects/${projectId}/outputs`;
  const state = {
    canEdit: false,
    items: [],
    total: 0,
    loaded: false,
    generation: 0, // bumped by every filter change: a page asked for before it is dropped
    loadingMore: false,
    selected: new Set(),
    anchor: null, // the last tile (de)selected: shift-click selects the range from it
  };
  const tiles = new Map();

  // --- page head ---------------------------------------------------------------------------

  const title = h("h1", { text: "产出" });
  const totalText = h("p", { class: "muted gallery-total", "aria-live": "polite" });
  const refreshButton = h("button", { type: "button", class: "btn", onclick: () => syncNow() }, "刷新");
  const exportButton = h("button", { type: "button", class: "btn btn-primary", title: "按当前筛选导出为 imagefolder 数据集（ZIP）" }, "导出数据集");
  const progress = h("p", { class: "export-progress", role: "status", hidden: true });
  exportButton.addEventListener("click", () =>
    exportWithProgress(scope, projectId, filters.body(), { button: exportButton, status: progress }));
  const filters = filterBar(scope, () => reset());
  let selection = selectionBar({ canEdit: false, onAction: act });
  const selectionSlot = h("div", { class: "selection-slot" }, selection.el);
  const listError = h("p", { class: "list-error", role: "alert", hidden: true });
  const loading = h("p", { class: "muted loading", text: "正在加载产出…" });
  const grid = h("div", { class: "gallery-grid", id: "gallery-grid" });
  const emptyText = h("p", { class: "muted" });
  const empty = h("div", { class: "empty", hidden: true }, h("h2", { text: "没有产出" }), emptyText);
  const moreButton = h("button", { type: "button", class: "btn", onclick: () => loadMore() }, "加载更多");
  const more = h("div", { class: "gallery-more", hidden: true }, moreButton);

  main.append(
    h("div", { class: "page-head" },
      h("div", {},
        h("a", { href: "#/", class: "back-link" }, "← 返回个人工作台"),
        title,
        totalText),
      h("div", { class: "page-tools" }, refreshButton, exportButton)),
    progress,
    filters.el,
    selectionSlot,
    listError,
    loading,
    grid,
    empty,
    more,
  );

  // --- the project: its name, and whether the caller may change its outputs -----------------

  async function loadProject() {
    try {
      const project = await get(`/api/projects/${projectId}`);
      if (scope.disposed) return;
      setText(title, `产出 · ${project.name}`);
      document.title = `产出 · ${project.name} · comfyhub`;
      state.canEdit = project.owner_user_id === me.id;
    } catch (error) {
      if (scope.disposed || error.status === 401) return;
      // An admin may still read the outputs of a deleted project.
      setText(title, `产出 · 项目 #${projectId}`);
    }
    if (state.canEdit) {
      selection = selectionBar({ canEdit: true, onAction: act });
      selectionSlot.replaceChildren(selection.el);
    } else {
      refreshButton.title = "只有项目的所有者可以同步；这里重新读取列表";
    }
    render();
  }

  // --- the list ------------------------------------------------------------------------------

  const pageQuery = (offset) => {
    const params = filters.query();
    params.set("limit", String(PAGE));
    params.set("offset", String(offset));
    return `${base}?${params}`;
  };

  /** The first page, merged: new outputs go on top, the loaded pages after it stay. */
  async function loadFirst(isCurrent) {
    const generation = state.generation;
    try {
      const page = await get(pageQuery(0));
      if (!isCurrent() || generation !== state.generation) return;
      const fresh = page.items;
      if (!state.loaded || fresh.length < PAGE) {
        state.items = fresh; // the whole list, or a first look
      } else {
        const ids = new Set(fresh.map((x) => x.id));
        const last = fresh[fresh.length - 1];
        state.items = [...fresh, ...state.items.filter((x) => !ids.has(x.id) && after(x, last))];
      }
      state.total = page.total;
      state.loaded = true;
      show(listError, false);
    } catch (error) {
      if (!isCurrent() || generation !== state.generation) return;
      setText(listError, `读取产出失败：${error.message}`);
      show(listError, true);
    }
    render();
  }
  const list = poll(scope, loadFirst, refreshMs);

  async function loadMore() {
    if (state.loadingMore || state.items.length >= state.total) return;
    const generation = state.generation;
    state.loadingMore = true;
    moreButton.disabled = true;
    try {
      const page = await get(pageQuery(state.items.length));
      if (scope.disposed || generation !== state.generation) return;
      const known = new Set(state.items.map((x) => x.id));
      state.items.push(...page.items.filter((x) => !known.has(x.id)));
      state.total = page.total;
    } catch (error) {
      if (error.status !== 401 && !scope.disposed) toast(error.message, "error");
    } finally {
      state.loadingMore = false;
      moreButton.disabled = false;
    }
    render();
  }

  // Infinite scroll: the 加载更多 button loads the next page once it comes into view.
  if ("IntersectionObserver" in window) {
    const observer = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && state.loaded) loadMore();
    }, { rootMargin: "400px" });
    observer.observe(more);
    scope.controller.signal.addEventListener("abort", () => observer.disconnect(), { once: true });
  }

  /** The filter changed: start over from the first page. */
  function reset() {
    state.generation += 1;
    state.items = [];
    state.total = 0;
    state.loaded = false;
    state.selected.clear();
    state.anchor = null;
    render();
    list.now();
  }

  function render() {
    const present = new Set(state.items.map((x) => x.id));
    for (const id of state.selected) if (!present.has(id)) state.selected.delete(id);
    syncKeyed(grid, state.items, (x) => x.id, (item) => createTile(projectId, item, { onOpen: open, onToggle: toggle }), tiles);
    for (const [id, tile] of tiles) tile.select(state.selected.has(id));
    show(loading, !state.loaded);
    const shown = state.items.length;
    setText(totalText, !state.loaded ? "" : shown < state.total ? `共 ${state.total} 个 · 已加载 ${shown} 个` : `共 ${state.total} 个`);
    show(empty, state.loaded && shown === 0);
    setText(emptyText, filters.active()
      ? "没有符合筛选条件的产出。"
      : "还没有产出。在 ComfyUI 里生成的文件会自动出现在这里。");
    show(more, state.loaded && shown < state.total);
    selection.set(state.selected.size, shown);
  }

  // --- tiles, detail, selection -------------------------------------------------------------

  function open(id) {
    openDetail({
      projectId,
      id,
      list: () => state.items,
      canEdit: state.canEdit,
      trashDays: meta.trash_days,
      within: scope,
      onChanged: (detail) => {
        state.items = state.items.map((x) => (x.id === detail.id ? listItem(detail) : x));
        render();
        list.now(); // it may no longer match the filter
      },
      onDeleted: (gone) => {
        state.items = state.items.filter((x) => x.id !== gone);
        state.total = Math.max(0, state.total - 1);
        render();
        list.now();
      },
    });
  }

  function toggle(id, on, shiftKey) {
    const at = state.items.findIndex((x) => x.id === id);
    const from = shiftKey && state.anchor !== null ? state.items.findIndex((x) => x.id === state.anchor) : -1;
    const [lo, hi] = from >= 0 ? [Math.min(from, at), Math.max(from, at)] : [at, at];
    for (const item of state.items.slice(lo, hi + 1)) {
      if (on) state.selected.add(item.id);
      else state.selected.delete(item.id);
    }
    state.anchor = id;
    render();
  }

  async function act(name, button) {
    const ids = [...state.selected];
    if (name === "clear" || name === "all") {
      state.selected = name === "all" ? new Set(state.items.map((x) => x.id)) : new Set();
      render();
      return;
    }
    if (name === "export") {
      await exportWithProgress(scope, projectId, { ids }, { button, status: progress });
      return;
    }
    let body = { ids, mark: name };
    if (name === "tag") {
      const tag = await askTag(ids.length);
      if (!tag) return;
      body = { ids, add_tags: [tag] };
    } else if (name === "delete") {
      const ok = await confirmDialog({
        title: "删除所选产出",
        message: `确定删除所选的 ${ids.length} 个产出吗？文件会移入实例的回收站（.trash/）${keptFor(meta.trash_days)}。`,
        confirmText: "删除",
        danger: true,
      });
      if (!ok) return;
      body = { ids, delete: true };
    }
    button.disabled = true;
    try {
      const answer = await post(`${base}/selection`, body, { envelope: true });
      toast(answer.msg || "已完成", "success");
      if (name === "delete") state.selected.clear();
    } catch (error) {
      if (error.status !== 401) toast(error.message, "error");
    }
    button.disabled = false;
    if (!scope.disposed) list.now();
  }

  /** 刷新: the owner asks the server to pull and scan now; then the list is read again. */
  async function syncNow() {
    if (state.canEdit) {
      refreshButton.disabled = true;
      try {
        const answer = await post(`${base}/sync`, undefined, { envelope: true });
        toast(answer.msg || "已同步", answer.data && answer.data.new ? "success" : "info");
      } catch (error) {
        if (error.status !== 401) toast(error.message, "error");
      }
      refreshButton.disabled = false;
    }
    if (!scope.disposed) list.now();
  }

  loadProject();
  list.now();
  return () => scope.dispose();
}
