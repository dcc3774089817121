#!/usr/bin/env python3
"""Probe a live hub with hostile input and print what it answered: probe → answer → verdict.

    .venv/bin/python scripts/probe.py                 # the hub at http://127.0.0.1:8080
    .venv/bin/python scripts/probe.py --quick         # without the probes that wait on timeouts

Loopback only (127.0.0.1, ::1, localhost): point it at a staging hub through a tunnel, never
at someone else's. Tokens are minted with HUB_SECRET (environment or .env); --no-auth for a
hub with HUB_AUTH=off. Each probe uses accounts of its own (prefix --prefix) and is bounded in
time; the whole run takes about 30 s, plus the send timeout and the header timeout of the hub
without --quick. Exit status 0 when every verdict is ok, 1 otherwise; --json FILE writes the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadlib import hostile

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the hub (loopback)")
    parser.add_argument("--no-auth", action="store_true", help="the hub runs with HUB_AUTH=off")
    parser.add_argument("--quick", action="store_true", help="skip probes that wait on timeouts")
    parser.add_argument("--only", action="append", default=[], help="run this probe (repeatable)")
    parser.add_argument("--prefix", default="probe", help="prefix of the probes' account IDs")
    parser.add_argument("--max-message", type=int, default=65536, help="the hub's HUB_MAX_MESSAGE")
    parser.add_argument("--send-timeout", type=float, default=20.0, help="the hub's send timeout")
    parser.add_argument("--body-timeout", type=float, default=10.0, help="the hub's body timeout")
    parser.add_argument("--header-timeout", type=float, default=75.0, help="its header timeout")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in LOOPBACK:
        parser.error("--url must be a loopback address (127.0.0.1, ::1 or localhost)")
    unknown = set(args.only) - set(hostile.PROBES)
    if unknown:
        parser.error(f"unknown probe(s) {sorted(unknown)}; known: {sorted(hostile.PROBES)}")
    return args


def token_minter(no_auth: bool) -> Any:
    if no_auth:
        return lambda *_, **__: None
    from hub.config import read_dotenv
    from hub.core.auth import mint

    secret = os.environ.get("HUB_SECRET") or read_dotenv(Path(".env")).get("HUB_SECRET")
    if not secret:
        sys.exit("probe: HUB_SECRET is not set (environment or .env); or pass --no-auth")

    def token(subject: str, publish: Any = (), **claims: Any) -> str:
        import jwt

        value = mint(secret, subject, time.time(), 600, publish)
        if not claims:
            return value
        payload = {**jwt.decode(value, secret, algorithms=["HS256"]), **claims}
        return jwt.encode(payload, secret, algorithm="HS256")

    return token


async def main() -> int:
    args = arguments()
    parts = urlsplit(args.url)
    target = hostile.Target(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 80,
        token=token_minter(args.no_auth),
        prefix=args.prefix,
        max_message=args.max_message,
        send_timeout=args.send_timeout,
        body_timeout=args.body_timeout,
        header_timeout=args.header_timeout,
    )
    names = args.only or [n for n in hostile.PROBES if not (args.quick and n in hostile.SLOW)]
    rows = []
    width = max(len(name) for name in names)
    print(f"{'probe':<{width}}  {'answer':<40}  verdict   seconds")
    for name in names:
        outcome = await hostile.run(target, name)
        verdict = "ok" if outcome.ok else "FAIL"
        print(f"{name:<{width}}  {outcome.answer:<40}  {verdict:<8}  {outcome.seconds:6.1f}")
        rows.append({"probe": name, "sends": hostile.PROBES[name][0], **vars(outcome)})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    failed = [row["probe"] for row in rows if not row["ok"]]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} ok" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
