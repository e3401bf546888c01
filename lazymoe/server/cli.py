"""`lazymoe serve`: run the OpenAI-compatible server, and manage members' API keys.

lazymoe serve --keys keys.json --add-key alice     # prints alice's new key, once
lazymoe serve --keys keys.json --list-keys
lazymoe serve --keys keys.json --revoke-key alice
lazymoe serve --keys keys.json --host 0.0.0.0 --port 8000 --vram-budget 6GiB
lazymoe serve --max-batch 16                        # up to 16 requests decode together
lazymoe serve                                       # loopback only, no keys, bundled model
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from lazymoe.engine.options import add_engine_arguments
from lazymoe.i18n import _
from lazymoe.server.config import ServerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    where = parser.add_argument_group(_("where"))
    where.add_argument(
        "--host", default=d.host, help=_("address to bind (default: %(default)s, this machine only)")
    )
    where.add_argument("--port", type=int, default=d.port, help=_("TCP port (default: %(default)s)"))
    keys = parser.add_argument_group(_("keys"))
    keys.add_argument(
        "--keys", metavar="FILE", help=_("members' hashed API keys (JSON); without it: no auth")
    )
    keys.add_argument(
        "--add-key", metavar="NAME", help=_("make a key for member NAME, print it once, exit")
    )
    keys.add_argument("--revoke-key", metavar="NAME", help=_("remove every key of member NAME, exit"))
    keys.add_argument(
        "--list-keys", action="store_true", help=_("list the members who have keys, exit")
    )
    keys.add_argument(
        "--admin", action="store_true", help=_("with --add-key: this member sees everyone on /metrics")
    )
    per_member = {"requests-per-minute": _("requests per minute"),
                  "tokens-per-minute": _("tokens per minute"), "tokens-per-day": _("tokens per day")}
    for name in per_member:
        keys.add_argument(
            f"--key-{name}",
            type=int,
            metavar="N",
            help=_("with --add-key: this member's own {limit} (default: the server's)").format(
                limit=per_member[name]),
        )
    model = parser.add_argument_group(_("model (passed to the engine: lazymoe.engine.EngineConfig)"))
    add_engine_arguments(model)
    model.add_argument(
        "--fake", action="store_true", help=_("serve a deterministic echo model (no weights)")
    )
    limits = parser.add_argument_group(_("limits"))
    limits.add_argument("--max-queue", type=int, default=d.max_queue)
    limits.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch,
        help=_("requests that decode together, one engine step for all (1: one at a time; "
        "default: %(default)s)"),
    )
    limits.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    limits.add_argument("--max-tokens-cap", type=int, default=d.max_tokens_cap)
    limits.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens)
    limits.add_argument("--timeout-s", type=float, default=d.request_timeout_s)
    limits.add_argument("--requests-per-minute", type=int, default=d.requests_per_minute)
    limits.add_argument("--tokens-per-minute", type=int, default=d.tokens_per_minute)
    limits.add_argument("--shutdown-grace-s", type=float, default=d.shutdown_grace_s)
    limits.add_argument("--tokens-per-day", type=int, default=d.tokens_per_day)
    limits.add_argument("--header-timeout-s", type=float, default=d.header_timeout_s)
    limits.add_argument("--body-timeout-s", type=float, default=d.body_timeout_s)
    limits.add_argument("--auth-failures-per-minute", type=int, default=d.auth_failures_per_minute)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def _manage_keys(args: argparse.Namespace) -> int:
    from lazymoe.server.auth import KeyStore

    if not args.keys:
        print(
            "--add-key/--revoke-key/--list-keys need --keys FILE (where the hashes live)",
            file=sys.stderr,
        )
        return 2
    store = KeyStore(args.keys, create=bool(args.add_key))
    if args.add_key:
        try:
            key = store.add(
                args.add_key,
                role="admin" if args.admin else "member",
                requests_per_minute=args.key_requests_per_minute,
                tokens_per_minute=args.key_tokens_per_minute,
                tokens_per_day=args.key_tokens_per_day,
            )
        except ValueError as exc:  # a bad name or limit: say which, no traceback
            print(f"lazymoe serve: {exc}", file=sys.stderr)
            return 2
        print(f"New key for {args.add_key} (shown only now; the file keeps only a hash):\n{key}")
        print(
            "They set it with: export LAZYMOE_API_KEY=<key>  (and LAZYMOE_API_BASE=http://<host>:<port>/v1)"
        )
    elif args.revoke_key:
        n = store.revoke(args.revoke_key)
        print(f"removed {n} key(s) of {args.revoke_key}" if n else f"{args.revoke_key} has no key")
        return 0 if n else 1
    else:
        members = store.members()
        print("\n".join(members) if members else f"no keys in {args.keys}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.add_key or args.revoke_key or args.list_keys:
        return _manage_keys(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            keys_file=args.keys,
            max_queue=args.max_queue,
            max_batch=args.max_batch,
            max_prompt_tokens=args.max_prompt_tokens,
            max_tokens_cap=args.max_tokens_cap,
            default_max_tokens=args.default_max_tokens,
            request_timeout_s=args.timeout_s,
            requests_per_minute=args.requests_per_minute,
            tokens_per_minute=args.tokens_per_minute,
            shutdown_grace_s=args.shutdown_grace_s,
            tokens_per_day=args.tokens_per_day,
            header_timeout_s=args.header_timeout_s,
            body_timeout_s=args.body_timeout_s,
            auth_failures_per_minute=args.auth_failures_per_minute,
        )
        from lazymoe.server.app import create_app
        from lazymoe.server.embedded import build_server

        backend = _backend(args)
        app = create_app(backend, config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lazymoe serve: {exc}", file=sys.stderr)
        return 2
    engine = getattr(backend, "engine", None)  # what the engine runs, and why (as lazymoe run)
    if engine is not None:
        print(engine.describe(), file=sys.stderr)
    for note in app.state.notes:  # limits changed to fit the model (its context...)
        print(f"lazymoe serve: {note}")
    auth = f"keys from {config.keys_file}" if config.keys_file else "NO keys (loopback only)"
    print(
        f"lazymoe serve: {backend.model_id} on http://{config.host}:{config.port}/v1, {auth}. Ctrl+C stops."
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl+C after shutting down
        build_server(app, config, log_level=args.log_level).run()
    print("lazymoe serve: stopped.")
    return 0


def _backend(args: argparse.Namespace):  # -> Backend
    if args.fake:
        from lazymoe.server.fake import EchoBackend

        return EchoBackend()
    from lazymoe.engine import EngineConfig
    from lazymoe.server.backend import EngineBackend

    config = EngineConfig.from_args(args)
    fields = {k: v for k, v in config.cli_values().items() if k != "model_path"}
    return EngineBackend.from_model_path(config.model_path, **fields)
