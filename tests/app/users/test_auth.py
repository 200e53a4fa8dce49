"""Authentication hardening (issue 13): inputs, keys, throttling, timing, revocation, headers, passwords."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app import security, settings
from app.db import session_scope
from app.main import create_app
from app.models import LoginFailure, User, utcnow
from tests.support.database import reset_caches
from tests.support.factories import PASSWORD, make_user
from tests.support.http import browser_login, token_headers

TOKEN = "/api/v1/auth/token"


@pytest.fixture
def artefacts(pg_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PostgreSQL, no secret key configured, and a fresh artefact directory for the dev key file."""
    monkeypatch.delenv("LEUKOLAB_SECRET_KEY", raising=False)
    monkeypatch.setenv("LEUKOLAB_ARTEFACT_DIR", str(tmp_path / "artefacts"))
    reset_caches()
    settings._dev_key_file.cache_clear()
    yield tmp_path / "artefacts"
    settings._dev_key_file.cache_clear()


@pytest.fixture
def app(artefacts: Path):
    return create_app(check_schema=False)


@pytest.fixture
def client(app) -> TestClient:
    return TestClient(app, client=("10.0.0.1", 40000))


def from_address(app, address: str) -> TestClient:
    return TestClient(app, client=(address, 40000))


def failures(**where: str) -> int:
    with session_scope() as session:
        query = select(func.count(LoginFailure.id))
        for column, value in where.items():
            query = query.where(getattr(LoginFailure, column) == value)
        return session.scalar(query)


# --- 9: inputs that used to give 500 -------------------------------------------------------------


def test_oversized_or_nul_login_inputs_answer_4xx_not_500(app) -> None:
    make_user("ana")
    # What uvicorn does in front of the app when it trusts the peer as a proxy.
    behind_proxy = TestClient(ProxyHeadersMiddleware(app, trusted_hosts="*"), raise_server_exceptions=False)
    cases = [
        ({"username": "a" * 65, "password": "wrong-guess"}, {}),
        ({"username": "a" * 5000, "password": "wrong-guess"}, {}),
        ({"username": "ana\x00", "password": "wrong-guess"}, {}),
        ({"username": "\x00", "password": "wrong\x00guess"}, {}),
        ({"username": "ana", "password": "wrong-guess"}, {"X-Forwarded-For": "1" * 65}),
        ({"username": "ana", "password": "wrong-guess"}, {"X-Forwarded-For": "x" * 4000 + ", 10.1.1.1"}),
    ]
    for data, headers in cases:
        response = behind_proxy.post(TOKEN, data=data, headers=headers)
        assert response.status_code == 401, (data["username"][:10], headers, response.status_code)
    with session_scope() as session:
        rows = session.execute(select(LoginFailure.username, LoginFailure.remote)).all()
    assert len(rows) == len(cases)
    assert all(len(name) <= 64 and "\x00" not in name and len(remote) <= 64 for name, remote in rows)
    assert {remote for _, remote in rows} <= {"unknown", "10.1.1.1"}

    # The login page too, with the name kept in the form.
    page = behind_proxy.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    form = behind_proxy.post(
        "/login", data={"username": "b" * 65 + "\x00", "password": "x", "csrf_token": csrf}, follow_redirects=False
    )
    assert form.status_code == 401 and 'value="' + "b" * 65 + '"' in form.text


def test_user_names_are_unique_and_matched_regardless_of_case(client: TestClient) -> None:
    make_user("admin", role="admin")
    admin = token_headers(client, "admin")
    clash = client.post("/api/v1/users", json={"username": "Admin", "password": "longenough"}, headers=admin)
    assert clash.status_code == 409 and "ignore case" in clash.json()["detail"]
    # The database refuses it too, whatever path writes the row.
    with pytest.raises(IntegrityError), session_scope() as session:
        session.add(User(username="ADMIN", role="admin", password_hash="x"))
        session.flush()
    assert token_headers(client, "ADMIN")  # the login ignores case as well
    assert token_headers(client, "aDmIn")


# --- 14: the signing key --------------------------------------------------------------------------


