// The grid editor of 新建批量任务: one row per column, a field (NODE_ID.input, suggested
// from the workflow) and its values, one per line. The job is every combination.

import { h } from "./dom.js";

/**
 * `listId`: the <datalist> of the workflow's inputs the field boxes suggest from;
 * `onChange()`: called on every edit. Returns {el, rows(), mark(column)}.
 */
export function gridEditor({ listId, onChange }) {
  const rowsEl = h("div", { class: "grid-rows" });
  let count = 0;

  function addRow(field = "", values = "") {
    count += 1;
    const n = count;
    const fieldInput = h("input", { id: `jg-field-${n}`, class: "grid-field", list: listId, autocomplete: "off",
      spellcheck: "false", placeholder: "如 6.text", value: field });
    const valuesInput = h("textarea", { id: `jg-values-${n}`, class: "grid-values", rows: "3", spellcheck: "false",
      placeholder: "每行一个取值" });
    valuesInput.value = values;
    const remove = h("button", { type: "button", class: "btn btn-ghost btn-sm", "aria-label": `删除第 ${n} 列` }, "删除");
    const row = h("div", { class: "grid-row" },
      h("div", { class: "grid-cell" }, h("label", { for: fieldInput.id, text: `列 ${n}：字段` }), fieldInput),
      h("div", { class: "grid-cell grid-cell-wide" }, h("label", { for: valuesInput.id, text: `列 ${n}：取值（每行一个）` }), valuesInput),
      remove);
    remove.addEventListener("click", () => {
      row.remove();
      if (!rowsEl.children.length) addRow();
      onChange();
    });
    for (const input of [fieldInput, valuesInput]) {
      input.addEventListener("input", () => {
        input.removeAttribute("aria-invalid");
        onChange();
      });
    }
    rowsEl.append(row);
    return fieldInput;
  }

  const add = h("button", { type: "button", class: "btn btn-sm" }, "+ 添加一列");
  add.addEventListener("click", () => {
    addRow().focus();
    onChange();
  });
  addRow();

  const fields = () => [...rowsEl.querySelectorAll(".grid-row")].map((row) => ({
    input: row.querySelector(".grid-field"),
    field: row.querySelector(".grid-field").value,
    text: row.querySelector(".grid-values").value,
  }));

  return {
    el: h("div", { class: "grid-editor" }, rowsEl, add),
    rows: () => fields().map(({ field, text }) => ({ field, text })),
    /** Point at the row of `column` (the server named it); false when no row has it. */
    mark(column) {
      const hit = fields().find((f) => f.field.trim() === column);
      if (hit) {
        hit.input.setAttribute("aria-invalid", "true");
        hit.input.focus();
      }
      return Boolean(hit);
    },
  };
}
