// The comfyhub HTTP API: JSON envelope {code, msg, data}, HTTP status == code.
// The session is the HttpOnly cookie set by login; every call sends it (same origin).

export class ApiError extends Error {
  constructor(status, msg, data = null) {
    super(msg);
    this.status = status;
    this.data = data;
  }
}

let onUnauthorized = null;

/** Called once when a logged-in call answers 401 (the session expired or was revoked). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** A 401 from a call made without api() (a streamed download): the session ended. */
export function reportUnauthorized(error) {
  if (onUnauthorized) onUnauthorized(error);
}

/**
 * Call the API. Resolves with `data`; rejects with ApiError carrying the server's `msg`.
 * `options.allow401`: a 401 is an ordinary answer here (the login form, "who am I").
 * `options.envelope`: resolve with the whole {code, msg, data} (when the msg is the news).
 */
export async function api(method, path, body, options = {}) {
  const init = { method, credentials: "same-origin", headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "网络错误：无法连接 comfyhub 服务器");
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const msg = (payload && payload.msg) || `请求失败（HTTP ${response.status}）`;
    const error = new ApiError(response.status, msg, payload ? payload.data : null);
    if (response.status === 401 && !options.allow401 && onUnauthorized) onUnauthorized(error);
    throw error;
  }
  if (options.envelope) return payload || { code: response.status, msg: "", data: null };
  return payload ? payload.data : null;
}

export const get = (path, options) => api("GET", path, undefined, options);
export const post = (path, body, options) => api("POST", path, body, options);
export const put = (path, body, options) => api("PUT", path, body, options);
export const del = (path, options) => api("DELETE", path, undefined, options);
