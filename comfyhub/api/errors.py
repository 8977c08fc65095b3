"""The JSON envelope {"code", "msg", "data"} and every error the API answers with.

HTTP status always equals `code`. Messages are Chinese, stable, and never carry
internals (paths, stack traces, SQL).

An error about particular fields of the request also says which, in `data.errors`:
a list of `{"field", "type", "msg"}` (`field` as the API spells it, e.g. "code"; `msg`
the Chinese reason for that field alone). Clients place each message by `field` and
never need to parse `msg`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

# The refusals the /comfy/ gateway answers with too: the routes import them from here.
from comfyhub.messages import CROSS_SITE as CROSS_SITE
from comfyhub.messages import FORBIDDEN as FORBIDDEN
from comfyhub.messages import NOT_LOGGED_IN as NOT_LOGGED_IN
from comfyhub.messages import PROJECT_NOT_FOUND as PROJECT_NOT_FOUND
from comfyhub.services.errors import ServiceError

log = logging.getLogger("comfyhub.api")

DATABASE_AWAY = "数据库暂时不可用，请稍后再试"


def _database_unreachable(exc: Exception) -> bool:
    """Connection trouble (refused, dropped, pool exhausted), as opposed to a failing statement."""
    if isinstance(exc, (SATimeoutError, ConnectionError, OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and (exc.connection_invalidated or exc.statement is None)


class ApiError(Exception):
    """Raised anywhere below a route to answer with `code` and a Chinese `msg`."""

    def __init__(self, code: int, msg: str, data: Any = None, headers: dict | None = None):
        super().__init__(msg)
        self.code, self.msg, self.data, self.headers = code, msg, data, headers


def field_errors(*errors: tuple[str, str, str]) -> dict:
    """`data` for an error about fields: each (field, type, msg) becomes one entry."""
    return {"errors": [{"field": field, "type": kind, "msg": msg} for field, kind, msg in errors]}


def field_error(code: int, field: str, msg: str, kind: str = "invalid") -> ApiError:
    """An ApiError about one field (e.g. a 项目号 that is taken): `msg` is also the reply's msg."""
    return ApiError(code, msg, field_errors((field, kind, msg)))


def envelope(data: Any = None, msg: str = "成功", code: int = 200, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "msg": msg, "data": data}, status_code=code, headers=headers)


_STATUS_MESSAGES = {
    400: "请求无效",
    401: NOT_LOGGED_IN,
    403: FORBIDDEN,
    404: "接口不存在",
    405: "不支持的请求方法",
    413: "请求体过大",
    415: "不支持的内容类型",
    422: "请求参数无效",
}


def _field_name(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or "请求体"


# Pydantic's error types, said in Chinese for one field. Anything not listed is "格式无效".
_REASONS = {
    "missing": "必填",
    "string_type": "必须是文本",
    "int_type": "必须是整数",
    "int_parsing": "必须是整数",
    "bool_type": "必须是 true 或 false",
    "bool_parsing": "必须是 true 或 false",
    "extra_forbidden": "不允许的字段",
    "model_type": "必须是 JSON 对象",
    "model_attributes_type": "必须是 JSON 对象",
    "dict_type": "必须是 JSON 对象",
    "json_invalid": "JSON 格式错误",
}


def _reason(error: dict) -> str:
    """One validation error's reason, in Chinese."""
    kind, ctx = error.get("type"), error.get("ctx") or {}
    if kind == "value_error":
        # Our own validators speak Chinese: pass their reason on.
        return str(error.get("msg", "")).removeprefix("Value error, ")
    if kind == "string_too_short":
        return "不能为空" if ctx.get("min_length") == 1 else f"至少 {ctx.get('min_length')} 个字符"
    if kind == "string_too_long":
        return f"最多 {ctx.get('max_length')} 个字符"
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = ctx.get("ge", ctx.get("le"))
        return f"不能小于 {bound}" if kind == "greater_than_equal" else f"不能大于 {bound}"
    if kind == "literal_error":
        return f"只能是 {ctx.get('expected')}"
    return _REASONS.get(kind, "格式无效")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return envelope(exc.data, exc.msg, exc.code, exc.headers)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError):
        return envelope(exc.data, exc.msg, exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        errors = exc.errors()[:20]
        details = field_errors(*((_field_name(tuple(e.get("loc", ()))), e.get("type"), _reason(e)) for e in errors))
        first = details["errors"][0] if errors else {"field": "请求体", "type": None, "msg": "格式无效"}
        if first["type"] == "json_invalid":
            msg = "请求参数无效：JSON 格式错误"
        else:
            msg = f"请求参数无效：{first['field']}（{first['msg']}）"
        return envelope(details, msg, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        msg = _STATUS_MESSAGES.get(exc.status_code, "请求失败")
        return envelope(None, msg, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(DBAPIError)
    @app.exception_handler(SATimeoutError)
    @app.exception_handler(ConnectionError)
    async def _database_error(request: Request, exc: Exception):
        if _database_unreachable(exc):
            # The database (or its pool) is away for a moment: say so; it is not a bug here.
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
            return envelope(None, DATABASE_AWAY, 503)
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(None, "服务器内部错误", 500)
