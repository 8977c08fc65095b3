// Every word the pages show for a state: an instance's status, and an audit event's
// action and outcome. One table each, one badge renderer; the workbench and the admin
// page both read them from here, so a status is named the same everywhere.

import { h, setText } from "./dom.js";

/** Instance status → label and colour. `none`: the project has no instance yet. */
export const STATUSES = {
  starting: { label: "启动中", tone: "blue" },
  online: { label: "已连接", tone: "green" },
  offline: { label: "连接中断", tone: "orange" },
  failed: { label: "启动失败", tone: "red" },
  stopped: { label: "已停止", tone: "grey" },
  none: { label: "未启动", tone: "grey" },
};

/** Statuses in which a process may be running (a 停止 makes sense). */
export const RUNNING = new Set(["starting", "online", "offline"]);

/** Audit event action (what was done) → words. */
export const EVENT_ACTIONS = {
  start: "启动",
  stop: "停止",
  cull: "空闲回收",
  crash: "异常退出",
  restart: "自动重启",
};

/**
 * Audit event outcome → label and colour. A start ends `online`, `failed`, `cancelled`
 * (停止 while it started) or `overtaken` (a newer start or stop took its place); a stop
 * or cull ends `stopped`; a crash leaves the instance `offline`.
 */
export const EVENT_OUTCOMES = {
  ...STATUSES,
  cancelled: { label: "已取消", tone: "grey" },
  overtaken: { label: "已被取代", tone: "grey" },
};

/** The entry for `key` (null/"" → `none`); an unknown key shows itself, in grey. */
export function lookup(table, key) {
  const name = key || "none";
  return table[name] || { label: String(name), tone: "grey" };
}

export const statusOf = (status) => lookup(STATUSES, status);
export const actionWord = (action) => (action ? EVENT_ACTIONS[action] || String(action) : "—");

/**
 * The one badge: a coloured pill with a dot and a word. `badge.set(key)` changes it in
 * place (the text node is touched only when the word changes: screen readers stay quiet).
 */
export function badge(key, table = STATUSES) {
  const label = h("span", { class: "badge-label" });
  const el = h("span", { class: "badge" }, h("span", { class: "dot", "aria-hidden": "true" }), label);
  const set = (value) => {
    const look = lookup(table, value);
    el.className = `badge tone-${look.tone}`;
    el.dataset.state = value || "none";
    setText(label, look.label);
  };
  set(key);
  return { el, set };
}
