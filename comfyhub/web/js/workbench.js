// 个人工作台 (/): the caller's project cards, 数据生成, 停止, logs, 产出, 批量生成, create / edit / delete.

import { del, get, post } from "./api.js";
import { confirmDialog, logDialog } from "./dialogs.js";
import { h, setText, show, syncKeyed, toast } from "./dom.js";
import { formatAgo, formatDateTime, formatDuration, parseTime, splitError } from "./format.js";
import { icon } from "./icons.js";
import { Scope, poll } from "./lifecycle.js";
import { openPendingTab } from "./pending-tab.js";
import { savedScope, saveScope } from "./prefs.js";
import { projectDialog } from "./project-form.js";
import { RUNNING, badge as statusBadge, statusOf } from "./status.js";
import { confirmStop, stopInstance } from "./stop-comfy.js";

/** Render the workbench into `main`; returns the function that ends its timers and listeners. */
export function renderWorkbench(main, { me, meta }) {
  document.title = "个人工作台 · comfyhub";
  const refreshMs = Math.max(1, Number(meta.list_refresh_seconds) || 8) * 1000;
  const state = {
    scope: me.is_admin ? savedScope() : "mine",
    projects: [],
    loaded: false,
    flights: new Map(), // project id → {since}: an open_comfy request in flight
    failures: new Map(), // project id → {error}: the last 数据生成 failed here
    limits: new Map(), // project id → msg: the last 数据生成 was refused by an instance limit (429)
    busy: new Set(), // project ids with a stop request in flight
  };
  const cards = new Map();
  const scope = new Scope();

  // --- page head -------------------------------------------------------------------------

  const scopeButtons = ["mine", "all"].map((scope) =>
    h("button", {
      type: "button",
      class: "seg",
      dataset: { scope },
      onclick: () => {
        if (state.scope === scope) return;
        state.scope = scope;
        saveScope(scope);
        syncScope();
        refresh();
      },
    }, scope === "mine" ? "我的项目" : "全部项目"));
  const syncScope = () => {
    for (const button of scopeButtons) {
      button.setAttribute("aria-pressed", String(button.dataset.scope === state.scope));
    }
  };
  syncScope();
  const scopeSwitch = me.is_admin
    ? h("div", { class: "segmented", role: "group", "aria-label": "项目范围" }, scopeButtons)
    : null;
  const createButton = h("button", { type: "button", class: "btn btn-primary", onclick: () => editProject(null) },
    h("span", { "aria-hidden": "true", text: "+" }), "新建项目");

  const listError = h("p", { class: "list-error", role: "alert", hidden: true });
  const grid = h("div", { class: "cards", id: "project-cards" });
  const loading = h("p", { class: "muted loading", text: "正在加载项目…" });
  const emptyText = h("p", { class: "muted" });
  const empty = h("div", { class: "empty", hidden: true },
    h("div", { class: "empty-art", "aria-hidden": "true" }),
    h("h2", { text: "还没有项目" }),
    emptyText,
    h("button", { type: "button", class: "btn btn-primary", onclick: () => editProject(null) }, "新建项目"));

  main.append(
    h("div", { class: "page-head" },
      h("div", {},
        h("h1", { text: "个人工作台" }),
        h("p", { class: "muted", text: "每个项目一个专属 ComfyUI：点击“数据生成”即可打开，需要时自动启动。" })),
      h("div", { class: "page-tools" }, scopeSwitch, createButton)),
    listError,
    loading,
    grid,
    empty,
  );

  // --- the list --------------------------------------------------------------------------

  // A newer refresh (e.g. after an action) wins over older answers: isCurrent().
  async function loadList(isCurrent) {
    try {
      const query = me.is_admin ? `?scope=${state.scope}` : "";
      const projects = await get(`/api/projects${query}`);
      if (!isCurrent()) return;
      state.projects = projects;
      state.loaded = true;
      show(listError, false);
      renderCards();
    } catch (error) {
      if (!isCurrent()) return;
      setText(listError, `刷新项目列表失败：${error.message}`);
      show(listError, true);
    }
  }
  const list = poll(scope, loadList, refreshMs);
  const refresh = () => list.now();

  function renderCards() {
    show(loading, !state.loaded);
    syncKeyed(grid, state.projects, (p) => p.id, createCard, cards);
    const none = state.loaded && state.projects.length === 0;
    show(empty, none);
    setText(emptyText, state.scope === "all" && me.is_admin
      ? "系统中还没有任何项目。"
      : "新建一个项目，然后点击“数据生成”打开它的 ComfyUI。");
  }

  function project(id) {
    return state.projects.find((p) => p.id === id);
  }

  /** Apply what an action answered, so the card is right before the next list arrives. */
  function patchService(id, values) {
    const p = project(id);
    if (p) p.service = { ...(p.service || {}), ...values };
  }

  // --- one card --------------------------------------------------------------------------

  /** What the card shows: the server's state, overridden by what this page is doing. */
  function cardState(p) {
    const s = p.service;
    const status = s ? s.status : null;
    const flight = state.flights.get(p.id);
    if (flight) return { status: "starting", since: flight.since };
    if (status === "starting") {
      const started = parseTime(s.started_at);
      return { status, since: started ? started.getTime() : null };
    }
    if (status === "online") return { status };
    const local = state.failures.get(p.id);
    if (status === "failed") return { status, error: s.last_error || (local && local.error) };
    if (local) return { status: "failed", error: local.error };
    return { status };
  }

  function createCard(initial) {
    const id = initial.id;
    const nameId = `project-${id}-name`;
    const name = h("h2", { class: "card-title", id: nameId });
    const code = h("span", { class: "code" });
    const badge = statusBadge(null);
    const elapsed = h("span", { class: "elapsed", hidden: true });
    const note = h("p", { class: "note" });

    const row = (label, field) => {
      const dd = h("dd");
      const dt = h("dt", { text: label });
      const el = h("div", { class: "meta-row", dataset: { field } }, dt, dd);
      return { el, dt, dd };
    };
    const rows = {
      owner: row("所有者", "owner"),
      port: row("端口", "port"),
      started: row("启动时间", "started"),
      heartbeat: row("最近心跳", "heartbeat"),
      gpu: row("GPU", "gpu"),
    };
    const detail = h("p", { class: "detail" });
    const failReason = h("p", { class: "failure-reason" });
    const failTail = h("pre", { class: "failure-tail" });
    const failure = h("div", { class: "failure", role: "alert" },
      h("span", { class: "failure-title", text: "启动失败原因" }), failReason, failTail);
    const limit = h("p", { class: "limit-notice", role: "alert" }); // not a failure: nothing was started

    const openButton = h("button", { type: "button", class: "btn btn-primary", dataset: { action: "open" } }, "数据生成");
    const stopButton = h("button", { type: "button", class: "btn", dataset: { action: "stop" } }, "停止");
    const logButton = h("button", { type: "button", class: "btn", dataset: { action: "log" } }, "查看日志");
    const outputsLink = h("a", { href: `#/projects/${id}/outputs`, class: "btn", dataset: { action: "outputs" } }, "产出");
    const jobsLink = h("a", { href: `#/projects/${id}/jobs`, class: "btn", dataset: { action: "jobs" } }, "批量生成");
    const editButton = h("button", {
      type: "button", class: "btn btn-ghost btn-icon", "aria-label": "编辑", title: "编辑项目", dataset: { action: "edit" },
    }, icon("edit"));
    const deleteButton = h("button", {
      type: "button", class: "btn btn-ghost btn-ghost-danger btn-icon", "aria-label": "删除", title: "删除项目",
      dataset: { action: "delete" },
    }, icon("delete"));

    openButton.addEventListener("click", () => openComfy(id));
    stopButton.addEventListener("click", () => stopComfy(id));
    logButton.addEventListener("click", () => { const p = project(id); if (p) logDialog(p); });
    editButton.addEventListener("click", () => { const p = project(id); if (p) editProject(p); });
    deleteButton.addEventListener("click", () => deleteProject(id));

    const el = h("article", { class: "card", dataset: { projectId: id }, "aria-labelledby": nameId },
      h("div", { class: "card-head" },
        h("div", { class: "card-heading" }, name, h("div", { class: "code-line" }, "项目号 ", code)),
        h("div", { class: "state" }, badge.el, elapsed)),
      note,
      h("dl", { class: "meta" }, Object.values(rows).map((r) => r.el)),
      detail,
      limit,
      failure,
      h("div", { class: "card-actions" },
        h("div", { class: "actions-main" }, openButton, stopButton, logButton, outputsLink, jobsLink),
        h("div", { class: "actions-side" }, editButton, deleteButton)));

    let current = initial;
    let since = null;

    function tick() {
      const now = Date.now();
      if (since !== null) setText(elapsed, `已用 ${formatDuration((now - since) / 1000)}`);
      const s = current.service;
      const beat = s && RUNNING.has(s.status) && parseTime(s.last_heartbeat);
      setText(rows.heartbeat.dd, beat ? formatAgo(beat, now) : "—");
      if (beat) rows.heartbeat.dd.title = formatDateTime(beat);
    }

    function update(p) {
      current = p;
      const s = p.service;
      const view = cardState(p);
      const look = statusOf(view.status);
      const mine = p.owner_user_id === me.id;

      setText(name, p.name);
      setText(code, p.code);
      setText(note, p.note);
      show(note, Boolean(p.note));

      badge.set(view.status);
      el.dataset.state = view.status || "none";
      since = view.status === "starting" ? view.since : null;
      show(elapsed, since !== null);

      show(rows.owner.el, me.is_admin);
      setText(rows.owner.dd, p.owner_username || `#${p.owner_user_id}`);
      const running = RUNNING.has(view.status);
      setText(rows.port.dd, running && s && s.port ? String(s.port) : "—");
      setText(rows.started.dt, running ? "启动时间" : "上次启动"); // a stopped card's time is history
      setText(rows.started.dd, s && s.started_at ? formatDateTime(parseTime(s.started_at)) : "—");
      show(rows.gpu.el, Boolean(s && s.gpu));
      setText(rows.gpu.dd, s && s.gpu ? String(s.gpu) : "");

      const refused = state.limits.get(p.id);
      let text = "";
      if (s && s.status_detail && s.status_detail !== look.label) text = s.status_detail;
      else if (view.status === "offline") {
        const why = s && s.last_error ? splitError(s.last_error).reason : "健康检查失败";
        text = `${why}。点击“数据生成”重新连接。`;
      } else if (view.status === "stopped" && s && s.stopped_reason) text = `停止原因：${s.stopped_reason}`;
      else if (!refused && (view.status === null || view.status === "none")) {
        text = mine ? "尚未启动。点击“数据生成”启动 ComfyUI。" : "尚未启动。"; // the limit notice says what to do instead
      }
      setText(detail, text);
      show(detail, Boolean(text));
      detail.classList.toggle("detail-warn", view.status === "offline");

      const failed = view.status === "failed";
      show(failure, failed);
      if (failed) {
        const { reason, tail } = splitError(view.error);
        setText(failReason, reason);
        setText(failTail, tail.join("\n"));
        show(failTail, tail.length > 0);
      }

      setText(limit, refused || "");
      show(limit, Boolean(refused));

      const inFlight = state.flights.has(p.id);
      const stopping = state.busy.has(p.id);
      show(openButton, mine);
      show(jobsLink, mine); // jobs are the owner's: an admin reads them by URL only
      openButton.disabled = inFlight || stopping;
      openButton.classList.toggle("is-busy", inFlight);
      openButton.setAttribute("aria-busy", String(inFlight));
      show(stopButton, (mine || me.is_admin) && (running || inFlight)); // an admin: by the admin route
      stopButton.disabled = stopping;
      show(logButton, Boolean(s) || inFlight); // while a first start loads, its log is the only news
      deleteButton.disabled = stopping;
      tick();
    }

    return { el, update, tick };
  }

  // The "已用 N 秒" and "最近心跳" counters: every second while the tab is visible.
  poll(scope, () => {
    for (const card of cards.values()) card.tick();
  }, 1000).now();

  // --- actions ---------------------------------------------------------------------------

  async function openComfy(id) {
    const p = project(id);
    if (!p || state.flights.has(id)) return; // one start per card at a time
    const tab = openPendingTab(p);
    state.flights.set(id, { since: Date.now() });
    state.failures.delete(id);
    state.limits.delete(id);
    renderCards();
    try {
      const data = await post(`/api/projects/${id}/open_comfy`);
      state.flights.delete(id);
      patchService(id, { status: data.status, port: data.port, started_at: data.started_at,
        comfy_url: data.comfy_url, last_error: data.last_error || "", status_detail: "" });
      if (tab && !tab.closed) {
        tab.location.replace(data.comfy_url);
      } else {
        toast("ComfyUI 已就绪", "success",
          h("a", { href: data.comfy_url, target: "_blank", rel: "noopener" }, "打开 ComfyUI"));
      }
    } catch (error) {
      state.flights.delete(id);
      if (tab && !tab.closed) tab.close();
      if (error.status === 409) {
        toast(error.message, "info"); // the start was cancelled (停止 while starting)
      } else if (error.status === 429) {
        state.limits.set(id, error.message); // on the card until the next 数据生成 or 停止
      } else if (error.status !== 401) {
        const data = error.data || {};
        const reason = data.last_error || (data.hint ? `${error.message}：${data.hint}` : error.message);
        state.failures.set(id, { error: reason });
        if (data.last_error) patchService(id, { status: "failed", last_error: data.last_error });
        toast(error.message, "error");
      }
    }
    renderCards();
    refresh();
  }

  async function stopComfy(id) {
    const p = project(id);
    if (!p || state.busy.has(id)) return;
    state.busy.add(id);
    renderCards();
    try {
      if (await confirmStop(p, me)) {
        const service = await stopInstance(p, me);
        state.failures.delete(id);
        state.limits.clear(); // a slot is free now: the limit no longer stands in the way
        if (service) patchService(id, service);
        toast("ComfyUI 已停止", "success");
      }
    } catch (error) {
      if (error.status !== 401) toast(error.message, "error");
    }
    state.busy.delete(id);
    renderCards();
    refresh();
  }

  async function deleteProject(id) {
    const p = project(id);
    if (!p) return;
    const ok = await confirmDialog({
      title: "删除项目",
      message: `确定删除项目“${p.name}”（${p.code}）吗？正在运行的 ComfyUI 会被停止；它的产出文件和生成记录会保留在服务器上，管理员可以恢复或导出。`,
      confirmText: "删除",
      danger: true,
    });
    if (!ok) return;
    try {
      const answer = await del(`/api/projects/${id}`, { envelope: true });
      state.projects = state.projects.filter((x) => x.id !== id);
      state.flights.delete(id);
      state.failures.delete(id);
      renderCards();
      toast(answer.msg || "项目已删除", "success");
    } catch (error) {
      if (error.status !== 401) toast(error.message, "error");
    }
    refresh();
  }

  /** Create (`p` null) or edit a project in a dialog; then the list is fetched again. */
  async function editProject(p) {
    const saved = await projectDialog(p);
    if (saved) {
      toast(p === null ? "项目已创建" : "项目已更新", "success");
      refresh();
    }
  }

  refresh();
  return () => scope.dispose();
}
