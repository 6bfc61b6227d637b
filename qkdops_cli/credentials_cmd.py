"""``qkdops credentials``: create (or rotate) the stack's generated credentials; never prints a value.

    qkdops credentials [--config links.yaml] [--rotate]
    qkdops credentials --compose-dir compose-secrets [--rotate]

Without ``--compose-dir``: the local stack's files in the config's state dir — ``pager-sink-token``,
``prometheus-password``, ``alertmanager-password`` (mode 0600) and the web configs derived from the
passwords, ``prometheus-web.yml`` and ``alertmanager-web.yml`` (``qkdops up`` creates whatever is
missing by itself; this command is for rotating, or for preparing a machine). With ``--rotate`` the
three secrets get new random values; restart ``qkdops up`` so that Prometheus, Alertmanager and the
pager sink take them (``qkdops.credentials`` says which file serves what).

With ``--compose-dir DIR``: the same five files as docker-compose's ``secrets:`` (``docker-compose.yml``
names ``./compose-secrets/``): the directory 0700, the files 0644 because the containers run as users
of their own. Run it once before the first ``docker compose up``; ``--rotate`` then
``docker compose up -d --force-recreate`` rotates them.

Prints the files written (or "unchanged"); exit 0, or 2 with a message naming the file on an error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qkdops import credentials
from qkdops.config import DEFAULT_CONFIG, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("credentials", help="create or rotate the stack's generated credentials (local state dir or compose secrets)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="links.yaml whose state dir holds them (default: the shipped one)")
    p.add_argument("--compose-dir", type=Path, metavar="DIR", help="write docker-compose's secrets to DIR instead")
    p.add_argument("--rotate", action="store_true", help="replace the secrets with new random values")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.compose_dir is not None:
        written = credentials.write_compose_secrets(args.compose_dir, rotate=args.rotate)
        where = args.compose_dir
    else:
        state_dir = load_config(args.config).runtime.state_dir
        written = []
        if args.rotate:
            for secret in credentials.STACK_SECRETS:
                path = secret.path(state_dir)
                if credentials.create_secret_file(path, secret, replace=path.exists()):
                    written.append(path)
        before = {p: p.stat().st_mtime_ns for p in _local_files(state_dir) if p.exists()}
        credentials.prepare_server_credentials(state_dir)
        written += [p for p in _local_files(state_dir) if p.exists() and before.get(p) != p.stat().st_mtime_ns and p not in written]
        where = state_dir
    for path in written:
        print(path)
    if not written:
        print(f"{where}: unchanged (every credential present; --rotate replaces them)")
    elif args.rotate:
        print("rotated: restart `qkdops up` (compose: `docker compose up -d --force-recreate`) so every server and client takes them")
    return 0


def _local_files(state_dir: Path) -> list[Path]:
    return [*(s.path(state_dir) for s in credentials.STACK_SECRETS),
            state_dir / credentials.PROMETHEUS_WEB_CONFIG, state_dir / credentials.ALERTMANAGER_WEB_CONFIG]
