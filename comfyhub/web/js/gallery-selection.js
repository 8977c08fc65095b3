// The bar shown while tiles are selected: what can be done to all of them at once.

import { h, setText, show } from "./dom.js";
import { modal } from "./dialogs.js";

/** Ask for one tag to add; resolves with it, or null. */
export function askTag(count) {
  return modal({
    title: "加标签",
    className: "dialog-narrow",
    build: (close) => {
      const input = h("input", { id: "selection-tag", type: "text", maxlength: "64", autocomplete: "off", autofocus: true });
      const error = h("p", { class: "field-error", hidden: true, text: "请输入标签" });
      const submit = (event) => {
        event.preventDefault();
        const tag = input.value.trim();
        if (!tag) {
          show(error, true);
          input.focus();
          return;
        }
        close(tag);
      };
      return h("form", { class: "dialog-body", onsubmit: submit },
        h("div", { class: "field" },
          h("label", { for: "selection-tag", text: `给所选的 ${count} 个产出加上标签` }),
          input,
          error),
        h("div", { class: "dialog-actions" },
          h("button", { type: "button", class: "btn", onclick: () => close(null) }, "取消"),
          h("button", { type: "submit", class: "btn btn-primary" }, "加标签")));
    },
  }).then((tag) => tag || null);
}

/**
 * The selection bar. `onAction(name, button)` runs for pass, fail, tag, delete, export,
 * all and clear. `canEdit`: the caller owns the project (else only export and select).
 * Returns {el, set(selected, loaded)}.
 */
export function selectionBar({ canEdit, onAction }) {
  const count = h("span", { class: "selection-count", "aria-live": "polite" });
  const button = (name, label, className = "btn btn-sm", edit = true) => {
    if (edit && !canEdit) return null;
    const el = h("button", { type: "button", class: className, dataset: { action: name } }, label);
    el.addEventListener("click", () => onAction(name, el));
    return el;
  };
  const all = button("all", "全选已加载", "btn btn-sm btn-ghost", false);
  const el = h("div", { class: "selection-bar", role: "region", "aria-label": "所选产出", hidden: true },
    count,
    h("div", { class: "selection-actions" },
      button("pass", "标为通过"),
      button("fail", "标为不通过"),
      button("tag", "加标签"),
      button("delete", "删除", "btn btn-sm btn-ghost btn-ghost-danger"),
      button("export", "导出所选", "btn btn-sm btn-primary", false),
      all,
      button("clear", "取消选择", "btn btn-sm btn-ghost", false)));

  function set(selected, loaded) {
    setText(count, `已选 ${selected} 项`);
    show(el, selected > 0);
    show(all, selected < loaded);
  }

  return { el, set };
}
