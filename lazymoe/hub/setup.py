"""What the group's JupyterHub does, as code the config file calls: `configure(c, HubSettings(...))`.

- Who may log in: the members of the API keys file (`lazymoe serve --add-key`); a revoked key
  closes the hub too. Instructors (role "admin" in the keys file) are the hub's admins.
- How: a password from the hub's password file (`lazymoe hub --set-password NAME`), or, with
  `first_login`, the first password a member types becomes theirs.
- Where: each member's home is <hub dir>/homes/<member> (with the systemd spawner
  /var/lib/<member>, the state folder systemd gives each dynamic user), with their own copy of
  course/ and labs/ (copied once; never overwritten) and their own progress file (LAZYMOE_HOME).
- The group's API without configuration: LAZYMOE_API_BASE and a personal key made for the hub
  (kept in <hub dir>/member_keys.json, mode 0600) in every kernel's environment.
- Limits: `mem_limit` and `cpu_limit` per member. systemdspawner enforces both (cgroups); the
  local-process spawner starts each server under `lazymoe.hub.limit` (each process's address
  space capped at `mem_limit`, its processes pinned to `cpu_limit` cores, rounded up) and caps
  PyTorch's threads at `cpu_limit`.
- No GPU for members' kernels (CUDA_VISIBLE_DEVICES=""): the GPUs belong to `lazymoe serve`, and
  a notebook's device="auto" must not take their VRAM.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazymoe import atomic, paths
from lazymoe.hub.limit import parse_bytes

COURSE_FOLDERS = ("course", "labs")
ENV_PREFIX = "LAZYMOE_HUB_"
SYSTEMD_STATE_DIR = Path("/var/lib")  # systemdspawner's HOME with dynamic users: /var/lib/<member>


@dataclass
class HubSettings:
    hub_dir: Path  # the hub's state: database, cookie secret, passwords, homes
    keys_file: Path  # the API server's keys file: the member list
    api_base: str | None = None  # the group's API, e.g. http://10.0.0.5:8000/v1
    ip: str = "127.0.0.1"
    port: int = 8001  # where members open the hub; lazymoe serve has 8000
    hub_port: int = 8081  # internal: the hub behind its proxy
    proxy_api_port: int = 8082  # internal: the proxy's control port
    mem_limit: str = "4G"  # per member
    cpu_limit: float = 2.0  # CPU cores per member
    first_login: bool = False  # the first password a member types becomes theirs
    spawner: str = "local"  # "local" (processes as the hub's user) or "systemd" (systemdspawner)

    def __post_init__(self) -> None:
        parse_bytes(self.mem_limit)  # a ValueError saying how to write it
        if not self.cpu_limit > 0:
            raise ValueError(f"cpu_limit {self.cpu_limit}: give the CPU cores per member, e.g. 2")
        if self.spawner not in ("local", "systemd"):
            raise ValueError(f"spawner {self.spawner!r}: choose local or systemd")

    @property
    def homes(self) -> Path:
        return self.hub_dir / "homes"

    @property
    def passwords_file(self) -> Path:
        return self.hub_dir / "passwords.json"

    @property
    def member_keys_file(self) -> Path:
        return self.hub_dir / "member_keys.json"

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, for jupyterhub_config.py in another process."""
        return {ENV_PREFIX + k.upper(): str(v) for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> HubSettings:
        env = os.environ if env is None else env
        raw = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        for needed in ("hub_dir", "keys_file"):
            if needed not in raw:
                raise ValueError(f"{ENV_PREFIX}{needed.upper()} is not set: start the hub with "
                                 "`lazymoe hub --dir DIR --keys FILE` (docs/instructor.md)")
        kinds = {"hub_dir": Path, "keys_file": Path, "port": int, "hub_port": int,
                 "proxy_api_port": int, "cpu_limit": float,
                 "first_login": lambda v: v in ("True", "1", "true")}
        return cls(**{k: kinds.get(k, str)(v) for k, v in raw.items()
                      if k in cls.__dataclass_fields__})


def members(settings: HubSettings) -> dict[str, str]:
    """{member: role} from the API keys file (read fresh: a revoked key counts at once)."""
    if not settings.keys_file.exists():
        return {}
    try:  # the format lazymoe.server.auth documents: {"version": 1, "keys": [{"member", "role"...}]}
        records = json.loads(settings.keys_file.read_text())["keys"]
        found = {r["member"]: r.get("role", "member") for r in records}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{settings.keys_file} is not a lazymoe keys file ({exc})") from exc
    return dict(sorted(found.items()))


def personal_key(settings: HubSettings, member: str) -> str | None:
    """The member's key for the hub's kernels: made once in the keys file, then reused.

    A key the instructor revoked is not made again (that would undo the revocation): None.
    """
    from lazymoe.server.auth import KeyStore

    store = KeyStore(settings.keys_file)
    saved = {}
    if settings.member_keys_file.exists():
        saved = json.loads(settings.member_keys_file.read_text())
    key = saved.get(member)
    if key is not None:
        return key if store.verify(key) == member else None
    if member not in members(settings):
        return None
    saved[member] = store.add(member)
    atomic.write_json(settings.member_keys_file, saved, mode=0o600, indent=1)
    return saved[member]


def copy_course(home: Path) -> list[str]:
    """Give a new member their own copy of the course (folders already there are left alone)."""
    copied = []
    for name in COURSE_FOLDERS:
        source, target = paths.REPO_ROOT / name, home / name
        if source.is_dir() and not target.exists():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
            copied.append(name)
    return copied


def configure(c: Any, settings: HubSettings) -> None:
    """Fill a JupyterHub config object `c` (what jupyterhub_config.py gets) from `settings`."""
    from lazymoe.hub.authenticator import MemberAuthenticator

    settings.hub_dir.mkdir(parents=True, exist_ok=True)
    settings.homes.mkdir(exist_ok=True)
    c.JupyterHub.ip, c.JupyterHub.port = settings.ip, settings.port
    c.JupyterHub.hub_ip, c.JupyterHub.hub_port = "127.0.0.1", settings.hub_port
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port}"
    c.ConfigurableHTTPProxy.pid_file = str(settings.hub_dir / "proxy.pid")
    c.JupyterHub.db_url = f"sqlite:///{settings.hub_dir / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(settings.hub_dir / "jupyterhub_cookie_secret")
    c.JupyterHub.authenticator_class = MemberAuthenticator
    c.MemberAuthenticator.settings_env = settings.to_env()
    c.Authenticator.any_allow_config = True  # MemberAuthenticator.check_allowed is the allow rule
    c.Authenticator.admin_users = {m for m, role in members(settings).items() if role == "admin"}

    c.Spawner.default_url = "/lab/tree/course/00_start_here.ipynb"
    c.Spawner.mem_limit = settings.mem_limit
    c.Spawner.cpu_limit = settings.cpu_limit
    c.Spawner.start_timeout = c.Spawner.http_timeout = 120  # seconds: a cold start on a busy box
    singleuser = str(Path(sys.executable).parent / "jupyterhub-singleuser")
    c.Spawner.cmd = [singleuser]
    threads = str(max(1, int(settings.cpu_limit)))  # PyTorch and BLAS use this many cores
    c.Spawner.environment = {
        "LAZYMOE_HOME": lambda spawner: str(_home(settings, spawner) / ".lazymoe"),
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "CUDA_VISIBLE_DEVICES": "",  # the GPUs are the API server's: kernels compute on the CPU
        "LAZYMOE_DATA": str(paths.data_dir()),  # the bundled model, shared read-only
        **({"LAZYMOE_API_BASE": settings.api_base} if settings.api_base else {}),
    }
    c.Spawner.pre_spawn_hook = lambda spawner: _before_spawn(settings, spawner)
    if os.geteuid() == 0:  # the local spawner runs members' servers as the hub's own user
        c.Spawner.args = ["--allow-root"]
    if settings.spawner == "systemd":
        # production: one transient systemd unit per member, limits enforced by cgroups
        c.JupyterHub.spawner_class = "systemdspawner.SystemdSpawner"
        c.SystemdSpawner.dynamic_users = True
        c.SystemdSpawner.isolate_tmp = True
        c.SystemdSpawner.isolate_devices = True  # no GPU for kernels: the API server has them
        c.SystemdSpawner.default_shell = "/bin/bash"
        # with dynamic users systemdspawner ignores user_workingdir: HOME and the working folder
        # are /var/lib/<member>, so the course is copied there (member_home). Not yet run on a
        # systemd host: see docs/instructor.md, section 9.
    else:
        c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
        c.SimpleLocalProcessSpawner.home_dir_template = str(settings.homes / "{username}")
        # enforce mem_limit (each process of the member's server) and cpu_limit (the cores the
        # member's processes may run on): lazymoe.hub.limit
        c.Spawner.cmd = [sys.executable, "-m", "lazymoe.hub.limit",
                         "--mem-bytes", str(parse_bytes(settings.mem_limit)),
                         "--cpus", str(settings.cpu_limit), "--", singleuser]


def member_home(settings: HubSettings, member: str) -> Path:
    """Where `member`'s server starts, and their copy of the course and progress file live."""
    if settings.spawner == "systemd":
        return SYSTEMD_STATE_DIR / member
    return settings.homes / member


def _home(settings: HubSettings, spawner: Any) -> Path:
    if settings.spawner == "systemd":
        return member_home(settings, spawner.user.name)
    return Path(getattr(spawner, "home_dir", "") or member_home(settings, spawner.user.name))


def _before_spawn(settings: HubSettings, spawner: Any) -> None:
    home = _home(settings, spawner)
    home.mkdir(parents=True, exist_ok=True)
    copy_course(home)
    key = personal_key(settings, spawner.user.name) if settings.api_base else None
    if key is not None:
        spawner.environment = {**spawner.environment, "LAZYMOE_API_KEY": key}
    elif settings.api_base:
        spawner.log.warning("%s has no valid API key (revoked?): no LAZYMOE_API_KEY",
                            spawner.user.name)
