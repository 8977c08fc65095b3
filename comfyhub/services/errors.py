"""What the manager refuses with: an HTTP-like status and a Chinese message for the user."""

from comfyhub.messages import FORBIDDEN  # noqa: F401 — the lifecycle refuses with the front doors' words


class ServiceError(Exception):
    def __init__(self, status: int, msg: str, data: dict | None = None):
        super().__init__(msg)
        self.status, self.msg, self.data = status, msg, data


NOT_CONFIGURED = "ComfyUI 未配置"
NO_FREE_PORT = "没有可用端口"
NOT_CONFIGURED_HINT = (
    "请管理员运行 .venv/bin/comfyhub comfyui install"
    "（或在 .env 中设置 COMFYUI_REPO_PATH 和 COMFYUI_PYTHON），然后重启 comfyhub"
)
