// The frame around the logged-in views: top bar (brand, navigation, user, 访问令牌, 退出) and the
// banners: "ComfyUI 尚未配置", and the settings (/api/meta) that could not be read.

import { post } from "./api.js";
import { h, toast } from "./dom.js";
import { tokensDialog } from "./tokens.js";

export function renderShell(root, { me, meta, metaError = null, current }) {
  const link = (href, label, key) =>
    h("a", { href, class: "nav-link", "aria-current": current === key ? "page" : undefined }, label);
  const logout = h("button", { type: "button", class: "btn btn-ghost btn-sm" }, "退出");
  logout.addEventListener("click", async () => {
    logout.disabled = true;
    try {
      await post("/api/auth/logout");
    } catch (error) {
      if (error.status !== 401) {
        toast(error.message, "error");
        logout.disabled = false;
        return;
      }
    }
    location.assign("/login");
  });

  const header = h(
    "header",
    { class: "topbar" },
    h(
      "div",
      { class: "topbar-inner" },
      h("a", { href: "/", class: "brand" }, h("span", { class: "brand-mark", "aria-hidden": "true" }), "comfyhub"),
      h(
        "nav",
        { class: "nav", "aria-label": "主导航" },
        link("/", "个人工作台", "workbench"),
        me.is_admin ? link("/admin", "管理", "admin") : null,
      ),
      h(
        "div",
        { class: "user" },
        h("span", { class: "user-name", title: "当前用户" }, me.username, me.is_admin ? h("span", { class: "tag", text: "管理员" }) : null),
        h("button", { type: "button", class: "btn btn-ghost btn-sm", onclick: () => tokensDialog() }, "访问令牌"),
        logout,
      ),
    ),
  );

  const banner = meta && meta.comfyui_configured === false
    ? h(
      "div",
      { class: "banner banner-warn", role: "note" },
      h("strong", { text: "ComfyUI 尚未配置" }),
      h("span", { text: meta.comfyui_hint || "请管理员设置 COMFYUI_REPO_PATH 和 COMFYUI_PYTHON。" }),
    )
    : null;

  const metaBanner = metaError
    ? h(
      "div",
      { class: "banner banner-error", role: "alert", id: "meta-error" },
      h("strong", { text: "无法读取站点设置" }),
      h("span", { text: `${metaError}。页面暂按默认设置运行。` }),
      h("button", { type: "button", class: "btn btn-sm", onclick: () => location.reload() }, "重试"),
    )
    : null;

  const main = h("main", { id: "main", class: "page", tabindex: "-1" }, metaBanner, banner);
  root.replaceChildren(header, main);
  return main;
}