def test_dev_mode_generates_a_private_key_file_once_and_refuses_the_public_constant(
    artefacts: Path, client: TestClient
) -> None:
    key_file = artefacts / settings.SECRET_KEY_FILE
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    assert len(key) >= 32 and key != settings.DEV_SECRET_KEY
    settings._dev_key_file.cache_clear()
    create_app(check_schema=False)  # a second process start reuses the file
    assert key_file.read_text() == key and settings.signing_key() == key

    uid = make_user("root", role="admin")
    forged_token = URLSafeTimedSerializer(settings.DEV_SECRET_KEY, salt="leukolab-api-token").dumps(
        {"uid": uid, "sv": 0}
    )
    assert client.get("/api/v1/users", headers={"Authorization": f"Bearer {forged_token}"}).status_code == 401
    # A session cookie forged the way Starlette signs them, with the public constant.
    payload = base64.b64encode(json.dumps({"uid": uid, "sv": 0, "csrf": "c"}).encode())
    forged_cookie = TimestampSigner(settings.DEV_SECRET_KEY).sign(payload).decode()
    client.cookies.set("leukolab_session", forged_cookie)
    assert client.get("/api/v1/users").status_code == 401
    # The same forgery with the real key works, which shows the test forges correctly.
    client.cookies.set("leukolab_session", TimestampSigner(key).sign(payload).decode())
    assert client.get("/api/v1/users").status_code == 200


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    directory = tmp_path / "artefacts"
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: settings._dev_key_file.__wrapped__(directory), range(16)))
    assert len(keys) == 1
    assert [p.name for p in directory.iterdir()] == [settings.SECRET_KEY_FILE]  # no temporary files left


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "artefacts"
    directory.mkdir()
    (directory / settings.SECRET_KEY_FILE).write_text("k" * 64)
    os.chmod(directory / settings.SECRET_KEY_FILE, 0o644)
    with pytest.raises(RuntimeError, match="chmod 600"):
        settings._dev_key_file.__wrapped__(directory)


# --- 15: throttling -------------------------------------------------------------------------------


def test_an_attacked_name_locks_the_attackers_but_not_the_real_user(app) -> None:
    make_user("admin", role="admin")
    attacker = from_address(app, "10.6.6.6")
    for _ in range(5):
        assert attacker.post(TOKEN, data={"username": "admin", "password": "guess-123"}).status_code == 401
    locked = attacker.post(TOKEN, data={"username": "admin", "password": PASSWORD})
    assert locked.status_code == 429
    assert 0 < int(locked.headers["Retry-After"]) <= 30 and locked.json()["retry_after"] > 0
    # A second attacking address that has failed once is held back by the name's lock.
    other = from_address(app, "10.6.6.7")
    assert other.post(TOKEN, data={"username": "Admin", "password": "guess-456"}).status_code == 401
    assert other.post(TOKEN, data={"username": "admin", "password": "guess-789"}).status_code == 429
    # The real admin, on a client that has not been failing, still gets in.
    assert (
        from_address(app, "10.0.0.1").post(TOKEN, data={"username": "admin", "password": PASSWORD}).status_code == 200
    )
    assert failures(username="admin") == 6


def test_one_client_trying_many_names_is_locked_whatever_the_name(app) -> None:
    make_user("ana")
    sprayer = from_address(app, "10.6.6.6")
    answers = [
        sprayer.post(TOKEN, data={"username": f"user{i}", "password": "guess-123"}).status_code for i in range(12)
    ]
    assert answers[:10] == [401] * 10 and answers[10:] == [429, 429]
    assert sprayer.post(TOKEN, data={"username": "ana", "password": PASSWORD}).status_code == 429
    assert failures(remote="10.6.6.6") == 10
    assert from_address(app, "10.0.0.2").post(TOKEN, data={"username": "ana", "password": PASSWORD}).status_code == 200


def test_the_lock_doubles_with_each_failure_up_to_the_longest(pg_db_url: str) -> None:
    now = utcnow()
    locks = [security._lock_remaining_s(failures, now, 5) for failures in range(4, 12)]
    assert locks == [0, 30, 60, 120, 240, 300, 300, 300]
    assert security._lock_remaining_s(5, now - timedelta(seconds=31), 5) == 0  # the lock has passed


# --- 16: timing -----------------------------------------------------------------------------------


