"""Why an instance stopped, failed or went offline: a code, and the words people read.

Records store the code (`comfyui_services.reason`); behaviour and metric labels depend
on it only. `stopped_reason` and `last_error` store the words, made here and nowhere
else, so that wording can change without changing behaviour. No imports: the
launchers (also on Ray nodes) use it as well.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Stored with the record; launchers name theirs through LaunchError."""

    # stopped
    USER = "user_stop"
    ADMIN = "admin_stop"
    CLI = "cli_stop"
    PROJECT_DELETED = "project_deleted"
    IDLE = "idle"
    BACKEND_EXIT = "backend_exit"
    # failed
    START_TIMEOUT = "start_timeout"
    EXITED = "exited"
    NO_PORT = "no_port"
    PORT_CONTESTED = "port_contested"
    MISSING_EXECUTABLE = "missing_executable"
    LOG_DIR = "log_dir"
    INSTANCE_DIR = "instance_dir"
    LAUNCH_FAILED = "launch_failed"
    INTERRUPTED = "interrupted"
    INTERNAL = "internal"
    RESTARTS_EXHAUSTED = "restarts_exhausted"
    # offline
    CRASHED = "crashed"
    UNRESPONSIVE = "unresponsive"
    NO_PROCESS = "no_process"


_WORDS: dict[Reason, str] = {
    Reason.USER: "用户停止",
    Reason.ADMIN: "管理员 {actor} 停止",
    Reason.CLI: "命令行停止",
    Reason.PROJECT_DELETED: "项目已删除",
    Reason.IDLE: "空闲超时",
    Reason.BACKEND_EXIT: "后端退出",
    Reason.START_TIMEOUT: "启动超时（{limit} 秒内{what}）",
    Reason.EXITED: "ComfyUI 启动失败（{exit}）",
    Reason.NO_PORT: "没有可用端口",
    Reason.PORT_CONTESTED: "端口反复被占用，启动失败",
    Reason.MISSING_EXECUTABLE: "{detail}",
    Reason.LOG_DIR: "{detail}",
    Reason.INSTANCE_DIR: "无法准备实例目录：{detail}",
    Reason.LAUNCH_FAILED: "{detail}",
    Reason.INTERRUPTED: "启动被中断：后端在启动过程中退出，请重新打开",
    Reason.INTERNAL: "内部错误，启动失败",
    Reason.RESTARTS_EXHAUSTED: "{window} 秒内自动重启 {attempts} 次仍失败，已放弃；请查看日志后手动打开",
    Reason.CRASHED: "ComfyUI 已退出（{exit}）",
    Reason.UNRESPONSIVE: "健康检查失败：/system_stats 无响应",
    Reason.NO_PROCESS: "没有进程记录",
}

# Still waiting (Reason.START_TIMEOUT's `what`): not yet ready, or never spawned.
NOT_READY = "未就绪"
NOT_SPAWNED = "进程未能启动"


def words(reason: Reason, **params) -> str:
    """The Chinese sentence for `reason`, filled with its parameters."""
    return _WORDS[reason].format(**params)
