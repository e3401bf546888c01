"""The group's JupyterHub on loopback: two members log in, run module 00, keep their own progress.

Real processes: `lazymoe serve --fake` as the group's API, `lazymoe hub` (JupyterHub, its
configurable-http-proxy from npm, one single-user Jupyter server per member). About a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import nbformat
import pytest

pytest.importorskip("jupyterhub", reason="needs JupyterHub: pip install -e '.[hub]'")
from traitlets.config import Config

from lazymoe.hub import limit, setup
from lazymoe.hub.authenticator import MemberAuthenticator
from lazymoe.hub.passwords import PasswordFile
from lazymoe.quiz import load_bank
from lazymoe.server.auth import KeyStore

PASSWORDS = {"alice": "alice-pass-1", "bob": "bob-pass-22"}
START_TIMEOUT_S = 90.0
MEMBER_MEM_LIMIT = "3G"  # what the hub test gives each member's processes
GiB = 2**30


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:4]} exited:\n{log.read_text()[-3000:]}")
        try:  # trust_env=False: loopback, never through a proxy from the environment
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"nothing answered at {url} in {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    # a new session: stopping it also stops the proxy and single-user servers it started
    return subprocess.Popen([sys.executable, "-m", "lazymoe", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # JupyterHub stops its servers and proxy on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def test_passwords_are_hashed_and_checked(tmp_path):
    pw = PasswordFile(tmp_path / "passwords.json")
    pw.set("alice", "correct horse")
    assert pw.check("alice", "correct horse") and not pw.check("alice", "correct hors")
    assert not pw.check("bob", "correct horse")
    assert "correct horse" not in (tmp_path / "passwords.json").read_text()
    assert oct((tmp_path / "passwords.json").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError, match="at least 8"):
        pw.set("bob", "short")
    (tmp_path / "passwords.json").write_text("[]")
    with pytest.raises(ValueError, match="not a lazymoe hub password file"):
        pw.check("alice", "x")


def test_settings_travel_through_the_environment(tmp_path):
    settings = setup.HubSettings(tmp_path, tmp_path / "keys.json", "http://h:8000/v1", port=9,
                                 cpu_limit=1.5, first_login=True)
    assert setup.HubSettings.from_env(settings.to_env()) == settings
    with pytest.raises(ValueError, match="LAZYMOE_HUB_KEYS_FILE is not set"):
        setup.HubSettings.from_env({"LAZYMOE_HUB_HUB_DIR": str(tmp_path)})


def test_personal_key_is_made_once_and_a_revoked_one_is_not_remade(tmp_path):
    keys = tmp_path / "keys.json"
    store = KeyStore(keys, create=True)
    store.add("alice", role="admin")
    store.add("bob")
    settings = setup.HubSettings(tmp_path / "hub", keys)
    settings.hub_dir.mkdir()
    assert setup.members(settings) == {"alice": "admin", "bob": "member"}
    key = setup.personal_key(settings, "bob")
    assert store.verify(key) == "bob"
    assert setup.personal_key(settings, "bob") == key  # reused, not a new key each login
    assert setup.personal_key(settings, "mallory") is None  # not a member
    store.revoke("bob")
    assert setup.personal_key(settings, "bob") is None  # revoked stays revoked
    assert "bob" not in setup.members(settings)


def test_memory_limits_are_written_like_jupyterhubs():
    assert limit.parse_bytes("4G") == 4 * GiB
    assert limit.parse_bytes("512M") == 512 * 2**20
    assert limit.parse_bytes("1.5g") == int(1.5 * GiB)
    assert limit.parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match=r"e\.g\. 4G"):
        limit.parse_bytes("four gigs")
    with pytest.raises(ValueError, match=r"e\.g\. 4G"):  # refused when the hub is configured, not later
        setup.HubSettings(Path("hub"), Path("keys.json"), mem_limit="4 GB please")
    with pytest.raises(ValueError, match="CPU cores"):
        setup.HubSettings(Path("hub"), Path("keys.json"), cpu_limit=0)


def _configured(tmp_path: Path, **settings) -> tuple[Config, setup.HubSettings]:
    hub_settings = setup.HubSettings(tmp_path / "hub", tmp_path / "keys.json", **settings)
    c = Config()
    setup.configure(c, hub_settings)
    return c, hub_settings


def test_members_kernels_see_no_gpu(tmp_path):
    for spawner in ("local", "systemd"):
        c, _ = _configured(tmp_path, spawner=spawner)
        # device="auto" in a member's notebook then picks the CPU, not the API server's VRAM
        assert c.Spawner.environment["CUDA_VISIBLE_DEVICES"] == ""


def test_the_local_spawner_starts_members_under_the_memory_limit(tmp_path):
    c, _ = _configured(tmp_path, mem_limit="3G")
    assert c.JupyterHub.spawner_class.endswith("SimpleLocalProcessSpawner")
    cmd = c.Spawner.cmd
    assert cmd[:3] == [sys.executable, "-m", "lazymoe.hub.limit"]
    assert cmd[cmd.index("--mem-bytes") + 1] == str(3 * GiB)
    assert float(cmd[cmd.index("--cpus") + 1]) == 2.0  # HubSettings' default cpu_limit
    assert cmd[cmd.index("--") + 1].endswith("jupyterhub-singleuser")
    alice = SimpleNamespace(user=SimpleNamespace(name="alice"), home_dir="")
    home = c.Spawner.environment["LAZYMOE_HOME"](alice)
    assert home == str(tmp_path / "hub" / "homes" / "alice" / ".lazymoe")


def test_the_systemd_spawner_keeps_the_course_where_systemd_starts_the_member(tmp_path):
    c, settings = _configured(tmp_path, spawner="systemd")
    assert c.JupyterHub.spawner_class == "systemdspawner.SystemdSpawner"
    assert c.SystemdSpawner.dynamic_users is True
    assert c.Spawner.cmd[0].endswith("jupyterhub-singleuser")  # cgroups limit it, no wrapper
    # with dynamic users, systemdspawner's HOME and working folder are /var/lib/<member>
    alice = SimpleNamespace(user=SimpleNamespace(name="alice"))
    assert c.Spawner.environment["LAZYMOE_HOME"](alice) == "/var/lib/alice/.lazymoe"
    assert setup.member_home(settings, "alice") == Path("/var/lib/alice")


def test_the_limit_wrapper_stops_an_allocation_past_it():
    code = ("import resource\n"
            "print(resource.getrlimit(resource.RLIMIT_AS)[0])\n"
            "small = bytearray(64 * 2**20)  # well under the limit: fine\n"
            "try:\n"
            "    bytearray(2 * 2**30)\n"
            "except MemoryError:\n"
            "    print('MemoryError')\n")
    run = subprocess.run([sys.executable, "-m", "lazymoe.hub.limit", "--mem-bytes", str(GiB),
                          "--", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(GiB), "MemoryError"]
    without = subprocess.run([sys.executable, "-m", "lazymoe.hub.limit", "--mem-bytes", "1"],
                             capture_output=True, text=True, timeout=60)
    assert without.returncode == 2 and "no command to run" in without.stderr


def test_the_limit_wrapper_pins_a_member_to_their_cores():
    code = "import os; print(len(os.sched_getaffinity(0)))"
    n_cores = len(os.sched_getaffinity(0))
    for member in ("alice", "bob"):
        run = subprocess.run([sys.executable, "-m", "lazymoe.hub.limit", "--mem-bytes", str(GiB),
                              "--cpus", "0.5", "--", sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "JUPYTERHUB_USER": member})  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["1"]  # 0.5 of a core rounds up to one core, never none
    everything = subprocess.run([sys.executable, "-m", "lazymoe.hub.limit", "--mem-bytes",
                                 str(GiB), "--cpus", "999", "--", sys.executable, "-c", code],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
    assert everything.stdout.split() == [str(n_cores)]  # at most the cores there are
    refused = subprocess.run([sys.executable, "-m", "lazymoe.hub.limit", "--mem-bytes", str(GiB),
                              "--cpus", "0", "--", "true"], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert refused.returncode == 2 and "above 0" in refused.stderr


def test_members_spread_over_the_cores():
    cores = sorted(os.sched_getaffinity(0))
    chosen = {}
    try:
        for name in ("alice", "bob", "carol", "dave"):
            chosen[name] = limit.pin_cpus(1, name)
            os.sched_setaffinity(0, cores)  # each member's server starts from every core
    finally:
        os.sched_setaffinity(0, cores)  # this test process gets its cores back
    assert all(len(c) == 1 and c[0] in cores for c in chosen.values())
    if len(cores) > 1:  # four names over two or more cores: not all on the same one
        assert len({c[0] for c in chosen.values()}) > 1


def _authenticate(settings: setup.HubSettings, user: str, password: str) -> str | None:
    auth = MemberAuthenticator(settings_env=settings.to_env())
    return asyncio.run(auth.authenticate(None, {"username": user, "password": password}))


@pytest.mark.parametrize("first_login", [True, False])
def test_first_login_sets_the_password_only_when_allowed(tmp_path, first_login):
    keys = tmp_path / "keys.json"
    KeyStore(keys, create=True).add("carol")
    settings = setup.HubSettings(tmp_path / "hub", keys, first_login=first_login)
    settings.hub_dir.mkdir()
    passwords = PasswordFile(settings.passwords_file)
    assert _authenticate(settings, "mallory", "mallory-pass-1") is None  # no key: never
    assert not passwords.has("mallory")
    assert _authenticate(settings, "carol", "short") is None  # too short to become hers
    assert not passwords.has("carol")
    expected = "carol" if first_login else None
    assert _authenticate(settings, "carol", "carol-pass-1") == expected
    assert passwords.has("carol") is first_login
    if first_login:  # from now on that password is hers, and only it
        assert _authenticate(settings, "carol", "another-pass-2") is None
        assert _authenticate(settings, "carol", "carol-pass-1") == "carol"
        assert passwords.check("carol", "carol-pass-1")


@pytest.fixture
def hub(tmp_path):
    if shutil.which("configurable-http-proxy") is None:
        pytest.skip("needs JupyterHub's proxy: npm install -g configurable-http-proxy (make test-hub)")
    api_port, hub_public, hub_port, proxy_port = _free_ports(4)
    keys = tmp_path / "keys.json"
    store = KeyStore(keys, create=True)
    for name in ("alice", "bob", "carol"):  # carol has a key but no hub password
        store.add(name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAZYMOE_HOME": str(tmp_path / "instructor")}
    hub_dir = tmp_path / "hub"
    common = ["hub", "--dir", str(hub_dir), "--keys", str(keys)]
    for name, password in PASSWORDS.items():
        subprocess.run([sys.executable, "-m", "lazymoe", *common, "--set-password", name],
                       input=password + "\n", text=True, check=True, env=env, capture_output=True)
    api = _start(["serve", "--fake", "--keys", str(keys), "--port", str(api_port)],
                 tmp_path / "api.log", env)
    hub_proc = _start([*common, "--api-base", f"http://127.0.0.1:{api_port}/v1",
                       "--port", str(hub_public), "--hub-port", str(hub_port),
                       "--proxy-api-port", str(proxy_port), "--cpu-limit", "1",
                       "--mem-limit", MEMBER_MEM_LIMIT],
                      tmp_path / "hub.log", env)
    try:
        _wait(f"http://127.0.0.1:{api_port}/health", api, tmp_path / "api.log")
        _wait(f"http://127.0.0.1:{hub_public}/hub/health", hub_proc, tmp_path / "hub.log")
        yield f"http://127.0.0.1:{hub_public}", hub_dir, keys, tmp_path / "hub.log"
    finally:
        _stop(hub_proc)
        _stop(api)


def _login(base: str, name: str, password: str) -> tuple[httpx.Client | None, int, str]:
    """A client logged in as `name` (None when the hub refused), the login POST's status, and
    what the hub answered in words."""
    web = httpx.Client(base_url=base, timeout=30, trust_env=False)
    page = web.get("/hub/login")
    xsrf = web.cookies.get("_xsrf", path="/hub/")
    answer = web.post("/hub/login", data={"username": name, "password": password, "_xsrf": xsrf})
    said = (f"GET /hub/login {page.status_code} (xsrf cookie {'set' if xsrf else 'MISSING'}), "
            f"POST {answer.status_code} {answer.text[:300]!r}")
    if "jupyterhub-hub-login" not in web.cookies:
        web.close()
        return None, answer.status_code, said
    return web, answer.status_code, said


def _member_login(base: str, name: str, log: Path) -> httpx.Client:
    """`name` logged in with their password; a refusal fails the test with the hub's own log.
    One retry after a server error: a busy 2-core CI machine can time out the hub's first answers."""
    for _ in range(2):
        web, status, said = _login(base, name, PASSWORDS[name])
        if web is not None:
            return web
        if status == 403:
            break  # a refusal, not a hiccup
        time.sleep(2)
    pytest.fail(f"{name} could not log in: {said}\nhub log:\n{log.read_text()[-4000:]}")


