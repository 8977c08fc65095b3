// 新建项目 / 编辑项目: the form in a dialog.

import { post, put } from "./api.js";
import { modal } from "./dialogs.js";
import { h } from "./dom.js";
import { clearErrors, formField, showErrors } from "./forms.js";

const LABELS = { name: "名称", code: "项目号", note: "备注" };

/**
 * The dialog that creates (`p` null) or edits a project. The API's field errors are shown
 * at their fields. Resolves with the saved project, or null/undefined when cancelled.
 */
export function projectDialog(p) {
  const creating = p === null;
  const fields = [
    formField({ key: "name", label: LABELS.name,
      input: h("input", { id: "pf-name", name: "name", maxlength: "100", autocomplete: "off", autofocus: true }) }),
    formField({ key: "code", label: LABELS.code,
      input: h("input", { id: "pf-code", name: "code", maxlength: "64", autocomplete: "off", spellcheck: "false" }),
      help: "字母、数字、下划线、点和短横线；全局唯一。" }),
    formField({ key: "note", label: LABELS.note,
      input: h("textarea", { id: "pf-note", name: "note", rows: "3", maxlength: "2000" }) }),
  ];
  for (const f of fields) f.input.value = p ? p[f.key] || "" : "";

  return modal({
    title: creating ? "新建项目" : "编辑项目",
    build: (close) => {
      const error = h("p", { class: "form-error", role: "alert", hidden: true });
      const submit = h("button", { type: "submit", class: "btn btn-primary" }, creating ? "创建" : "保存");
      const form = h("form", { class: "dialog-body", novalidate: true },
        fields.map((f) => f.el),
        error,
        h("div", { class: "dialog-actions" },
          h("button", { type: "button", class: "btn", onclick: () => close(null) }, "取消"),
          submit));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        clearErrors(fields, error);
        const body = Object.fromEntries(fields.map((f) => [f.key, f.input.value]));
        submit.disabled = true;
        try {
          const result = creating ? await post("/api/projects", body) : await put(`/api/projects/${p.id}`, body);
          close(result);
        } catch (err) {
          showErrors(err, fields, error);
          submit.disabled = false;
        }
      });
      return form;
    },
  });
}
