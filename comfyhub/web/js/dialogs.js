// Modal dialogs built on <dialog>: focus is trapped, Esc closes, focus returns afterwards.

import { get } from "./api.js";
import { h, setText } from "./dom.js";
import { Scope, poll } from "./lifecycle.js";

/**
 * Open a modal dialog. `build(close, scope)` returns the body; `close(value)` ends it.
 * What the body starts on `scope` (timers, polling, listeners) ends when it closes.
 * `within` (a view's Scope): the dialog also closes when that view ends.
 * Resolves with the value passed to close (undefined on Esc or 关闭).
 */
export function modal({ title, className = "", build, within = null }) {
  const opener = document.activeElement;
  const scope = within ? within.child() : new Scope();
  return new Promise((resolve) => {
    let done = false;
    const titleId = `dlg-${Math.random().toString(36).slice(2, 9)}`;
    const dialog = h("dialog", { class: `dialog ${className}`.trim(), "aria-labelledby": titleId });
    const close = (value) => {
      if (done) return;
      done = true;
      scope.dispose();
      if (dialog.open) dialog.close();
      dialog.remove();
      if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
      resolve(value);
    };
    scope.controller.signal.addEventListener("abort", () => close(undefined), { once: true });
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(undefined);
    });
    const header = h(
      "div",
      { class: "dialog-head" },
      h("h2", { id: titleId, text: title }),
      h("button", { type: "button", class: "icon-btn", "aria-label": "关闭", onclick: () => close(undefined) }, "×"),
    );
    dialog.append(header, build(close, scope));
    document.body.append(dialog);
    dialog.showModal();
    const first = dialog.querySelector("[autofocus]");
    if (first) first.focus();
  });
}

/** Ask before something that cannot be undone. Resolves true on 确认. */
export function confirmDialog({ title, message, confirmText = "确认", danger = false }) {
  return modal({
    title,
    className: "dialog-narrow",
    build: (close) =>
      h(
        "div",
        { class: "dialog-body" },
        h("p", { class: "confirm-text", text: message }),
        h(
          "div",
          { class: "dialog-actions" },
          h("button", { type: "button", class: "btn", autofocus: true, onclick: () => close(false) }, "取消"),
          h(
            "button",
            { type: "button", class: danger ? "btn btn-danger" : "btn btn-primary", onclick: () => close(true) },
            confirmText,
          ),
        ),
      ),
  }).then((value) => value === true);
}

const LOG_REFRESH_MS = 2000;

/** The last 200 lines of a project's ComfyUI log, refreshed every 2 s while open and visible. */
export function logDialog(project) {
  const pre = h("pre", { class: "log", tabindex: "0", "aria-label": "日志内容" });
  const info = h("p", { class: "log-info muted" });
  let first = true;
  const load = async (isCurrent) => {
    try {
      const data = await get(`/api/projects/${project.id}/comfy_log?tail=200`);
      if (!isCurrent()) return;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 24;
      const lines = data.lines || [];
      setText(pre, lines.length ? lines.join("\n") : "（暂无日志）");
      setText(info, `${data.log_file ? `${data.log_file} · ` : ""}最后 ${lines.length} 行 · 每 2 秒刷新`);
      if (first || atBottom) pre.scrollTop = pre.scrollHeight;
      first = false;
    } catch (error) {
      if (isCurrent()) setText(info, `读取日志失败：${error.message}`);
    }
  };
  return modal({
    title: `日志 · ${project.name}`,
    className: "dialog-wide",
    build: (close, scope) => {
      poll(scope, load, LOG_REFRESH_MS).now();
      return h(
        "div",
        { class: "dialog-body" },
        info,
        pre,
        h(
          "div",
          { class: "dialog-actions" },
          h("button", { type: "button", class: "btn", autofocus: true, onclick: () => close() }, "关闭"),
        ),
      );
    },
  });
}
