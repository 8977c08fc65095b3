// 停止 on a project card. It asks first when ComfyUI has work that a stop would cut off
// (GET …/queue, asked on the click: the list never waits on an instance), and always
// when an administrator stops another user's instance — as the 管理 page does.

import { get, post } from "./api.js";
import { confirmDialog } from "./dialogs.js";

/** Jobs running or waiting in `p`'s ComfyUI; 0 when it is not online or does not say. */
async function queuedWork(p) {
  if (!p.service || p.service.status !== "online") return 0;
  try {
    const queue = await get(`/api/projects/${p.id}/queue`);
    return queue ? queue.running + queue.pending : 0;
  } catch {
    return 0; // nothing known to be running: do not stand in the way of a stop
  }
}

/** Whether the stop of `p` may go ahead: at once, or after the user confirmed it. */
export async function confirmStop(p, me) {
  const mine = p.owner_user_id === me.id;
  const work = await queuedWork(p);
  if (mine && work === 0) return true;
  const whose = mine ? "" : ` ${p.owner_username || `#${p.owner_user_id}`} 的`;
  const busy = work > 0 ? `ComfyUI 还有 ${work} 个任务在运行或排队，停止会中断它们。` : "";
  return confirmDialog({
    title: "停止实例",
    message: `${busy}确定停止${whose}项目“${p.name}”的 ComfyUI 吗？文件会保留。`,
    confirmText: "停止",
    danger: true,
  });
}

/** Stop `p`'s instance: the owner's own route, or the admin route for another user's. */
export function stopInstance(p, me) {
  const path = p.owner_user_id === me.id
    ? `/api/projects/${p.id}/stop_comfy`
    : `/api/admin/services/${p.id}/stop`;
  return post(path);
}
