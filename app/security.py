"""Passwords, API tokens, CSRF tokens and login throttling."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from datetime import datetime, timedelta
from functools import lru_cache

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from pwdlib import PasswordHash
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from zxcvbn import zxcvbn

from app.errors import TooManyRequests, Unauthenticated
from app.models import LoginFailure, as_utc, utcnow
from app.settings import get_settings, signing_key

_password_hash = PasswordHash.recommended()  # argon2id
CSRF_SESSION_KEY = "csrf"
CSRF_FORM_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def hash_password(password: str) -> str:
    return _password_hash.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    return _password_hash.verify(password, password_hash)


@lru_cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def verify_against_dummy(password: str) -> None:
    """Spend the time of one real verification, so unknown user names answer as slowly as known ones."""
    _password_hash.verify(password, _dummy_hash())


def password_problem(password: str) -> str | None:
    """Why ``password`` is refused (blank, too short, among the commonest or trivially guessed), else None."""
    if not password.strip():
        return "the password must not be blank"
    if len(password) < 8:
        return "the password must have at least 8 characters"
    if password.lower() in _common_passwords():
        return "this password is among the most common ones: choose another"
    # zxcvbn refuses inputs over 72 characters; such passwords are long enough to pass.
    if len(password) <= 72 and zxcvbn(password)["score"] == 0:
        return "this password is too easy to guess (a repeat, a sequence or a keyboard row): choose another"
    return None


@lru_cache
def _common_passwords() -> frozenset[str]:
    """zxcvbn's list of the 30,000 commonest leaked passwords."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def _token_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(signing_key(), salt="leukolab-api-token")


def issue_token(*, user_id: int, session_version: int) -> str:
    """Sign a bearer token for ``user_id``, valid until its ``session_version`` is bumped or it expires."""
    return _token_serializer().dumps({"uid": user_id, "sv": session_version})


def read_token(token: str) -> tuple[int, int]:
    """The user id and session version of a valid bearer token, or ``Unauthenticated``."""
    try:
        data = _token_serializer().loads(token, max_age=get_settings().token_max_age_s)
        return int(data["uid"]), int(data["sv"])
    except SignatureExpired as exc:
        raise Unauthenticated("token expired: request a new one from /api/v1/auth/token") from exc
    except (BadSignature, KeyError, TypeError, ValueError) as exc:
        raise Unauthenticated("invalid token") from exc


def csrf_token(session: dict) -> str:
    """The session's CSRF token, created on first use."""
    token = session.get(CSRF_SESSION_KEY)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def csrf_valid(session: dict, presented: str | None) -> bool:
    expected = session.get(CSRF_SESSION_KEY)
    return bool(expected and presented and hmac.compare_digest(expected, presented))


def client_address(host: str | None) -> str:
    """A normalised IP address for throttling, or ``"unknown"``; never longer than the column.

    ``host`` is the socket peer, or the X-Forwarded-For address when uvicorn trusts the peer as a proxy
    (``FORWARDED_ALLOW_IPS``; ``leukolab serve`` trusts none unless it is set).
    """
    try:
        return str(ipaddress.ip_address((host or "").split("%", 1)[0]))
    except ValueError:
        return "unknown"


def login_name(username: str) -> str:
    """The key a login attempt is throttled under: lower case, NULs dropped, at most 64 characters."""
    return username.replace("\x00", "").lower()[:64]


def _lock_remaining_s(failures: int, last: datetime | None, allowed: int) -> int:
    """Seconds still locked after ``failures`` (the last at ``last``) when ``allowed`` are free; 0 if open."""
    if last is None or failures < allowed:
        return 0
    settings = get_settings()
    lock = min(settings.login_lockout_s, settings.login_backoff_s * 2 ** min(failures - allowed, 20))
    remaining = (as_utc(last) + timedelta(seconds=lock) - utcnow()).total_seconds()
    return max(0, int(remaining + 0.999))


def _failures(session: Session, *condition) -> tuple[int, datetime | None]:
    since = utcnow() - timedelta(seconds=get_settings().login_window_s)
    count, last = session.execute(
        select(func.count(), func.max(LoginFailure.created_at)).where(LoginFailure.created_at >= since, *condition)
    ).one()
    return count, last


def check_login_allowed(*, session: Session, username: str, remote: str) -> None:
    """Raise ``TooManyRequests`` (with ``retry_after``) while this client or this name is locked out.

    A client locks itself out after ``login_client_max_failures`` failures, whatever the names. A name locks
    after ``login_max_failures`` failures, but only for clients that have failed recently themselves: the
    real user on a clean client still gets in while the name is attacked from elsewhere. Each lock doubles
    with each further failure, up to ``login_lockout_s``.
    """
    settings = get_settings()
    client_failures, client_last = _failures(session, LoginFailure.remote == remote)
    wait = _lock_remaining_s(client_failures, client_last, settings.login_client_max_failures)
    if client_failures and not wait:
        name_failures, name_last = _failures(session, LoginFailure.username == login_name(username))
        wait = _lock_remaining_s(name_failures, name_last, settings.login_max_failures)
    if wait:
        raise TooManyRequests(f"too many failed logins: try again in {wait} seconds", retry_after=wait)


def record_login_failure(*, session: Session, username: str, remote: str) -> None:
    """Keep a failed attempt for throttling, and forget those older than the window."""
    forget_before = utcnow() - timedelta(seconds=get_settings().login_window_s)
    session.execute(delete(LoginFailure).where(LoginFailure.created_at < forget_before))
    session.add(LoginFailure(username=login_name(username), remote=remote))


def clear_login_failures(*, session: Session, username: str, remote: str) -> None:
    """Forget this client's failures for this name after it logged in (not other clients' failures)."""
    session.execute(
        delete(LoginFailure).where(LoginFailure.username == login_name(username), LoginFailure.remote == remote)
    )


def local_path(target: str, *, default: str) -> str:
    """``target`` if it is a path on this site, else ``default``.

    Browsers read a backslash as a slash and drop tabs and newlines, so ``/\\evil.example`` and
    ``/<tab>/evil.example`` lead to another host just as ``//evil.example`` does.
    """
    if not target.startswith("/") or "\\" in target or any(ord(c) < 32 or ord(c) == 127 for c in target):
        return default
    return default if target.startswith("//") else target
