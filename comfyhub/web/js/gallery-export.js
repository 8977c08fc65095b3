// 导出数据集: POST /api/projects/{id}/exports answers a ZIP streamed as it is made (no
// length up front). The page reads it with fetch, counting the bytes as they come, then
// hands the whole file to the browser's download through an object URL.

import { ApiError, reportUnauthorized } from "./api.js";
import { toast } from "./dom.js";
import { formatBytes } from "./format.js";

// How long the object URL outlives the click: the download has taken the bytes by then.
const REVOKE_AFTER_MS = 30_000;

/** The file name of a Content-Disposition header (RFC 5987 `filename*` first). */
function fileNameOf(header, fallback) {
  const star = /filename\*=UTF-8''([^;]+)/i.exec(header || "");
  if (star) {
    try {
      return decodeURIComponent(star[1]);
    } catch {
      /* a malformed name: use the plain one */
    }
  }
  const plain = /filename="?([^";]+)"?/i.exec(header || "");
  return plain ? plain[1] : fallback;
}

async function refusal(response) {
  let msg = `导出失败（HTTP ${response.status}）`;
  try {
    const payload = await response.json();
    if (payload && payload.msg) msg = payload.msg;
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(response.status, msg);
}

/**
 * Download the export of `body` (a filter, or {ids}) for project `projectId`.
 * `onProgress(bytes)` is called as the ZIP arrives. The fetch ends with `scope`.
 * Resolves with {name, bytes}; rejects with ApiError (404: nothing matches).
 */
export async function downloadExport(scope, projectId, body, onProgress = () => {}) {
  let response;
  try {
    response = await fetch(`/api/projects/${projectId}/exports`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", accept: "application/zip, application/json" },
      body: JSON.stringify(body),
      signal: scope.controller.signal,
    });
  } catch (error) {
    if (scope.disposed) throw new ApiError(0, "导出已取消");
    throw new ApiError(0, "网络错误：无法连接 comfyhub 服务器");
  }
  if (!response.ok) {
    const error = await refusal(response);
    if (response.status === 401) reportUnauthorized(error);
    throw error;
  }
  const chunks = [];
  let bytes = 0;
  try {
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      bytes += value.byteLength;
      onProgress(bytes);
    }
  } catch {
    throw new ApiError(0, scope.disposed ? "导出已取消" : "下载中断，请重试");
  }
  const name = fileNameOf(response.headers.get("content-disposition"), `export-${projectId}.zip`);
  const url = URL.createObjectURL(new Blob(chunks, { type: "application/zip" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  const revoke = () => URL.revokeObjectURL(url);
  scope.later(REVOKE_AFTER_MS, revoke);
  scope.controller.signal.addEventListener("abort", revoke, { once: true });
  return { name, bytes };
}

/**
 * Run an export from `button`: it is busy meanwhile and `status` (an element) says how
 * many bytes arrived; a refusal (nothing matches) is said in a toast.
 */
export async function exportWithProgress(scope, projectId, body, { button, status }) {
  if (button.disabled) return;
  button.disabled = true;
  button.classList.add("is-busy");
  const say = (text) => {
    if (status) {
      status.textContent = text;
      status.hidden = !text;
    }
  };
  say("正在准备导出…");
  try {
    const { name, bytes } = await downloadExport(scope, projectId, body, (n) => say(`正在导出… 已接收 ${formatBytes(n)}`));
    say("");
    toast(`已导出 ${name}（${formatBytes(bytes)}）`, "success");
  } catch (error) {
    say("");
    if (error.status !== 401 && !scope.disposed) toast(error.message, "error");
  } finally {
    button.disabled = false;
    button.classList.remove("is-busy");
  }
}