def _token_and_server(web: httpx.Client, name: str) -> str:
    """An API token for `name` (from their login session), and their server started."""
    xsrf = {"X-XSRFToken": web.cookies.get("_xsrf", path="/hub/")}
    made = web.post(f"/hub/api/users/{name}/tokens", json={"note": "test"}, headers=xsrf)
    assert made.status_code == 201, made.text
    token = {"Authorization": f"token {made.json()['token']}"}
    web.post(f"/hub/api/users/{name}/server", headers=token)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        user = web.get(f"/hub/api/users/{name}", headers=token).json()
        if user.get("servers", {}).get("", {}).get("ready"):
            return made.json()["token"]
        time.sleep(0.5)
    pytest.fail(f"{name}'s server did not start in {START_TIMEOUT_S:.0f} s")


async def _run_cells(ws_url: str, token: str, cells: list[str]) -> str:
    """Execute `cells` one after another in a kernel over Jupyter's websocket; all their output."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}))
    session, out = uuid.uuid4().hex, []
    try:
        for code in cells:
            msg_id = uuid.uuid4().hex
            ws.write_message(json.dumps({
                "header": {"msg_id": msg_id, "username": "test", "session": session,
                           "msg_type": "execute_request", "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": True,
                            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
            }))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.read_message(), 120))
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out.append(content["text"])
                elif kind == "error":
                    raise AssertionError(f"{code[:60]!r} failed: {content['ename']}: {content['evalue']}")
                elif kind == "execute_reply":
                    break
    finally:
        ws.close()
    return "".join(out)


# In a member's kernel: its address-space limit, what asking for more than that gives, the GPUs it sees
LIMITS_CELL = """import os, resource
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
try:
    big = bytearray(4 * 2**30)
    got = "allocated"
