"""schemathesis over /openapi.json, anonymous and logged in: no route ever answers 5xx."""

import hypothesis
import pytest
import schemathesis

# 503 is part of the contract for these, and only these (see the API section of README.md); any other 5xx is a bug.
DOCUMENTED_503 = ("ComfyUI 未配置", "没有可用端口", "ComfyUI 启动失败", "数据库暂时不可用")


@schemathesis.check
def no_undocumented_server_error(ctx, response, case):
    if response.status_code < 500:
        return None
    if response.status_code == 503 and response.json().get("msg", "").startswith(DOCUMENTED_503):
        return None
    raise AssertionError(f"{response.status_code} from {case.method} {case.path}: {response.text[:300]}")


from tests.support.server import LiveServer, initial_admin_password  # noqa: E402 — after the fuzz helpers


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz")
    with LiveServer(workdir, env={"COMFYHUB_LOGIN_MAX_FAILURES": "1000000"}) as server:
        server.headers = server.login("admin", initial_admin_password(workdir))
        yield server


def _schema():
    # Built from the app's own OpenAPI document: the same one /openapi.json serves.
    from comfyhub.app import create_app
    from comfyhub.config import load_settings

    app = create_app(load_settings(_env_file=None, comfyhub_secret_key="schema-only"))
    loaded = schemathesis.openapi.from_dict(app.openapi())
    # Both valid and invalid input: ids beyond 64 bits, odd Unicode, NUL bytes, wrong types.
    loaded.config.generation.update(
        modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE], allow_x00=True
    )
    return loaded


schema = _schema()


@schema.parametrize()
@hypothesis.settings(max_examples=60, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_no_server_errors(case, fuzz_server):
    for headers in ({}, fuzz_server.headers):
        # logout would revoke the token the other examples use
        if case.path == "/api/auth/logout" and headers:
            continue
        case.call_and_validate(base_url=fuzz_server.url, headers=headers, checks=[no_undocumented_server_error])


def test_schema_lists_every_route(fuzz_server):
    import httpx

    paths = httpx.get(fuzz_server.url + "/openapi.json").json()["paths"]
    for path in (
        "/api/auth/login",
        "/api/auth/logout",
        "/api/auth/me",
        "/api/projects",
        "/api/projects/{project_id}",
        "/api/admin/users",
        "/healthz",
    ):
        assert path in paths, path
