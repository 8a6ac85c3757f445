"""API tokens: stored as SHA-256 hashes in a service table beside Optuna's, one user and one
team per token. With ``auth = "none"`` (the local default) everyone is the user ``local`` of
team ``local``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.studies import Principal

LOCAL = Principal(user="local", team="local")
TOKEN_PREFIX = "tt_"


class Base(DeclarativeBase):
    pass


class ApiToken(Base):
    __tablename__ = "tailtune_api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True, index=True)
    user: Mapped[str] = mapped_column(sa.String(120))
    team: Mapped[str] = mapped_column(sa.String(120))
    created: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(default=False)


def create_tables(engine: sa.Engine) -> None:
    Base.metadata.create_all(engine)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(engine: sa.Engine, user: str, team: str) -> str:
    """Create a token for ``user`` in ``team``; the plain token is returned once, never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with sa.orm.Session(engine) as session, session.begin():
        session.add(ApiToken(token_hash=_hash(token), user=user, team=team,
                             created=dt.datetime.now(dt.UTC)))
    return token


def principal_for(engine: sa.Engine, token: str) -> Principal | None:
    digest = _hash(token)
    with sa.orm.Session(engine) as session:
        row = session.scalar(sa.select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or row.revoked or not hmac.compare_digest(row.token_hash, digest):
        return None
    return Principal(user=row.user, team=row.team)


def token_from_header(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` or of HTTP Basic (the password; browsers
    send Basic to the dashboard, which cannot send bearer tokens)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip()).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None
