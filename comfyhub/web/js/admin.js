// 管理 (/admin): every user's ComfyUI instances, the users, the audit events, and the
// deleted projects (whose outputs are kept).

import { deletedProjectsPanel } from "./admin-deleted.js";
import { get, post } from "./api.js";
import { confirmDialog } from "./dialogs.js";
import { h, setText, show, syncKeyed, toast } from "./dom.js";
import { formatAgo, formatDateTime, formatDuration, parseTime } from "./format.js";
import { Scope, poll } from "./lifecycle.js";
import { EVENT_OUTCOMES, RUNNING, actionWord, badge as statusBadge } from "./status.js";

/** Render the admin page into `main`; returns the function that ends its timers and listeners. */
export function renderAdmin(main, { me, meta }) {
  document.title = "管理 · comfyhub";
  if (!me.is_admin) {
    main.append(h("section", { class: "panel notice" },
      h("h1", { text: "无操作权限" }),
      h("p", { class: "muted", text: "只有管理员可以查看此页面。" }),
      h("a", { href: "/", class: "btn btn-primary" }, "返回个人工作台")));
    return () => {};
  }
  const scope = new Scope();
  const refreshMs = Math.max(1, Number(meta.list_refresh_seconds) || 8) * 1000;

  // --- ComfyUI 实例 ------------------------------------------------------------------------

  const servicesBody = h("tbody");
  const servicesCount = h("span", { class: "count" });
  const servicesEmpty = h("p", { class: "muted table-empty", text: "还没有任何实例。", hidden: true });
  const servicesError = h("p", { class: "list-error", role: "alert", hidden: true });
  const serviceRows = new Map();
  const th = (text) => h("th", { scope: "col", text });

  const servicesPanel = h("section", { class: "panel", "aria-labelledby": "services-title", id: "admin-services" },
    h("div", { class: "panel-head" }, h("h2", { id: "services-title", text: "ComfyUI 实例" }), servicesCount),
    servicesError,
    h("div", { class: "table-wrap" },
      h("table", { class: "table" },
        h("thead", {}, h("tr", {},
          th("用户"), th("项目"), th("状态"), th("端口"), th("PID"), th("运行时长"), th("最近活动"),
          h("th", { scope: "col" }, h("span", { class: "sr-only", text: "操作" })))),
        servicesBody)),
    servicesEmpty);

  function createServiceRow(initial) {
    const cells = {
      user: h("td"), project: h("td"), state: h("td"), port: h("td", { class: "num" }), pid: h("td", { class: "num" }),
      uptime: h("td"), activity: h("td"), action: h("td", { class: "actions-cell" }),
    };
    const projectName = h("span", { class: "strong" });
    const projectCode = h("span", { class: "muted small" });
    cells.project.append(projectName, h("br"), projectCode);
    const badge = statusBadge(initial.status);
    cells.state.append(badge.el);
    const stopButton = h("button", { type: "button", class: "btn btn-sm" }, "停止");
    cells.action.append(stopButton);
    const el = h("tr", { dataset: { projectId: initial.project_id } }, Object.values(cells));
    let current = initial;
    stopButton.addEventListener("click", () => stopService(current, stopButton));

    function tick() {
      const now = Date.now();
      const started = parseTime(current.started_at);
      setText(cells.uptime, RUNNING.has(current.status) && started ? formatDuration((now - started) / 1000) : "—");
      const activity = parseTime(current.last_activity);
      setText(cells.activity, activity ? formatAgo(activity, now) : "—");
      cells.activity.title = activity ? formatDateTime(activity) : "";
    }

    function update(s) {
      current = s;
      setText(cells.user, s.username);
      setText(projectName, s.project_name);
      setText(projectCode, s.project_code);
      badge.set(s.status);
      const running = RUNNING.has(s.status);
      setText(cells.port, running && s.port ? String(s.port) : "—");
      setText(cells.pid, running && s.pid ? String(s.pid) : "—");
      show(stopButton, running);
      stopButton.setAttribute("aria-label", `停止 ${s.username} 的 ${s.project_name}`);
      tick();
    }

    return { el, update, tick };
  }

  async function stopService(s, button) {
    const ok = await confirmDialog({
      title: "停止实例",
      message: `确定停止 ${s.username} 的项目“${s.project_name}”的 ComfyUI 吗？未完成的任务会中断，文件会保留。`,
      confirmText: "停止",
      danger: true,
    });
    if (!ok) return;
    button.disabled = true;
    try {
      await post(`/api/admin/services/${s.project_id}/stop`);
      toast("实例已停止", "success");
    } catch (error) {
      if (error.status !== 401) toast(error.message, "error");
    }
    button.disabled = false;
    refresh();
  }

  // --- 用户 ----------------------------------------------------------------------------------

  const usersBody = h("tbody");
  const usersCount = h("span", { class: "count" });
  const userRows = new Map();
  const usersPanel = h("section", { class: "panel", "aria-labelledby": "users-title", id: "admin-users" },
    h("div", { class: "panel-head" }, h("h2", { id: "users-title", text: "用户" }), usersCount),
    h("div", { class: "table-wrap" },
      h("table", { class: "table" },
        h("thead", {}, h("tr", {}, th("用户名"), th("角色"), th("创建时间"))),
        usersBody)));

  function createUserRow() {
    const name = h("td", { class: "strong" });
    const role = h("td");
    const created = h("td");
    const el = h("tr", {}, name, role, created);
    return {
      el,
      update(u) {
        setText(name, u.username);
        setText(role, u.is_admin ? "管理员" : "用户");
        setText(created, formatDateTime(parseTime(u.created_at)));
      },
    };
  }

  // --- 事件 ----------------------------------------------------------------------------------
  // GET /api/admin/events (the audit trail). A deployment without it answers 404: then
  // this section hides itself.
  const eventsBody = h("tbody");
  const eventsNote = h("p", { class: "muted table-empty", text: "正在读取事件…" });
  const eventsTable = h("div", { class: "table-wrap", hidden: true },
    h("table", { class: "table" },
      h("thead", {}, h("tr", {}, th("时间"), th("操作者"), th("动作"), th("项目"), th("结果"), th("详情"))),
      eventsBody));
  const eventsPanel = h("section", {
    class: "panel", "aria-labelledby": "events-title", id: "admin-events", dataset: { placeholder: "events" },
  },
  h("div", { class: "panel-head" }, h("h2", { id: "events-title", text: "事件" }),
    h("span", { class: "count", text: "最近 100 条" })),
  eventsNote,
  eventsTable);
  const eventRows = new Map();

  function createEventRow() {
    const cells = [h("td"), h("td"), h("td"), h("td"), h("td"), h("td", { class: "detail-cell" })];
    const outcome = statusBadge(null, EVENT_OUTCOMES);
    return {
      el: h("tr", {}, cells),
      update(e) {
        const when = parseTime(e.at);
        setText(cells[0], when ? formatDateTime(when) : "—");
        setText(cells[1], e.actor || "—");
        setText(cells[2], actionWord(e.action));
        const project = projectNames.get(e.project_id);
        setText(cells[3], e.project_id ? `${project ? `${project} ` : ""}#${e.project_id}` : "—");
        if (e.outcome) outcome.set(e.outcome);
        cells[4].replaceChildren(e.outcome ? outcome.el : "—");
        const detail = String(e.detail || "");
        setText(cells[5], detail.split("\n")[0] || "—");
        cells[5].title = detail;
      },
    };
  }

  async function loadEvents(isCurrent) {
    try {
      const events = await get("/api/admin/events?limit=100");
      if (!isCurrent()) return;
      const items = Array.isArray(events) ? events : [];
      syncKeyed(eventsBody, items, (e) => e.id, createEventRow, eventRows);
      setText(eventsNote, "暂无事件。");
      show(eventsNote, items.length === 0);
      show(eventsTable, items.length > 0);
    } catch (error) {
      if (!isCurrent()) return;
      if (error.status === 404) show(eventsPanel, false); // no events API in this deployment
      else setText(eventsNote, `读取事件失败：${error.message}`);
    }
  }

  const deleted = deletedProjectsPanel(scope, () => refresh());

  main.append(
    h("div", { class: "page-head" },
      h("div", {},
        h("h1", { text: "管理" }),
        h("p", { class: "muted", text: "所有用户的 ComfyUI 实例、账户、事件和已删除的项目。" }))),
    servicesPanel,
    usersPanel,
    eventsPanel,
    deleted.el,
  );

  const projectNames = new Map();
  // A newer refresh (e.g. after 停止) wins over older answers: isCurrent().
  async function loadAll(isCurrent) {
    try {
      const [services, users, pool] = await Promise.all([
        get("/api/admin/services"), get("/api/admin/users"), get("/api/admin/pool").catch(() => null)]);
      if (!isCurrent()) return;
      for (const s of services) projectNames.set(s.project_id, s.project_name);
      syncKeyed(servicesBody, services, (s) => s.project_id, createServiceRow, serviceRows);
      show(servicesEmpty, services.length === 0);
      const live = services.filter((s) => RUNNING.has(s.status)).length;
      // Warm instances (the pool) belong to no project: a count here, not rows.
      const warmList = pool && Array.isArray(pool.instances) ? pool.instances : [];
      const ready = warmList.filter((i) => i.status === "online").length;
      const warm = pool && pool.size ? ` · 预热 ${ready}/${pool.size}` : "";
      setText(servicesCount, `共 ${services.length} 个 · 运行中 ${live} 个${warm}`);
      syncKeyed(usersBody, users, (u) => u.id, createUserRow, userRows);
      setText(usersCount, `共 ${users.length} 人`);
      show(servicesError, false);
      if (!eventsPanel.hidden) await loadEvents(isCurrent);
      if (!deleted.el.hidden) await deleted.load(isCurrent);
    } catch (error) {
      if (!isCurrent()) return;
      setText(servicesError, `刷新失败：${error.message}`);
      show(servicesError, true);
    }
  }
  const lists = poll(scope, loadAll, refreshMs);
  const refresh = () => lists.now();

  // The 运行时长 and 最近活动 counters: every second while the tab is visible.
  poll(scope, () => {
    for (const row of serviceRows.values()) row.tick();
  }, 1000).now();
  refresh();
  return () => scope.dispose();
}
