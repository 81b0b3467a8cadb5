"""The stacks under comparison: a `Stack` is a process manager and its workers, `Running` one started instance with
the verbs the figures need, mapped to each stack's own interface: PUT /workers for corral, TTIN/TTOU for the
others, HUP and TERM for all."""

import functools
import grp
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import types

import procs
from procs import ROOT, RunFailed, output, template, write_private
from sampling import children, parent_of, prometheus, request

DJANGO_DIR = os.path.join(ROOT, "tests", "django_app")

# ASGI application per app name; the built-in worker serves its own app.
APPS = {"hello": "hello_asgi:app", "django": "mysite.asgi:application"}

STACKS = {"gunicorn": "gunicorn + UvicornWorker", "uvicorn": "uvicorn --workers", "granian": "granian --workers",
          "corral": "corral + uvicorn --fd", "proxy": "corral --proxy + uvicorn",
          "proxy_tcp": "corral --proxy --worker-socket tcp + uvicorn", "proxy_granian": "corral --proxy + granian --uds",
          "nginx": "nginx (Debian) -> gunicorn + UvicornWorker", "builtin": "corral built-in worker"}
PROXY_KEYS = ("proxy", "proxy_tcp", "proxy_granian")  # corral in the request path
CORRAL_KEYS = ("corral", "builtin", *PROXY_KEYS)
# Granian's ASGI server as both stacks run it; under corral each worker binds its own Unix socket (it has no --fd).
# Alone it is told to replace a crashed worker: by default it exits when one dies.
GRANIAN = ["--interface", "asgi", "--log-level", "warning"]
# Stacks whose manager cannot add or remove a worker: figures 4 and 5's scale runs are "n/a" for them.
NO_SCALING = {"granian": "granian ignores TTIN and TTOU (its worker count is fixed at start)"}
# A stack that cannot go through figure 5's SIGKILLs and still be measured: Granian exits on its own crash-loop
# detection when its workers are killed one after another ("Worker crash loop detected, exiting", 2026-12-07).
NO_KILL = {"granian": "granian --workers exits on its crash-loop detection when its workers are killed in a row"}
# Stacks whose new worker figure 4 cannot time by a new pid answering /pid (their workers still scale).
UNTIMED = {"nginx": "not timed through nginx: the same gunicorn master and TTIN as gunicorn direct",
           "proxy_granian": "not timed: /pid answers granian's worker process, a grandchild of corral's worker"}
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/bin/nginx")
NGINX_MISSING = "nginx not found (apt-get install nginx; .ci/test installs it)"

def app_env(bin_dir):
    """tests/django_app importable, the venv first on PATH, no WEB_CONCURRENCY (it changes worker counts)."""
    env = dict(os.environ, PYTHONPATH=DJANGO_DIR, PATH=bin_dir + ":" + os.environ.get("PATH", ""))
    env.pop("WEB_CONCURRENCY", None)
    return env

def nginx_binary():
    return shutil.which("nginx") or next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)

def tool(name):
    """Path of a tool from Debian (h2load, openssl), or None."""
    path = shutil.which(name) or f"/usr/bin/{name}"
    return path if os.access(path, os.X_OK) else None

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

