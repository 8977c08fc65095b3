// 访问令牌: the user's personal access tokens, for scripts (Authorization: Bearer chp_…).
// One dialog: the list (撤销 asks first), and a form that creates one and shows it once,
// with 复制. The token lives only in this dialog: closing it forgets it for good.

import { del, get, post } from "./api.js";
import { confirmDialog, modal } from "./dialogs.js";
import { copyText, h, setText, show, toast } from "./dom.js";
import { formatDateTime, parseTime } from "./format.js";
import { clearErrors, formField, showErrors } from "./forms.js";

const DEFAULT_DAYS = 30;

/** Open the 访问令牌 dialog. */
export function tokensDialog() {
  return modal({
    title: "访问令牌",
    className: "dialog-wide",
    build: (close) => {
      const list = tokenList();
      const reveal = revealBox();
      const form = createForm(async (created) => {
        reveal.set(created);
        await list.load();
      });
      list.load();
      return h(
        "div",
        { class: "dialog-body" },
        h("p", { class: "muted token-intro" },
          "脚本用访问令牌调用 comfyhub 的 API 和 /comfy/ 代理，请求头写 ",
          h("code", { class: "code", text: "Authorization: Bearer <令牌>" }),
          "。令牌拥有你账号的全部权限，请像密码一样保管；不用时请撤销。"),
        form,
        reveal.el,
        list.el,
        h("div", { class: "dialog-actions" },
          h("button", { type: "button", class: "btn", onclick: () => close() }, "关闭")),
      );
    },
  });
}

/** 名称 and 有效期（天）→ POST /api/tokens; `onCreated(token)` gets the reply's data. */
function createForm(onCreated) {
  const fields = [
    formField({ key: "name", label: "名称",
      input: h("input", { id: "tk-name", name: "name", maxlength: "64", autocomplete: "off", autofocus: true }),
      help: "用来认出这个令牌，例如「批量生成脚本」。" }),
    formField({ key: "expires_days", label: "有效期（天）",
      input: h("input", { id: "tk-days", name: "expires_days", type: "number", min: "1", max: "3650",
        step: "1", inputmode: "numeric", value: String(DEFAULT_DAYS) }),
      help: "1 到 3650 天；到期后自动失效。" }),
  ];
  const [name, days] = fields;
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "创建令牌");
  const form = h("form", { novalidate: true, "aria-label": "创建访问令牌" },
    fields.map((f) => f.el), error, h("div", { class: "dialog-actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(fields, error);
    // A number goes as a number; anything else as typed, so the API says what is wrong.
    const typed = days.input.value.trim();
    const body = { name: name.input.value, expires_days: /^\d+$/.test(typed) ? Number(typed) : typed || null };
    submit.disabled = true;
    try {
      const created = await post("/api/tokens", body);
      name.input.value = "";
      days.input.value = String(DEFAULT_DAYS);
      await onCreated(created);
    } catch (err) {
      showErrors(err, fields, error);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/** The new token, shown once with 复制. */
function revealBox() {
  const value = h("code", { class: "code token-value", id: "new-token", "aria-label": "新令牌" });
  const title = h("strong");
  const copy = h("button", { type: "button", class: "btn btn-sm" }, "复制");
  copy.addEventListener("click", async () => {
    if (await copyText(value.textContent, el)) {
      setText(copy, "已复制");
      toast("令牌已复制", "success");
    } else {
      toast("无法写入剪贴板，请手动选中令牌复制", "error");
    }
  });
  const el = h("div", { class: "banner banner-warn", role: "status", hidden: true },
    title, h("span", { text: "请立即复制保存：关闭此窗口后，它不会再显示。" }), value, copy);
  return {
    el,
    set(created) {
      setText(title, `新令牌「${created.name}」`);
      setText(value, created.token);
      setText(copy, "复制");
      show(el, true);
      copy.focus();
    },
  };
}

/** The table of the user's tokens, with 撤销 on each row. */
function tokenList() {
  const count = h("span", { class: "count" });
  const status = h("p", { class: "muted table-empty", text: "加载中…" });
  const failure = h("p", { class: "list-error", role: "alert", hidden: true });
  const body = h("tbody");
  const table = h("table", { class: "table", id: "token-table", hidden: true },
    h("thead", {}, h("tr", {},
      ["名称", "前缀", "创建时间", "过期时间", "最近使用"].map((label) => h("th", { scope: "col", text: label })),
      h("th", { scope: "col" }, h("span", { class: "sr-only", text: "操作" })))),
    body);

  const load = async () => {
    try {
      const tokens = await get("/api/tokens");
      show(failure, false);
      body.replaceChildren(...tokens.map((t) => row(t, load)));
      setText(count, `共 ${tokens.length} 个`);
      setText(status, "还没有访问令牌。");
      show(status, tokens.length === 0);
      show(table, tokens.length > 0);
    } catch (error) {
      if (error.status === 401) return;
      setText(failure, `读取访问令牌失败：${error.message}`);
      show(failure, true);
      show(status, false);
    }
  };
  const el = h("section", { class: "token-list", "aria-label": "我的访问令牌" },
    h("div", { class: "panel-head" }, h("h3", { text: "我的访问令牌" }), count),
    failure, status, h("div", { class: "table-wrap" }, table));
  return { el, load };
}

function row(token, reload) {
  const when = (value, none) => (value ? formatDateTime(parseTime(value)) : none);
  const revoke = h("button", { type: "button", class: "btn btn-sm btn-ghost btn-ghost-danger",
    "aria-label": `撤销 ${token.name}` }, "撤销");
  revoke.addEventListener("click", async () => {
    const ok = await confirmDialog({
      title: "撤销访问令牌",
      message: `撤销「${token.name}」（${token.prefix}…）后，使用它的脚本会立即无法访问。此操作无法恢复。`,
      confirmText: "撤销",
      danger: true,
    });
    if (!ok) return;
    revoke.disabled = true;
    try {
      await del(`/api/tokens/${token.id}`);
      toast("访问令牌已撤销", "success");
    } catch (error) {
      if (error.status !== 401) toast(error.message, "error");
    }
    await reload();
  });
  return h("tr", { dataset: { tokenId: String(token.id) } },
    h("td", { text: token.name }),
    h("td", {}, h("code", { class: "code", text: `${token.prefix}…` })),
    h("td", { text: when(token.created_at, "—") }),
    h("td", {}, when(token.expires_at, "—"),
      token.expired ? [" ", h("span", { class: "tag tone-red", text: "已过期" })] : null),
    h("td", { text: when(token.last_used_at, "从未使用") }),
    h("td", { class: "actions-cell" }, revoke));
}
