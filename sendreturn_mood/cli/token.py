"""`python -m sendreturn_mood token --room lobby --role source --ttl 1h`: mint a signed access token.

The secret comes from the same place the server reads it (`server.auth.secret` in --config, else the environment
variable named by `server.auth.secret_env`, SENDRETURN_MOOD_SECRET by default), so a token minted here is accepted by
a server started with the same configuration. The token alone goes to stdout (for scripts: TOKEN=$(...)); with
--json, its claims too. In production, mint tokens in your own backend with any JWT library: the claims are listed in
sendreturn_mood/server/auth.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from ..server.auth import AuthError, Authenticator
from ..config import ConfigError, load_config
from ..protocol import TOKEN_ROLES

TTL_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)")
TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--room", required=True, help="room name, or a glob over room names (team-*, *)")
    parser.add_argument("--role", action="append", choices=TOKEN_ROLES, required=True, help="role granted (repeat for several)")
    parser.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    parser.add_argument("--sub", help="who holds it (required with --reserve)")
    parser.add_argument("--reserve", action="store_true", help="keep this source's slot while it reconnects")
    parser.add_argument("--config", metavar="FILE", help="configuration YAML (where the secret and limits come from)")
    parser.add_argument("--json", action="store_true", help="print {token, claims} as JSON")


def run(args: argparse.Namespace) -> int:
    """0: printed; 2: no secret, bad config or arguments (the reason on stderr)."""
    try:
        ttl = parse_ttl(args.ttl)
        auth = Authenticator.from_config(load_config(args.config))
        token = auth.mint(args.room, args.role, ttl, subject=args.sub, reserve=args.reserve)
    except (ValueError, ConfigError, AuthError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        import jwt

        print(json.dumps({"token": token, "claims": jwt.decode(token, options={"verify_signature": False})}))
    else:
        print(token)
    return 0


def parse_ttl(text: str) -> float:
    """'90' / '90s' / '15m' / '1h' / '7d' -> seconds (ValueError otherwise)."""
    m = TTL_RE.fullmatch(text.strip().lower())
    if m is None:
        raise ValueError(f"a duration like 90s, 15m, 1h or 7d, got {text[:20]!r}")
    return float(m.group(1)) * TTL_UNITS[m.group(2)]
