// Choices the page remembers in localStorage; private mode (no storage) keeps them for the page only.

const SCOPE_KEY = "comfyhub.scope";

/** An admin's 我的项目 / 全部项目 on the workbench ("all" unless "mine" was chosen). */
export function savedScope() {
  try {
    return localStorage.getItem(SCOPE_KEY) === "mine" ? "mine" : "all";
  } catch {
    return "all";
  }
}

export function saveScope(scope) {
  try {
    localStorage.setItem(SCOPE_KEY, scope);
  } catch {
    /* private mode: the choice lasts for this page only */
  }
}
