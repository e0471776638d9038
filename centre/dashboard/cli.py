"""``kit centre operator add NAME`` (password from stdin or asked twice) and ``kit centre
token add NAME`` (prints a new bearer token for a machine; only its hash is kept)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from centre.config import load_config
from centre.dashboard.access import Tokens, in_data
from config.web.auth import BadPassword, Users, read_new_password
from edge.errors import KitError

COMMANDS = frozenset({"operator", "token"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kit centre", description="Dashboard operators and API tokens (看板操作员与接口令牌)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (
        ("operator", "操作员登录 / an operator's dashboard login"),
        ("token", "机器接口令牌 / a machine's bearer token for /v1/orders and /v1/export"),
    ):
        p = sub.add_parser(command, help=help_text)
        p.add_argument("action", choices=["add"])
        p.add_argument("name", help="1-32 letters, digits or _.-")
        p.add_argument("--config", metavar="FILE", type=Path, required=True)
        if command == "operator":
            p.add_argument(
                "--stdin", action="store_true", help="read the password from one line of stdin"
            )
    return parser


def main(argv: list[str]) -> int:
    """0 when done; 1 when the passwords typed differ; 2 for a bad config or name/password."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except KitError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        if args.command == "token":
            tokens = Tokens(in_data(config, config.dashboard.tokens_file))
            token = tokens.add(args.name)
            print(f"令牌 / token for {args.name} (shown once; Authorization: Bearer <token>):")
            print(token)
            return 0
        users = Users(in_data(config, config.dashboard.operators_file))
        password = read_new_password(args.stdin or not sys.stdin.isatty())
        if password is None:
            return 1
        users.set(args.name, password)
    except BadPassword as err:
        print(f"错误 / error: {err}", file=sys.stderr)
        return 2
    print(f"已设置 / set: {args.name} ({users.path})")
    return 0
