"""Passwords, API tokens, CSRF tokens and login throttling."""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from pwdlib import PasswordHash
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.errors import TooManyRequests, Unauthenticated
from app.models import LoginFailure, utcnow
from app.settings import get_settings

_password_hash = PasswordHash.recommended()  # argon2id
CSRF_SESSION_KEY = "csrf"
CSRF_FORM_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def hash_password(password: str) -> str:
    return _password_hash.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    return _password_hash.verify(password, password_hash)


def _token_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(get_settings().secret_key, salt="leukolab-api-token")


def issue_token(*, user_id: int) -> str:
    """Sign a bearer token for ``user_id``."""
    return _token_serializer().dumps({"uid": user_id})


def read_token(token: str) -> int:
    """Return the user id of a valid bearer token or raise ``Unauthenticated``."""
    try:
        data = _token_serializer().loads(token, max_age=get_settings().token_max_age_s)
    except SignatureExpired as exc:
        raise Unauthenticated("token expired: request a new one from /api/v1/auth/token") from exc
    except BadSignature as exc:
        raise Unauthenticated("invalid token") from exc
    return int(data["uid"])


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


def check_login_allowed(*, session: Session, username: str) -> None:
    """Raise ``TooManyRequests`` after ``login_max_failures`` recent failures for ``username``."""
    settings = get_settings()
    since = utcnow() - timedelta(seconds=settings.login_lockout_s)
    failures = session.scalar(
        select(func.count()).where(LoginFailure.username == username, LoginFailure.created_at >= since)
    )
    if failures >= settings.login_max_failures:
        minutes = max(1, settings.login_lockout_s // 60)
        raise TooManyRequests(f"too many failed logins for {username!r}: try again in {minutes} minutes")


def record_login_failure(*, session: Session, username: str, remote: str | None) -> None:
    session.add(LoginFailure(username=username, remote=remote))


def clear_login_failures(*, session: Session, username: str) -> None:
    session.execute(delete(LoginFailure).where(LoginFailure.username == username))
