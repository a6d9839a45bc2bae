"""Access control: which client may do what in which room, as room-scoped signed tokens or a static list.

Two modes, usable together (both off: the server is open, as before):

- **Signed tokens** (`server.auth.secret`, or the environment variable named by `server.auth.secret_env`): a JWT
  signed with HS256, the way LiveKit and Agora grant access: your backend (or `python -m sendreturn_mood token`)
  mints a short-lived token for one room and role, the client presents it (`?token=` or `Authorization: Bearer`),
  and the server checks signature, expiry and scope without any call back. Claims::

      iss, aud    "sendreturn-mood" (configurable): a token for another service is refused
      exp, iat    expiry (required) and issue time; nbf honoured; lifetime at most server.auth.max_ttl_seconds
      jti         token id (listed in server.auth.revoked: refused)
      room        the room name, or a glob over room names ("team-*", "*"): the token is good for those rooms only
      roles       ["source"], ["listener"] or both: a listener token cannot stream, a source token for room A
                  cannot listen to or take room B; ["analyze"]: POST /v1/analyze (no room is joined)
      sub         who holds it (free text, <= 128 visible characters); required with `reserve`
      reserve     true: this source's slot is kept for it (see below)

- **Static tokens** (`server.auth_tokens`): the simple mode. Any listed token grants every role in every room.

A `reserve` grant holds the room's source slot for its `sub` (reservations.py): a new connection with the same
`sub` replaces a still-registered old one, others get 409 source_taken.

Tokens are secrets: no message or exception text here contains one (redaction.py keeps them out of the logs).
"""

from __future__ import annotations

import fnmatch
import hmac
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .. import protocol
from ..config import ConfigError, Settings
from ..protocol import TOKEN_ROLES, Refusal

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash output
ROOM_PATTERN_RE = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]{1,64}")
SUBJECT_RE = re.compile(r"[\x20-\x7e]{1,128}")


class AuthError(ConfigError):
    """A configuration or minting request that cannot work (no secret, bad room pattern, TTL too long)."""


@dataclass(frozen=True)
class Grant:
    """What a verified token allows."""

    room: str  # a room name or a glob over room names
    roles: frozenset[str]
    subject: str | None = None
    reserve: bool = False
    token_id: str | None = None
    expires_at: float | None = None  # unix time; None for static tokens
    static: bool = False

    def covers(self, room: str) -> bool:
        return fnmatch.fnmatchcase(room, self.room)

    def allows(self, room: str, role: str) -> bool:
        return role in self.roles and self.covers(room)


OPEN = Grant("*", frozenset(TOKEN_ROLES), static=True)  # what everyone gets when auth is off


@dataclass(frozen=True)
class AuthSettings:
    secret: bytes | None
    static_tokens: tuple[str, ...]
    issuer: str
    audience: str
    leeway: float
    max_ttl: float
    reserve_seconds: float
    revoked: frozenset[str]

    @classmethod
    def from_config(cls, config: Settings, environ: Mapping[str, str] | None = None) -> "AuthSettings":
        """The server's auth settings; the secret comes from `server.auth.secret`, else the environment variable
        named by `server.auth.secret_env`. Raises AuthError for a secret shorter than 32 bytes or a bad token."""
        a = config.server.auth
        env = os.environ if environ is None else environ
        raw = a.secret if a.secret is not None else env.get(a.secret_env or "", "") or None
        secret = None if raw is None else raw.encode()
        if secret is not None and len(secret) < MIN_SECRET_BYTES:
            where = "server.auth.secret" if a.secret is not None else f"${a.secret_env}"
            raise AuthError(f"{where}: an HS256 secret needs at least {MIN_SECRET_BYTES} bytes (got {len(secret)})")
        tokens = config.server.auth_tokens
        for i, t in enumerate(tokens):
            if not protocol.TOKEN_RE.fullmatch(t):
                raise AuthError(f"server.auth_tokens[{i}]: a token is 1 to 4096 visible ASCII characters")
        return cls(
            secret=secret,
            static_tokens=tokens,
            issuer=a.issuer,
            audience=a.audience,
            leeway=a.leeway_seconds,
            max_ttl=a.max_ttl_seconds,
            reserve_seconds=a.reserve_seconds,
            revoked=frozenset(a.revoked),
        )


