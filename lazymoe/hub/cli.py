"""`lazymoe hub`: the course in a browser for the group (JupyterHub), and its members' passwords."""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import sys
from pathlib import Path

from lazymoe.hub.passwords import PasswordFile
from lazymoe.hub.setup import HubSettings, members

CONFIG_FILE = Path(__file__).with_name("jupyterhub_config.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("lazymoe-hub"), metavar="DIR",
                        help="the hub's folder: passwords, database, members' homes "
                             "(default: ./lazymoe-hub)")
    parser.add_argument("--keys", type=Path, required=True, metavar="FILE",
                        help="the API server's keys file (lazymoe serve --keys): its members "
                             "are the hub's")
    parser.add_argument("--api-base", metavar="URL",
                        help="the group's API for the notebooks, e.g. http://10.0.0.5:8000/v1 "
                             "(default: none; lab 04 then starts a local server in the kernel)")
    parser.add_argument("--ip", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 for the network, "
                             "behind HTTPS)")
    parser.add_argument("--port", type=int, default=8001, help="port members open (default 8001)")
    parser.add_argument("--hub-port", type=int, default=8081, help="internal hub port (default 8081)")
    parser.add_argument("--proxy-api-port", type=int, default=8082,
                        help="internal proxy control port (default 8082)")
    parser.add_argument("--mem-limit", default="4G", help="memory per member (default 4G)")
    parser.add_argument("--cpu-limit", type=float, default=2.0,
                        help="CPU cores per member (default 2)")
    parser.add_argument("--first-login", action="store_true",
                        help="a member without a password sets it by logging in the first time")
    parser.add_argument("--spawner", choices=["local", "systemd"], default="local",
                        help="local: members' servers are processes of the hub's user (a trusted "
                             "group); systemd: systemdspawner, limits enforced (default: local)")
    what = parser.add_argument_group("instead of starting the hub")
    what.add_argument("--set-password", metavar="NAME",
                      help="set member NAME's hub password (asked twice, or one line on stdin), exit")
    what.add_argument("--remove-password", metavar="NAME", help="remove NAME's hub password, exit")
    what.add_argument("--list", action="store_true", help="list members and who has a password, exit")
    what.add_argument("--print-env", action="store_true",
                      help="print the LAZYMOE_HUB_* variables for `jupyterhub -f`, exit")


def _settings(args: argparse.Namespace) -> HubSettings:
    return HubSettings(args.dir.resolve(), args.keys.resolve(), args.api_base, args.ip, args.port,
                       args.hub_port, args.proxy_api_port, args.mem_limit, args.cpu_limit,
                       args.first_login, args.spawner)


def _read_password(name: str) -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"new hub password for {name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ: nothing changed")
    return first


def run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ValueError as exc:  # --mem-limit or --cpu-limit written wrong
        print(f"lazymoe hub: {exc}", file=sys.stderr)
        return 2
    if not settings.keys_file.exists():
        print(f"lazymoe hub: no keys file at {settings.keys_file}: make members' keys first with "
              f"`lazymoe serve --keys {args.keys} --add-key NAME`", file=sys.stderr)
        return 2
    passwords = PasswordFile(settings.passwords_file)
    group = members(settings)
    if args.list:
        for member, role in group.items():
            state = "password set" if passwords.has(member) else "no password yet"
            print(f"{member:<24} {role:<7} {state}")
        return 0
    if args.set_password:
        if args.set_password not in group:
            print(f"lazymoe hub: {args.set_password!r} has no API key: add it first with "
                  f"`lazymoe serve --keys {args.keys} --add-key {args.set_password}`", file=sys.stderr)
            return 2
        try:
            settings.hub_dir.mkdir(parents=True, exist_ok=True)
            passwords.set(args.set_password, _read_password(args.set_password))
        except ValueError as exc:
            print(f"lazymoe hub: {exc}", file=sys.stderr)
            return 2
        print(f"password set for {args.set_password} (the file keeps only a hash)")
        return 0
    if args.remove_password:
        removed = passwords.remove(args.remove_password)
        print(f"{args.remove_password}: " + ("password removed" if removed else "had no password"))
        return 0
    if args.print_env:
        for name, value in settings.to_env().items():
            print(f"{name}={value}")
        return 0
    jupyterhub = Path(sys.executable).parent / "jupyterhub"
    if not jupyterhub.exists():
        print("lazymoe hub: JupyterHub is not installed: pip install -e '.[hub]' (or make hub)",
              file=sys.stderr)
        return 1
    if shutil.which("configurable-http-proxy") is None:
        print("lazymoe hub: JupyterHub's proxy is missing: npm install -g configurable-http-proxy "
              "(Node.js from your distribution: apt-get install nodejs npm)", file=sys.stderr)
        return 1
    settings.hub_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(settings.hub_dir)  # JupyterHub writes its own files next to where it runs
    print(f"hub for {len(group)} members at http://{settings.ip}:{settings.port}/ (Ctrl+C stops it)")
    os.execve(str(jupyterhub), [str(jupyterhub), "-f", str(CONFIG_FILE)],
              {**os.environ, **settings.to_env()})
    return 0  # not reached: the hub replaces this process
