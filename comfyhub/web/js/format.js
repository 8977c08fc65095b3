// Times, durations and error texts as the pages show them (state words: status.js).

/** ISO string from the API → Date (a value without a zone is UTC), or null. */
export function parseTime(value) {
  if (!value) return null;
  const iso = /([zZ]|[+-]\d\d:?\d\d)$/.test(value) ? value : `${value}Z`;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
}

const pad = (n) => String(n).padStart(2, "0");

/** "05-21 14:03:09" (with the year when it is not this year). */
export function formatDateTime(date) {
  if (!date) return "—";
  const now = new Date();
  const day = `${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
  const time = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  return date.getFullYear() === now.getFullYear() ? `${day} ${time}` : `${date.getFullYear()}-${day} ${time}`;
}

/** 75 → "1 分 15 秒"; 7300 → "2 小时 1 分". */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} 秒`;
  if (s < 3600) return `${Math.floor(s / 60)} 分 ${s % 60} 秒`;
  if (s < 86400) return `${Math.floor(s / 3600)} 小时 ${Math.floor((s % 3600) / 60)} 分`;
  return `${Math.floor(s / 86400)} 天 ${Math.floor((s % 86400) / 3600)} 小时`;
}

/** "刚刚", "12 秒前", "3 分钟前", … */
export function formatAgo(date, now = Date.now()) {
  if (!date) return "—";
  const s = Math.floor((now - date.getTime()) / 1000);
  if (s < 3) return "刚刚";
  if (s < 60) return `${s} 秒前`;
  if (s < 3600) return `${Math.floor(s / 60)} 分钟前`;
  if (s < 86400) return `${Math.floor(s / 3600)} 小时前`;
  return `${Math.floor(s / 86400)} 天前`;
}

/**
 * last_error → {reason, tail}: the first line is the reason; what follows the
 * "--- 日志最后 N 行 ---" marker is the log tail, of which the last lines are kept.
 */
export function splitError(text, tailLines = 4) {
  const lines = String(text || "").split(/\r?\n/);
  const reason = (lines.shift() || "").trim() || "未知原因";
  const marker = lines.findIndex((line) => /^---.*---$/.test(line.trim()));
  const rest = (marker >= 0 ? lines.slice(marker + 1) : lines).filter((line) => line.trim() !== "");
  return { reason, tail: rest.slice(-tailLines) };
}

/** 1536 → "1.5 KB"; null → "—". */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || Number.isNaN(Number(bytes))) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}
