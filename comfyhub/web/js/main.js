// Entry point: decide the view from the path and from "who am I".
//   /login → login form (or / when already logged in)
//   /      → 个人工作台        /admin → 管理 (admins)
//   /#/projects/{id}/outputs → 产出 of a project (a hash route: the server serves one page)
//   /#/projects/{id}/jobs    → 批量生成 of a project
// Any page while logged out shows the login form and comes back after logging in.

import { ApiError, get, setUnauthorizedHandler } from "./api.js";
import { h } from "./dom.js";
import { renderAdmin } from "./admin.js";
import { renderGallery } from "./gallery.js";
import { renderJobs } from "./jobs.js";
import { renderLogin, safeNext } from "./login.js";
import { renderShell } from "./shell.js";
import { renderWorkbench } from "./workbench.js";

const root = document.getElementById("app");
const path = location.pathname.replace(/\/+$/, "") || "/";
const PROJECT_ROUTE = /^#\/projects\/(\d+)\/(outputs|jobs)$/;
const PROJECT_VIEWS = { outputs: renderGallery, jobs: renderJobs };
const DEFAULT_META = { list_refresh_seconds: 8, comfyui_configured: true, comfyui_hint: null };

// The view on screen owns timers and listeners: they end before another view (or a
// navigation away) takes its place.
let disposeView = () => {};
function mount(render, ...args) {
  unmount();
  disposeView = render(...args) || (() => {});
}
function unmount() {
  disposeView();
  disposeView = () => {};
}

function showLogin(next) {
  const target = safeNext(next);
  const url = target === "/" ? "/login" : `/login?next=${encodeURIComponent(target)}`;
  if (location.pathname + location.search !== url) history.replaceState(null, "", url);
  unmount();
  renderLogin(root, target);
}

function fatal(message) {
  root.replaceChildren(h("main", { id: "main", class: "login-wrap" },
    h("div", { class: "login-card" },
      h("h1", { text: "无法加载工作台" }),
      h("p", { class: "form-error", role: "alert", text: message }),
      h("button", { type: "button", class: "btn btn-primary btn-block", onclick: () => location.reload() }, "重试"))));
}

async function boot() {
  let me = null;
  try {
    me = await get("/api/auth/me", { allow401: true });
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) {
      fatal(error.message);
      return;
    }
  }
  if (!me) {
    const next = path === "/login" ? new URLSearchParams(location.search).get("next") : path;
    showLogin(next);
    return;
  }
  if (path === "/login") {
    location.replace(safeNext(new URLSearchParams(location.search).get("next")));
    return;
  }
  // From now on a 401 means the session ended (logout elsewhere, expiry): log in again.
  let redirected = false;
  setUnauthorizedHandler(() => {
    if (redirected) return;
    redirected = true;
    unmount(); // no more polling with a session that has ended
    location.assign(path === "/" ? "/login" : `/login?next=${encodeURIComponent(path)}`);
  });
  // Without the deployment's settings the page still works on defaults, and says so.
  let meta = { ...DEFAULT_META };
  let metaError = null;
  try {
    meta = { ...meta, ...(await get("/api/meta")) };
  } catch (error) {
    if (error.status === 401) return;
    metaError = error.message;
  }
  const current = path === "/admin" ? "admin" : "workbench";
  const main = renderShell(root, { me, meta, metaError, current });
  if (current === "admin") {
    mount(renderAdmin, main, { me, meta });
    return;
  }
  // The workbench and a project's 产出 and 批量生成 share the page; the hash says which (back works).
  const banners = [...main.children];
  const route = () => {
    const view = PROJECT_ROUTE.exec(location.hash);
    unmount();
    main.replaceChildren(...banners);
    if (view) mount(PROJECT_VIEWS[view[2]], main, { me, meta, projectId: Number(view[1]) });
    else mount(renderWorkbench, main, { me, meta });
  };
  window.addEventListener("hashchange", () => {
    route();
    window.scrollTo(0, 0);
    main.focus({ preventScroll: true });
  });
  route();
}

boot().finally(() => root.removeAttribute("aria-busy"));