except MemoryError:
    got = "MemoryError"
print(f"limit {soft} {hard}, 4 GiB: {got}, GPUs {os.environ.get('CUDA_VISIBLE_DEVICES')!r}")
"""


def _module00_first_cells(home: Path, n: int = 3) -> list[str]:
    nb = nbformat.read(home / "course" / "00_start_here.ipynb", as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"][:n]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_members_work_separately(hub):
    base, hub_dir, keys, log = hub
    for name, password in (("alice", "wrong-password"),
                           ("carol", "whatever-1"),  # a key, but no hub password yet
                           ("mallory", "whatever-1")):  # no key: not a member
        web, status, said = _login(base, name, password)
        assert web is None and status == 403, said  # refused by the hub, not by a hiccup

    question = load_bank("00").questions[0]
    right = sorted(question.answers)[0]
    wrong = next(c for c in question.choice_ids if c not in question.answers)
    outputs = {}
    for name, answer in (("alice", right), ("bob", wrong)):
        web = _member_login(base, name, log)
        token = _token_and_server(web, name)
        home = hub_dir / "homes" / name
        assert (home / "course" / "00_start_here.ipynb").exists()  # their own copy
        assert (home / "labs").is_dir()
        kernel = web.post(f"/user/{name}/api/kernels", json={"name": "python3"},
                          headers={"Authorization": f"token {token}"})
        assert kernel.status_code == 201, kernel.text
        ws_url = f"{base.replace('http', 'ws')}/user/{name}/api/kernels/{kernel.json()['id']}/channels"
        cells = [*_module00_first_cells(home),
                 f"from lazymoe import quiz\nprint(quiz.answer('00', {question.id!r}, {answer!r}).correct)",
                 "from lazymoe import client\nconn = client.connect()\n"
                 "print('API', conn.source, conn.model)",
                 LIMITS_CELL]
        outputs[name] = asyncio.run(_run_cells(ws_url, token, cells))
        web.close()

    for name, correct in (("alice", True), ("bob", False)):
        assert "API environment echo" in outputs[name]  # the group's API, with a working key
        limit_bytes = limit.parse_bytes(MEMBER_MEM_LIMIT)
        assert f"limit {limit_bytes} {limit_bytes}, 4 GiB: MemoryError, GPUs ''" in outputs[name]
        assert f"{correct}\n" in outputs[name]
        saved = json.loads((hub_dir / "homes" / name / ".lazymoe" / "progress.json").read_text())
        assert saved["modules"]["00"][question.id]["first_correct"] is correct
    member_keys = json.loads((hub_dir / "member_keys.json").read_text())
    assert set(member_keys) == {"alice", "bob"}
    store = KeyStore(keys)
    assert {store.verify(k) for k in member_keys.values()} == {"alice", "bob"}
    assert oct((hub_dir / "member_keys.json").stat().st_mode & 0o777) == "0o600"
