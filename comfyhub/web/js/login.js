// The login view (/login, or any page while logged out).

import { post } from "./api.js";
import { h, show } from "./dom.js";

/** Where to go after logging in: one of this site's pages, never another site. */
export function safeNext(value) {
  return value === "/admin" ? "/admin" : "/";
}

export function renderLogin(root, next) {
  document.title = "登录 · comfyhub";
  const username = h("input", { id: "login-username", name: "username", autocomplete: "username", autofocus: true });
  const password = h("input", {
    id: "login-password", name: "password", type: "password", autocomplete: "current-password",
  });
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary btn-block" }, "登录");

  const form = h(
    "form",
    { class: "login-card", novalidate: true, "aria-labelledby": "login-title" },
    h("div", { class: "brand brand-lg" }, h("span", { class: "brand-mark", "aria-hidden": "true" }), "comfyhub"),
    h("h1", { id: "login-title", text: "登录" }),
    h("p", { class: "muted", text: "每个项目一个专属的 ComfyUI，按需启动。" }),
    h("div", { class: "field" }, h("label", { for: "login-username", text: "用户名" }), username),
    h("div", { class: "field" }, h("label", { for: "login-password", text: "密码" }), password),
    error,
    submit,
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    show(error, false);
    if (!username.value.trim() || !password.value) {
      error.textContent = "请输入用户名和密码";
      show(error, true);
      (username.value.trim() ? password : username).focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "登录中…";
    try {
      await post("/api/auth/login", { username: username.value.trim(), password: password.value }, { allow401: true });
      location.assign(safeNext(next));
    } catch (err) {
      error.textContent = err.message;
      show(error, true);
      password.select();
      password.focus();
      submit.disabled = false;
      submit.textContent = "登录";
    }
  });

  root.replaceChildren(h("main", { id: "main", class: "login-wrap" }, form));
  username.focus();
}