class Authenticator:
    """Verifies tokens into grants and mints signed ones. Pure (time is passed in or read from time.time)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, config: Settings, environ: Mapping[str, str] | None = None) -> "Authenticator":
        return cls(AuthSettings.from_config(config, environ))

    @property
    def enabled(self) -> bool:
        return self.settings.secret is not None or bool(self.settings.static_tokens)

    @property
    def can_mint(self) -> bool:
        return self.settings.secret is not None

    # ------------------------------------------------------------------------------------------------ verify

    def verify(self, token: str | None, now: float | None = None) -> Grant:
        """The grant a token carries (OPEN when auth is off). Refusal(unauthorized) otherwise; the message never
        contains the token."""
        if not self.enabled:
            return OPEN
        if token is None or not token.strip():
            raise Refusal(protocol.UNAUTHORIZED, "this server needs an access token (?token= or Authorization: Bearer)")
        if not protocol.TOKEN_RE.fullmatch(token):
            raise Refusal(protocol.UNAUTHORIZED, "an access token is 1 to 4096 visible ASCII characters")  # never echoed
        encoded = token.encode()
        if any(hmac.compare_digest(encoded, t.encode()) for t in self.settings.static_tokens):
            return Grant("*", frozenset(TOKEN_ROLES), static=True)
        if self.settings.secret is None or token.count(".") != 2:
            raise Refusal(protocol.UNAUTHORIZED, "invalid access token")
        return self._verify_jwt(token, time.time() if now is None else now)

    def authorize(self, token: str | None, room: str, role: str, now: float | None = None) -> Grant:
        """verify() and check that the grant covers `role` in `room` (Refusal unauthorized if not)."""
        grant = self.verify(token, now)
        if not grant.covers(room):
            raise Refusal(protocol.UNAUTHORIZED, f"this access token is not valid for room {protocol.shown(room)}")
        if role not in grant.roles:
            raise Refusal(protocol.UNAUTHORIZED, f"this access token does not grant the {role} role")
        return grant

    def _verify_jwt(self, token: str, now: float) -> Grant:
        import jwt

        s = self.settings
        try:
            # exp/nbf are checked below against `now` (one clock for every check, and testable)
            claims = jwt.decode(
                token,
                s.secret,  # type: ignore[arg-type]
                algorithms=[ALGORITHM],
                audience=s.audience,
                issuer=s.issuer,
                options={"require": ["exp", "iss", "aud"], "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidAudienceError:
            raise Refusal(protocol.UNAUTHORIZED, "access token is for another service (aud)") from None
        except jwt.InvalidIssuerError:
            raise Refusal(protocol.UNAUTHORIZED, "access token from an unknown issuer (iss)") from None
        except jwt.PyJWTError:  # bad signature, malformed, wrong algorithm, missing claim: one answer for all
            raise Refusal(protocol.UNAUTHORIZED, "invalid access token") from None
        except Exception:  # pragma: no cover - whatever the library raises for hostile input is still a 401
            raise Refusal(protocol.UNAUTHORIZED, "invalid access token") from None
        return self._grant(claims, now)

    def _grant(self, claims: Mapping[str, Any], now: float) -> Grant:
        s = self.settings

        def bad(what: str) -> Refusal:
            return Refusal(protocol.UNAUTHORIZED, f"invalid access token: {what}")

        exp, nbf = claims["exp"], claims.get("nbf", 0)
        for name, value in (("exp", exp), ("nbf", nbf)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise bad(f"{name} must be a number")
        if exp + s.leeway <= now:
            raise Refusal(protocol.UNAUTHORIZED, "access token expired")
        if nbf - s.leeway > now:
            raise Refusal(protocol.UNAUTHORIZED, "access token not valid yet (nbf)")
        iat = claims.get("iat", now)
        if not isinstance(iat, (int, float)) or isinstance(iat, bool) or not math.isfinite(iat):
            raise bad("iat must be a number")
        if exp - min(iat, now) > s.max_ttl + s.leeway:
            raise bad(f"lifetime beyond the server's limit of {s.max_ttl:g} s")
        room = claims.get("room")
        if not isinstance(room, str) or not ROOM_PATTERN_RE.fullmatch(room):
            raise bad("room must be a room name or pattern")
        roles = claims.get("roles")
        roles = [roles] if isinstance(roles, str) else roles
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) and r in TOKEN_ROLES for r in roles):
            raise bad(f"roles must be a non-empty list of {', '.join(TOKEN_ROLES)}")
        sub = claims.get("sub")
        if sub is not None and (not isinstance(sub, str) or not SUBJECT_RE.fullmatch(sub)):
            raise bad("sub must be 1 to 128 visible characters")
        reserve = claims.get("reserve", False)
        if not isinstance(reserve, bool) or (reserve and sub is None):
            raise bad("reserve must be true or false, and needs sub")
        jti = claims.get("jti")
        if jti is not None and not isinstance(jti, str):
            raise bad("jti must be a string")
        if jti is not None and jti in s.revoked:
            raise Refusal(protocol.UNAUTHORIZED, "access token revoked")
        return Grant(room, frozenset(roles), sub, reserve, jti, float(exp))

    # ------------------------------------------------------------------------------------------------ mint

    def mint(
        self,
        room: str,
        roles: Iterable[str],
        ttl: float,
        subject: str | None = None,
        reserve: bool = False,
        now: float | None = None,
        token_id: str | None = None,
    ) -> str:
        """A signed token for `roles` in `room` (a name or glob) valid for `ttl` seconds. AuthError if unusable."""
        import jwt

        s = self.settings
        if s.secret is None:
            raise AuthError("no signing secret: set server.auth.secret in the config or the environment variable "
                            "named by server.auth.secret_env")
        roles = sorted(set(roles))
        if not roles or not set(roles) <= set(TOKEN_ROLES):
            raise AuthError(f"roles must be some of {', '.join(TOKEN_ROLES)}")
        if not ROOM_PATTERN_RE.fullmatch(room):
            raise AuthError("room must be 1 to 64 characters of A-Z a-z 0-9 _ . - (or a glob with * ? [ ])")
        if not 0 < ttl <= s.max_ttl:
            raise AuthError(f"ttl must be in (0, {s.max_ttl:g}] seconds (server.auth.max_ttl_seconds)")
        if subject is not None and not SUBJECT_RE.fullmatch(subject):
            raise AuthError("sub must be 1 to 128 visible characters")
        if reserve and subject is None:
            raise AuthError("a reserved source slot needs a subject (--sub): the holder is recognised by it")
        t = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": s.issuer,
            "aud": s.audience,
            "iat": t,
            "nbf": t,
            "exp": t + int(math.ceil(ttl)),
            "jti": token_id or uuid.uuid4().hex,
            "room": room,
            "roles": roles,
        }
        if subject is not None:
            claims["sub"] = subject
        if reserve:
            claims["reserve"] = True
        return jwt.encode(claims, s.secret, algorithm=ALGORITHM)  # type: ignore[arg-type]