@functools.lru_cache(maxsize=None)
def run_flag_missing(corral, flag, what):
    """None if `corral run --help` lists `flag`, else why not."""
    try:
        out = subprocess.run([corral, "run", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`{corral} run --help` failed: {e}"
    if flag not in out.stdout + out.stderr:
        return f"`{os.path.basename(corral)} run --help` lists no {flag} (this build has no {what})"
    return None

def proxy_unsupported(corral):
    return run_flag_missing(corral, "--proxy", "proxy mode")

@functools.lru_cache(maxsize=None)
def nginx_tls_unsupported():
    """None if nginx was built with its ssl and http_v2 modules, else why not."""
    nginx = nginx_binary()
    if nginx is None:
        return NGINX_MISSING
    try:
        out = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`{nginx} -V` failed: {e}"
    missing = [m for m in ("http_ssl_module", "http_v2_module") if f"--with-{m}" not in out.stdout + out.stderr]
    return f"{nginx} was built without {' and '.join(missing)}" if missing else None

# make_certs()'s server certificate (2 days); server.pem is the leaf alone, the chain both TLS fronts serve.
CERTIFICATE = {"key": "ECDSA P-256", "signature": "ecdsa-with-SHA256", "chain": "leaf only, signed by a throwaway CA",
               "subject_alt_names": ["DNS:localhost", "IP:127.0.0.1"]}

def make_certs(dir_):
    """A throwaway CA and the server certificate it signs, in dir_: their paths .ca, .cert and .key."""
    openssl = tool("openssl")
    if openssl is None:
        raise RunFailed("openssl not found (apt-get install openssl; .ci/test installs it)")
    os.makedirs(dir_, exist_ok=True)
    shutil.copyfile(os.path.join(procs.BENCH, "templates", "server.ext"), os.path.join(dir_, "server.ext"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for argv in (
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=corral bench CA"],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "1",
         "-days", "2", "-sha256", "-extfile", "server.ext", "-out", "server.pem"],
    ):
        out = subprocess.run([openssl, *argv], cwd=dir_, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RunFailed(f"openssl {' '.join(argv[:2])} exited {out.returncode}: {out.stderr.strip()[-300:]}")
    os.chmod(os.path.join(dir_, "server.key"), 0o600)
    return types.SimpleNamespace(dir=dir_, ca=os.path.join(dir_, "ca.pem"), cert=os.path.join(dir_, "server.pem"),
                                 key=os.path.join(dir_, "server.key"))

def nginx_conf(prefix, port, upstream_sock, worker_processes, tls=None, h2c=False):
    """templates/nginx.conf ($$ is nginx's $). With `tls`, HTTP/2 and HTTP/1.1 by ALPN (nginx 1.22's `listen
    ... ssl http2`), TLS 1.2 and 1.3 as corral, nginx's defaults otherwise (no session cache, tickets on). With
    `h2c`, cleartext HTTP/2 by prior knowledge only (nginx 1.22 cannot offer both on one plain port)."""
    listen = f"listen 127.0.0.1:{port}{' http2' if h2c else ''} backlog=2048;"
    if tls is not None:
        listen = (f"listen 127.0.0.1:{port} ssl http2 backlog=2048;\n"
                  f"        ssl_certificate {tls.cert};\n"
                  f"        ssl_certificate_key {tls.key};\n"
                  "        ssl_protocols TLSv1.2 TLSv1.3;")
    user = ""
    if os.geteuid() == 0:
        # A root master drops its workers to an unprivileged user, as in
        # production; the socket directory is made traversable for it.
        nobody = pwd.getpwnam("nobody")
        user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};\n"
    return template("nginx.conf", user=user, worker_processes=worker_processes, prefix=prefix,
                    upstream_sock=upstream_sock, listen=listen)

class Stack:
    """One way of serving the app with N workers, one of STACKS (bench/README.md)."""

    def __init__(self, key, label, venv, corral, workers, nginx_workers=1):
        self.key, self.label, self.venv, self.corral, self.workers = key, label, venv, corral, workers
        self.nginx_workers, self.builtin, self.is_corral = nginx_workers, key == "builtin", key in CORRAL_KEYS
        self.proxy, self.no_scaling, self.untimed = key in PROXY_KEYS, NO_SCALING.get(key), UNTIMED.get(key)
        self.no_kill = NO_KILL.get(key)
        self.fronted = key == "nginx"  # a front process (nginx) before the manager's workers

    def unavailable(self):
        """None if this machine can run the stack, else why not."""
        if self.proxy:
            return proxy_unsupported(self.corral)
        if self.fronted and nginx_binary() is None:
            return NGINX_MISSING
        return None

    def tls_unavailable(self):
        """None if this stack can be the TLS + HTTP/2 front (figures 8, 9), else why not."""
        if self.proxy:
            return proxy_unsupported(self.corral) or run_flag_missing(self.corral, "--certfile", "TLS front")
        if self.fronted:
            return nginx_tls_unsupported()
        return f"{self.label} has no TLS front"

    def argv(self, app, port, admin, token_file, upstream_sock=None, tls=None):
        n = str(self.workers)
        bin_ = lambda name: os.path.join(self.venv, "bin", name)
        target = APPS.get(app)
        if self.key in ("gunicorn", "nginx"):  # behind nginx, gunicorn on a Unix socket
            bind = f"unix:{upstream_sock}" if self.fronted else f"127.0.0.1:{port}"
            return [bin_("gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "-w", n,
                    "-b", bind, "--no-control-socket", target]
        if self.key == "uvicorn":
            return [bin_("uvicorn"), "--workers", n, "--host", "127.0.0.1", "--port", str(port),
                    "--no-access-log", target]
        if self.key == "granian":
            return [bin_("granian"), *GRANIAN, "--workers", n, "--respawn-failed-workers", "--host", "127.0.0.1",
                    "--port", str(port), target]
        bind = f"127.0.0.1:{port}" if tls is None else f"https://127.0.0.1:{port}"
        corral = [self.corral, "run", "-w", n, "-b", bind,
                  "--admin-bind", f"127.0.0.1:{admin}", "--admin-token-file", token_file]
        if tls is not None:  # proxy mode only (start() checks)
            corral += ["--certfile", tls.cert, "--keyfile", tls.key]
        if self.builtin:
            return corral
        if self.proxy:
            corral[2:2] = ["--proxy", "--worker-socket", "tcp" if self.key == "proxy_tcp" else "unix"]
        if self.key == "proxy_granian":
            return corral + ["--", bin_("granian"), *GRANIAN, "--uds", "{socket}", target]
        return corral + ["--", bin_("uvicorn"), "--fd", "{fd}", "--no-access-log", target]

    def version(self):
        if self.is_corral:
            return output([self.corral, "--version"])
        py = os.path.join(self.venv, "bin", "python")
        mods = [self.key] if self.key in ("uvicorn", "granian") else ["gunicorn", "uvicorn_worker", "uvicorn"]
        code = ("import importlib.metadata as m, sys; "
                "print(' '.join(f'{n}={m.version(n)}' for n in sys.argv[1:]))")
        out = output([py, "-c", code, *(m.replace("_", "-") for m in mods)])
        if self.fronted:
            nginx = nginx_binary()
            front = output([nginx, "-v"], subprocess.STDOUT) if nginx else "nginx missing"
            front = front.replace("nginx version: ", "")
            return f"{front} (worker_processes {self.nginx_workers}); {out}"
        return out

    def start(self, app, tls=None):
        """A started instance; with `tls` (make_certs()), its front serves TLS (corral --proxy and nginx only)."""
        if tls is not None and not (self.proxy or self.fronted):
            raise ValueError(f"{self.label} has no TLS front")
        return Running(self, app, tls)

def all_stacks(venv, corral, workers, nginx_workers=1):
    return [Stack(key, label, venv, corral, workers, nginx_workers) for key, label in STACKS.items()]

# Every instance not stopped yet: stop_all() stops them on run.py's way out.
_live = set()

def stop_all():
    for inst in list(_live):
        try:
            inst.stop(limit=10)
        except Exception:  # noqa: BLE001 - keep stopping the others
            pass

class Running:
    """A started stack: its manager (for nginx -> gunicorn the gunicorn master, nginx being the `front`),
    its ports and workers (the manager's children), and the verbs on it."""

    def __init__(self, stack, app, tls=None):
        self.stack, self.app, self.tls, self.desired = stack, app, tls, stack.workers
        self.port, self.admin, self.token = free_port(), free_port(), secrets.token_hex(16)
        self.dir = tempfile.mkdtemp(prefix=f"corral-bench-{stack.key}-")
        self.token_file = write_private(os.path.join(self.dir, "token"), self.token)
        self.log_path = os.path.join(self.dir, "log")
        self.front = self.front_log = None
        self.seen_workers = set()
        sock = os.path.join(self.dir, "gunicorn.sock")
        if stack.fronted:
            os.chmod(self.dir, 0o711)  # nginx's unprivileged workers reach the socket
        self.t0 = time.monotonic()
        self.proc = procs.spawn(stack.argv(app, self.port, self.admin, self.token_file, sock, tls), self.log_path,
                                "ab", cwd=DJANGO_DIR, env=app_env(os.path.join(stack.venv, "bin")))
        self.pid = self.proc.pid
        _live.add(self)
        if stack.fronted:
            try:
                prefix = os.path.join(self.dir, "nginx")
                os.mkdir(prefix)
                conf, self.front_log = os.path.join(prefix, "nginx.conf"), os.path.join(prefix, "error.log")
                with open(conf, "w") as f:
                    f.write(nginx_conf(prefix, self.port, sock, stack.nginx_workers, tls))
                self.front = procs.spawn([nginx_binary(), "-p", prefix, "-c", conf, "-e", self.front_log,
                                          "-g", "daemon off;"], self.log_path, "ab")
            except BaseException:
                self.stop(limit=10)
                raise

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()

    def front_pids(self):
        if self.front is None or self.front.poll() is not None:
            return []
        return [self.front.pid] + children(self.front.pid)

    @property
    def addr(self):
        return ("127.0.0.1", self.port)

    def workers(self):
        pids = children(self.pid)
        self.seen_workers.update(pids)
        return pids

    def alive(self):
        return self.proc.poll() is None and (self.front is None or self.front.poll() is None)

    def log_tail(self, n=15):
        out = []
        for path in filter(None, (self.log_path, self.front_log)):
            try:
                with open(path, "rb") as f:
                    out.append(b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)

    def admin_request(self, method, path, body=None):
        return request("127.0.0.1", self.admin, method, path, body, self.token)

    def metrics(self):
        status, text = self.admin_request("GET", "/metrics")
        return prometheus(text.decode()) if status == 200 else {}

    def set_workers(self, n):
        if self.stack.is_corral:
            status, _ = self.admin_request("PUT", "/workers", {"desired": n})
            if status != 200:
                raise RunFailed(f"PUT /workers -> {status}")
        else:
            sig = signal.SIGTTIN if n > self.desired else signal.SIGTTOU
            for _ in range(abs(n - self.desired)):
                os.kill(self.pid, sig)
        self.desired = n

    def signal(self, sig):
        os.kill(self.pid, sig)

    def wait_workers(self, n, gone=(), limit=60.0):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            pids = self.workers()
            if len(pids) == n and not set(pids) & set(gone):
                return pids
            if not self.alive():
                raise RunFailed(f"{self.stack.label} exited: {self.log_tail()}")
            time.sleep(0.02)
        raise RunFailed(f"{self.stack.label}: not {n} workers (without {sorted(gone)}) within {limit}s, "
                        f"have {self.workers()}")

    def wait_exit(self, limit):
        try:
            return self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, limit=40.0):
        """procs.stop(), then any worker seen that outlived it (corral starts each in its own process group)."""
        try:
            self.workers()
            procs.stop(*filter(None, (self.proc, self.front)), wait=limit)
            for pid in self.seen_workers:
                if parent_of(pid) == 1:  # an orphan (not gone, not a reused pid)
                    procs.kill_group(pid)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        finally:
            _live.discard(self)
            shutil.rmtree(self.dir, ignore_errors=True)
