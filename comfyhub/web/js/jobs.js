// 批量生成 (/#/projects/{id}/jobs): a project's jobs, newest first, each with a live
// progress bar; 新建批量任务 opens the form. The list is read every LIVE_MS while a job on
// it still runs (and the tab is visible), else every list refresh period of the site.

import { get, post } from "./api.js";
import { confirmDialog } from "./dialogs.js";
import { h, setText, show, syncKeyed, toast } from "./dom.js";
import { LIVE, createJobCard } from "./job-card.js";
import { jobDialog } from "./job-form.js";
import { itemsDialog } from "./job-items.js";
import { Scope, poll } from "./lifecycle.js";

const LIVE_MS = 1500;

/** Render project `projectId`'s jobs into `main`; returns the function that ends the view. */
export function renderJobs(main, { me, meta, projectId }) {
  document.title = "批量生成 · comfyhub";
  const scope = new Scope();
  const idleMs = Math.max(1, Number(meta.list_refresh_seconds) || 8) * 1000;
  const base = `/api/projects/${projectId}/jobs`;
  const reader = scope.child(); // the polling: ends early when the project cannot be read
  // `known`: whether the caller owns the project is known (the cards are built after it).
  const state = { jobs: [], loaded: false, known: false, canEdit: false, lastRead: 0 };
  const cards = new Map();

  const title = h("h1", { text: "批量生成" });
  const createButton = h("button", { type: "button", class: "btn btn-primary", hidden: true, onclick: () => create() },
    h("span", { "aria-hidden": "true", text: "+" }), "新建批量任务");
  const outputsLink = h("a", { href: `#/projects/${projectId}/outputs`, class: "btn" }, "查看产出");
  const denied = h("div", { class: "notice", hidden: true }, h("h2", { text: "无法查看批量生成" }),
    h("p", { class: "list-error", role: "alert" }), h("a", { href: "#/", class: "btn" }, "返回个人工作台"));
  const listError = h("p", { class: "list-error", role: "alert", hidden: true });
  const loading = h("p", { class: "muted loading", text: "正在加载任务…" });
  const list = h("div", { class: "jobs", id: "job-list" });
  const empty = h("div", { class: "empty", hidden: true }, h("div", { class: "empty-art", "aria-hidden": "true" }),
    h("h2", { text: "还没有批量任务" }),
    h("p", { class: "muted", text: "批量生成用同一个工作流跑一张参数表：每一行是一项，每一列设置一个节点输入。" }));

  main.append(
    h("div", { class: "page-head" },
      h("div", {},
        h("a", { href: "#/", class: "back-link" }, "← 返回个人工作台"),
        title,
        h("p", { class: "muted", text: "comfyhub 逐项提交到项目的 ComfyUI，并记住进度：服务重启或 ComfyUI 崩溃后会接着跑。" })),
      h("div", { class: "page-tools" }, outputsLink, createButton)),
    denied, listError, loading, list, empty);

  // --- the project, and whether the caller may create and steer jobs ------------------------

  async function loadProject() {
    try {
      const project = await get(`/api/projects/${projectId}`);
      if (scope.disposed) return;
      state.canEdit = project.owner_user_id === me.id;
      setText(title, `批量生成 · ${project.name}`);
      document.title = `批量生成 · ${project.name} · comfyhub`;
      show(createButton, state.canEdit);
    } catch (error) {
      if (scope.disposed || error.status === 401) return;
      if (error.status === 403 || error.status === 404) {
        refuse(error);
        return;
      }
      setText(title, `批量生成 · 项目 #${projectId}`); // read-only until the page is loaded again
    }
    state.known = true;
    render();
  }

  /** 403 / 404: say why, and ask nothing more. */
  function refuse(error) {
    reader.dispose();
    setText(denied.querySelector("p"), error.message);
    show(denied, true);
    for (const el of [listError, loading, list, empty, createButton, outputsLink]) show(el, false);
  }

  // --- the list ------------------------------------------------------------------------------

  async function load(isCurrent) {
    const live = state.jobs.some((j) => LIVE.has(j.state));
    if (state.loaded && !live && Date.now() - state.lastRead < idleMs - LIVE_MS / 2) return;
    try {
      const jobs = await get(base);
      if (!isCurrent()) return;
      state.jobs = jobs;
      state.loaded = true;
      state.lastRead = Date.now();
      show(listError, false);
    } catch (error) {
      if (!isCurrent() || error.status === 401) return;
      if (error.status === 403 || error.status === 404) {
        refuse(error);
        return;
      }
      setText(listError, `读取任务失败：${error.message}`);
      show(listError, true);
    }
    render();
  }
  const poller = poll(reader, load, LIVE_MS);
  const refresh = () => {
    state.lastRead = 0;
    poller.now();
  };

  function render() {
    if (!state.known || !denied.hidden) return;
    syncKeyed(list, state.jobs, (j) => j.id,
      (job) => createJobCard(projectId, job, { canEdit: state.canEdit, onAction: act, onItems: items }), cards);
    show(loading, !state.loaded);
    show(empty, state.loaded && state.jobs.length === 0);
  }

  // --- actions -------------------------------------------------------------------------------

  async function act(job, action, button) {
    if (action === "cancel") {
      const ok = await confirmDialog({
        title: "取消任务",
        message: `确定取消任务“${job.name}”吗？还没开始的项不再提交，正在 ComfyUI 中运行的项会跑完；已完成的产出保留。`,
        confirmText: "取消任务",
        danger: true,
      });
      if (!ok || scope.disposed) return;
    }
    button.disabled = true;
    try {
      const answer = await post(`${base}/${job.id}/${action}`, undefined, { envelope: true });
      if (answer.data) state.jobs = state.jobs.map((j) => (j.id === job.id ? answer.data : j));
      render();
      toast(answer.msg || "已完成", "success");
    } catch (error) {
      if (error.status !== 401) toast(error.message, "error");
    }
    button.disabled = false;
    if (!scope.disposed) refresh();
  }

  function items(job) {
    itemsDialog({ projectId, job, within: scope });
  }

  async function create() {
    const created = await jobDialog({ projectId, within: scope });
    if (!created || scope.disposed) return;
    toast(`任务已创建，共 ${created.total} 项`, "success");
    state.jobs = [{ id: created.id, name: created.name, state: "queued", total: created.total, counts: {},
      columns: created.columns, detail: "" }, ...state.jobs.filter((j) => j.id !== created.id)];
    render();
    refresh();
  }

  loadProject();
  poller.now();
  return () => scope.dispose();
}