def test_unknown_and_deactivated_names_cost_one_hash_like_known_ones(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_user("ana")
    uid = make_user("gone")
    with session_scope() as session:
        session.get(User, uid).is_active = False
    verified = []
    real_verify = security._password_hash.verify
    monkeypatch.setattr(
        security._password_hash, "verify", lambda password, hash: verified.append(hash) or real_verify(password, hash)
    )
    for name in ("ana", "nobody", "gone", "x" * 65):
        verified.clear()
        assert client.post(TOKEN, data={"username": name, "password": "wrong-guess"}).status_code == 401
        assert len(verified) == 1, name
        assert verified[0].startswith("$argon2id$")


# --- 17: revocation -------------------------------------------------------------------------------


def test_logout_ends_a_saved_session_cookie(client: TestClient) -> None:
    make_user("ana")
    csrf = browser_login(client, "ana")
    saved = client.cookies.get("leukolab_session")
    assert client.get("/api/v1/stats", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    client.cookies.set("leukolab_session", saved)
    assert client.get("/api/v1/stats").status_code == 401
    page = client.get("/label", headers={"accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_password_change_and_logout_everywhere_end_tokens_and_other_sessions(app) -> None:
    make_user("ana")
    api, browser, other_browser = (from_address(app, f"10.0.0.{i}") for i in (1, 2, 3))
    old_token = token_headers(api, "ana")
    csrf = browser_login(browser, "ana")
    other_csrf = browser_login(other_browser, "ana")

    wrong = api.post(
        "/api/v1/auth/password",
        json={"current_password": "nope-nope", "new_password": "another-long-one"},
        headers=old_token,
    )
    assert wrong.status_code == 401
    changed = api.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "another-long-one"},
        headers=old_token,
    )
    assert changed.status_code == 200
    new_token = {"Authorization": f"Bearer {changed.json()['access_token']}"}
    assert api.get("/api/v1/stats", headers=old_token).status_code == 401
    assert api.get("/api/v1/stats", headers=new_token).status_code == 200
    assert browser.get("/api/v1/stats", headers={"X-CSRF-Token": csrf}).status_code == 401
    assert api.post(TOKEN, data={"username": "ana", "password": PASSWORD}).status_code == 401

    # The page changes it too and keeps its own browser logged in.
    csrf = browser_login(browser, "ana", "another-long-one")
    page = browser.post(
        "/account/password",
        data={"current_password": "another-long-one", "new_password": "third-long-secret", "csrf_token": csrf},
    )
    assert page.status_code == 200 and "Password changed" in page.text
    assert browser.get("/api/v1/stats", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert other_browser.get("/api/v1/stats", headers={"X-CSRF-Token": other_csrf}).status_code == 401

    token = token_headers(api, "ana", "third-long-secret")
    assert api.post("/api/v1/auth/logout-everywhere", headers=token).status_code == 204
    assert api.get("/api/v1/stats", headers=token).status_code == 401
    assert browser.get("/api/v1/stats", headers={"X-CSRF-Token": csrf}).status_code == 401


def test_deactivation_ends_tokens_for_good(client: TestClient) -> None:
    make_user("root", role="admin")
    victim = make_user("cyto")
    admin = token_headers(client, "root")
    cyto = token_headers(client, "cyto")
    assert client.post(f"/api/v1/users/{victim}/deactivate", headers=admin).status_code == 200
    assert client.get("/api/v1/stats", headers=cyto).status_code == 401
    with session_scope() as session:  # reactivated: the old token stays dead
        session.get(User, victim).is_active = True
    assert client.get("/api/v1/stats", headers=cyto).status_code == 401
    assert client.get("/api/v1/stats", headers=token_headers(client, "cyto")).status_code == 200


# --- 18: headers and passwords --------------------------------------------------------------------


def test_security_headers_on_pages_api_and_static_files(client: TestClient) -> None:
    make_user("ana")
    responses = [
        client.get("/login"),
        client.get("/api/v1/stats"),  # a 401
        client.get("/static/app.css"),
        client.get("/healthz"),
    ]
    headers = token_headers(client, "ana")
    docs = client.get("/docs", headers=headers)
    for response in (*responses, docs):
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
        assert "script-src 'self' 'nonce-" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"
    # The API docs' one inline script carries this response's nonce; no other inline script does.
    nonce = re.search(r"'nonce-([^']+)'", docs.headers["content-security-policy"]).group(1)
    assert f'<script nonce="{nonce}">' in docs.text and "<script>" not in docs.text
    assert responses[0].headers["content-security-policy"] != docs.headers["content-security-policy"]


@pytest.mark.parametrize("password", ["password", "12345678", " " * 8, "\t" * 10, "qwertyuiop", "aaaaaaaaaa"])
def test_common_blank_and_trivial_passwords_are_refused(client: TestClient, password: str) -> None:
    make_user("root", role="admin")
    admin = token_headers(client, "root")
    response = client.post("/api/v1/users", json={"username": "newbie", "password": password}, headers=admin)
    assert response.status_code == 422, response.text
    csrf = browser_login(client, "root")
    page = client.post("/admin/users", data={"username": "newbie", "password": password, "csrf_token": csrf})
    assert "newbie" not in page.text.split("<tbody>")[1] and "password" in page.text
    ok = client.post("/api/v1/users", json={"username": "newbie", "password": "lymph-node-42"}, headers=admin)
    assert ok.status_code == 201


def test_deactivate_asks_for_confirmation(client: TestClient) -> None:
    make_user("root", role="admin")
    make_user("cyto")
    browser_login(client, "root")
    page = client.get("/admin/users")
    assert 'hx-confirm="Deactivate cyto?' in page.text
    rows = {re.search(r"<td>([^<]+)</td>", row).group(1): row for row in page.text.split("<tr")[2:]}
    assert "Deactivate" not in rows["root"] and "Reset password" not in rows["root"]  # refused for oneself anyway
    assert "your account" in rows["root"] and "Deactivate" in rows["cyto"]
