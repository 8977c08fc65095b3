// One job of 批量生成 as a card: its state, a two-colour progress bar (done, failed), the
// counts, speed and ETA, why it is paused or failed, and what can be done with it now.

import { h, setText, show } from "./dom.js";
import { formatDateTime, formatDuration, parseTime } from "./format.js";
import { badge } from "./status.js";

/** Job state → words and colour (the badge of status.js). */
export const JOB_STATES = {
  queued: { label: "排队中", tone: "grey" },
  running: { label: "运行中", tone: "blue" },
  paused: { label: "已暂停", tone: "orange" },
  done: { label: "已完成", tone: "green" },
  failed: { label: "失败", tone: "red" },
  cancelled: { label: "已取消", tone: "grey" },
};

/** An item's state → words (the items table). */
export const ITEM_STATES = {
  pending: { label: "等待中", tone: "grey" },
  running: { label: "运行中", tone: "blue" },
  done: { label: "已完成", tone: "green" },
  failed: { label: "失败", tone: "red" },
  cancelled: { label: "已取消", tone: "grey" },
};

/** States in which the job still changes: the view polls quickly while one is on screen. */
export const LIVE = new Set(["queued", "running"]);

const ACTIONS = {
  pause: { label: "暂停", from: ["queued", "running"] },
  resume: { label: "继续", from: ["paused"] },
  cancel: { label: "取消", from: ["queued", "running", "paused"] },
};

const percent = (part, total) => (total > 0 ? Math.min(100, (100 * part) / total) : 0);

/**
 * A card for `job` of project `projectId`. `canEdit`: the caller owns the project (the
 * buttons); `onAction(job, action, button)` runs 暂停/继续/取消; `onItems(job)` opens
 * 查看各项. Returns {el, update(job)} for syncKeyed.
 */
export function createJobCard(projectId, initial, { canEdit, onAction, onItems }) {
  const titleId = `job-${initial.id}-name`;
  const name = h("h2", { class: "job-name", id: titleId });
  const state = badge(initial.state, JOB_STATES);
  const done = h("span", { class: "bar-done" });
  const failed = h("span", { class: "bar-failed" });
  const bar = h("div", { class: "job-bar", role: "progressbar", "aria-label": "进度", "aria-valuemin": "0" }, done, failed);
  const counts = h("p", { class: "job-counts" });
  const fact = (label, field) => {
    const dd = h("dd");
    return { el: h("div", { class: "meta-row", dataset: { field } }, h("dt", { text: label }), dd), dd };
  };
  const facts = { rate: fact("速度", "rate"), eta: fact("预计剩余", "eta"), created: fact("创建时间", "created"),
    finished: fact("结束时间", "finished") };
  const detail = h("p", { class: "job-detail", role: "status" });

  let current = initial;
  const buttons = Object.entries(ACTIONS).map(([action, { label }]) => {
    const button = h("button", { type: "button", class: action === "cancel" ? "btn btn-ghost-danger" : "btn", dataset: { action } }, label);
    button.addEventListener("click", () => onAction(current, action, button));
    return button;
  });
  const itemsButton = h("button", { type: "button", class: "btn", dataset: { action: "items" } }, "查看各项");
  itemsButton.addEventListener("click", () => onItems(current));
  const outputsLink = h("a", { href: `#/projects/${projectId}/outputs`, class: "btn", dataset: { action: "outputs" } }, "查看产出");

  const el = h("article", { class: "job", dataset: { jobId: initial.id }, "aria-labelledby": titleId },
    h("div", { class: "job-head" }, h("div", { class: "job-heading" }, name, h("span", { class: "job-id muted", text: `#${initial.id}` })), state.el),
    bar,
    counts,
    detail,
    h("dl", { class: "meta job-facts" }, Object.values(facts).map((f) => f.el)),
    h("div", { class: "job-actions" }, itemsButton, outputsLink, canEdit ? buttons : null));

  function update(job) {
    current = job;
    const c = job.counts || {};
    const total = job.total || 0;
    setText(name, job.name);
    state.set(job.state);
    el.dataset.state = job.state;
    done.style.width = `${percent(c.done || 0, total)}%`;
    failed.style.width = `${percent(c.failed || 0, total)}%`;
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuenow", String((c.done || 0) + (c.failed || 0)));
    bar.dataset.done = String(c.done || 0);
    bar.setAttribute("aria-valuetext", `已完成 ${c.done || 0} / ${total}，失败 ${c.failed || 0}`);
    const parts = [`已完成 ${c.done || 0} / ${total}`];
    if (c.failed) parts.push(`失败 ${c.failed}`);
    if (c.running) parts.push(`运行中 ${c.running}`);
    if (c.pending && job.state !== "cancelled") parts.push(`等待 ${c.pending}`);
    if (c.cancelled) parts.push(`已取消 ${c.cancelled}`);
    setText(counts, parts.join(" · "));

    const live = LIVE.has(job.state);
    const rate = Number(job.rate_per_minute) || 0;
    setText(facts.rate.dd, rate ? `${rate >= 10 ? Math.round(rate) : rate.toFixed(1)} 项/分钟` : "—");
    setText(facts.eta.dd, live && job.eta_seconds !== null && job.eta_seconds !== undefined
      ? formatDuration(job.eta_seconds) : "—");
    setText(facts.created.dd, formatDateTime(parseTime(job.created_at)));
    setText(facts.finished.dd, job.finished_at ? formatDateTime(parseTime(job.finished_at)) : "—");
    show(facts.eta.el, live);
    show(facts.finished.el, !live && Boolean(job.finished_at));

    const why = job.state === "paused" || job.state === "failed" ? job.detail || "" : "";
    setText(detail, why);
    show(detail, Boolean(why));
    detail.classList.toggle("detail-warn", job.state === "paused");
    for (const button of buttons) show(button, ACTIONS[button.dataset.action].from.includes(job.state));
  }

  return { el, update };
}
