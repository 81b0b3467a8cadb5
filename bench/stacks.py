"""The stacks under comparison, and how to start, steer and stop each one.

A stack is a process manager plus its workers: Gunicorn with Uvicorn
workers (the reference), Uvicorn's own --workers supervisor, corral running
`uvicorn --fd {fd}`, and corral with its built-in worker (no Python: the
floor). `Running` wraps one started instance: its manager pid, its worker
pids (the manager's children, from /proc), and the uniform verbs the
figures need (scale up/down, rolling restart, graceful stop), mapped to
each stack's own interface: PUT /workers for corral, TTIN/TTOU for the
others; HUP and TERM for all.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DJANGO_DIR = os.path.join(ROOT, "tests", "django_app")

# ASGI application per app name; the built-in worker serves its own app.
APPS = {"hello": "hello_asgi:app", "django": "mysite.asgi:application"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    """User + system CPU time of one process (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(ppid):
    """Pids of the live (non-zombie) children of ppid, helpers excluded."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[1]) != ppid or rest[0] in "ZX":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            if b"resource_tracker" in cmd:  # multiprocessing's helper, not a worker
                continue
            out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(out)


class Stack:
    """One way of serving the app with N workers."""

    def __init__(self, key, label, kind, venv, corral, workers):
        self.key, self.label, self.kind = key, label, kind
        self.venv, self.corral, self.workers = venv, corral, workers

    @property
    def builtin(self):
        return self.kind == "builtin"

    @property
    def is_corral(self):
        return self.kind in ("corral", "builtin")

    def argv(self, app, port, admin, token_file):
        n = str(self.workers)
        bin_ = lambda name: os.path.join(self.venv, "bin", name)
        target = APPS.get(app)
        if self.kind == "gunicorn":
            return [bin_("gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "-w", n,
                    "-b", f"127.0.0.1:{port}", "--no-control-socket", target]
        if self.kind == "uvicorn":
            return [bin_("uvicorn"), "--workers", n, "--host", "127.0.0.1", "--port", str(port),
                    "--no-access-log", target]
        corral = [self.corral, "run", "-w", n, "-b", f"127.0.0.1:{port}",
                  "--admin-bind", f"127.0.0.1:{admin}", "--admin-token-file", token_file]
        if self.kind == "corral":
            return corral + ["--", bin_("uvicorn"), "--fd", "{fd}", "--no-access-log", target]
        return corral  # built-in worker

    def version(self):
        if self.is_corral:
            out = subprocess.run([self.corral, "--version"], capture_output=True, text=True)
            return out.stdout.strip()
        py = os.path.join(self.venv, "bin", "python")
        mods = {"gunicorn": ["gunicorn", "uvicorn_worker", "uvicorn"], "uvicorn": ["uvicorn"]}[self.kind]
        code = ("import importlib.metadata as m, sys; "
                "print(' '.join(f'{n}={m.version(n)}' for n in sys.argv[1:]))")
        names = [m.replace("_", "-") for m in mods]
        out = subprocess.run([py, "-c", code, *names], capture_output=True, text=True)
        return out.stdout.strip()

    def start(self, app):
        return Running(self, app)


def all_stacks(venv, corral, workers):
    mk = lambda *a: Stack(*a, venv=venv, corral=corral, workers=workers)
    return [
        mk("gunicorn", "gunicorn + UvicornWorker", "gunicorn"),
        mk("uvicorn", "uvicorn --workers", "uvicorn"),
        mk("corral", "corral + uvicorn --fd", "corral"),
        mk("builtin", "corral built-in worker", "builtin"),
    ]


class Running:
    """A started stack: manager process, its ports, and the verbs on it."""

    def __init__(self, stack, app):
        self.stack, self.app = stack, app
        self.port, self.admin = free_port(), free_port()
        self.dir = tempfile.mkdtemp(prefix=f"corral-bench-{stack.key}-")
        self.token = secrets.token_hex(16)
        self.token_file = os.path.join(self.dir, "token")
        with open(self.token_file, "w") as f:
            f.write(self.token)
        os.chmod(self.token_file, 0o600)
        self.log_path = os.path.join(self.dir, "log")
        self.desired = stack.workers
        env = dict(os.environ, PYTHONPATH=DJANGO_DIR, PATH=os.path.join(stack.venv, "bin") + ":" + os.environ["PATH"])
        env.pop("WEB_CONCURRENCY", None)
        self.log = open(self.log_path, "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(stack.argv(app, self.port, self.admin, self.token_file),
                                     cwd=DJANGO_DIR, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

    @property
    def addr(self):
        return ("127.0.0.1", self.port)

    def workers(self):
        return children(self.pid)

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def admin_request(self, method, path, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")

    def set_workers(self, n):
        """Ask for n workers: PUT /workers on corral, TTIN/TTOU on the others."""
        if self.stack.is_corral:
            status, _ = self.admin_request("PUT", "/workers", {"desired": n})
            if status != 200:
                raise RuntimeError(f"PUT /workers -> {status}")
        else:
            sig = signal.SIGTTIN if n > self.desired else signal.SIGTTOU
            for _ in range(abs(n - self.desired)):
                os.kill(self.pid, sig)
        self.desired = n

    def signal(self, sig):
        os.kill(self.pid, sig)

    def wait_workers(self, n, gone=(), limit=60.0):
        """Wait until exactly n workers run and none of `gone` is among them."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            pids = self.workers()
            if len(pids) == n and not set(pids) & set(gone):
                return pids
            if not self.alive():
                raise RuntimeError(f"{self.stack.label} exited: {self.log_tail()}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.stack.label}: not {n} workers (without {sorted(gone)}) within {limit}s, "
                           f"have {self.workers()}")

    def wait_exit(self, limit):
        try:
            return self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, limit=40.0):
        """TERM the whole process group, KILL what is left after `limit`."""
        try:
            if self.alive():
                try:
                    os.killpg(self.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                if self.wait_exit(limit) is None:
                    os.killpg(self.pid, signal.SIGKILL)
                    self.proc.wait()
            # Orphans left in the group (a worker that outlived its manager).
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        finally:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
