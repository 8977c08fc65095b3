"""Request bodies and the shapes replies are built from."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Control characters (NUL breaks PostgreSQL text) and lone surrogates (not UTF-8) are
# refused up front so that odd input is a 422, never a database error.
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _clean(value: str) -> str:
    if _BAD_CHARS.search(value):
        raise ValueError("包含不允许的控制字符")
    return value


def _single_line(value: str) -> str:
    value = _clean(value).strip()
    if "\n" in value or "\r" in value or "\t" in value:
        raise ValueError("不能包含换行")
    if not value:
        raise ValueError("不能为空")
    return value


def _code(value: str) -> str:
    value = _single_line(value)
    if not _CODE.match(value):
        raise ValueError("只能包含字母、数字、下划线、点和短横线")
    return value


Name = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_single_line)]
Code = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_code)]
Note = Annotated[str, Field(max_length=2000), AfterValidator(_clean)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LoginIn(Strict):
    username: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_clean)]
    password: Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_clean)]


class ProjectCreate(Strict):
    name: Name
    code: Code
    note: Note = ""


class ProjectUpdate(Strict):
    name: Name | None = None
    code: Code | None = None
    note: Note | None = None


class TokenCreate(Strict):
    """A personal access token. It always expires: 3650 days is there for whoever needs
    "practically never", and a forgotten token on a shared server still ends by itself."""

    name: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_single_line)]
    expires_days: Annotated[int, Field(ge=1, le=3650)] = 30
