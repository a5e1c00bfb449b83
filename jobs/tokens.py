"""Per-project API tokens: random, shown once, stored only as a sha256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.errors import GenfarmError
from jobs.models import ApiToken, Project, utcnow
from jobs.submit import check_project, new_id

PREFIX = "gf_"


class InvalidTokenName(GenfarmError, ValueError):
    """A token label that is too long or holds control characters."""


@dataclass(frozen=True)
class NewToken:
    id: str
    project: str
    token: str  # the only time the token itself exists outside its holder


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_token_name(name: str) -> str:
    """A token's label is shown in listings and logs: printable text of at most 128 characters,
    never a control character (a newline, an escape sequence) that could forge a line."""
    if len(name) > 128 or any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise InvalidTokenName(f"token name {name[:40]!r}: expected at most 128 printable "
                               "characters")
    return name


def create_token(session: Session, project: str, name: str = "") -> NewToken:
    """A new token for ``project`` (created if it does not exist yet)."""
    check_project(project)
    check_token_name(name)
    if session.get(Project, project) is None:
        session.add(Project(name=project, created_at=utcnow()))
        session.flush()
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(id=new_id(), project=project, name=name, token_sha256=digest(token),
                   created_at=utcnow())
    session.add(row)
    return NewToken(row.id, project, token)


def project_for(session: Session, token: str) -> str | None:
    """The project a presented token belongs to, or None (unknown, revoked or malformed)."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    wanted = digest(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == wanted))
    # the lookup is by digest; compare again in constant time for good measure
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_sha256, wanted):
        return None
    return row.project


def revoke(session: Session, token_id: str) -> bool:
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True
