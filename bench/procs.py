"""Process control: every child runs in a session of its own and is stopped by process group, also when a
run fails or is signalled; the one progress line (`log`); polling with a deadline (`wait_until`)."""

import os
import signal
import string
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

def template(name, **values):
    """The text of bench/templates/<name> (what the kit writes that is not code), with values its $fields."""
    with open(os.path.join(BENCH, "templates", name)) as f:
        return string.Template(f.read()).substitute(values) if values else f.read()

def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

def announce(msg):
    """A line for the log and the run's printed report (what is not available)."""
    log(msg)
    print(msg, flush=True)

class RunFailed(Exception):
    """A figure cannot go on: a process exited, a wait timed out."""

class Stopped(BaseException):
    """A signal asked us to stop; not an Exception, so no retry loop eats it."""

def failure(e):
    return f"{type(e).__name__}: {e}"

def attempt(fn, *args):
    """fn(*args), or {"error": ...}: one broken step does not hide the others' results."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - recorded and reported, never hidden
        return {"error": failure(e)}

def stop_on_signals():
    """TERM and HUP (a caller's timeout) raise Stopped: the `finally`s on the way out stop every child."""
    def terminate(signum, _frame):
        raise Stopped(f"stopped by signal {signum}")
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

def output(argv, stderr=subprocess.DEVNULL):
    """What argv prints (versions), stripped; None if it cannot run."""
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001 - a missing tool leaves its line empty
        return None

def write_private(path, text):
    """path, written with text, readable by its owner only (tokens, kubeconfig)."""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path

def spawn(argv, log_path, mode="wb", **popen):
    """A child in a session of its own (its group can be stopped whole), its output to log_path."""
    with open(log_path, mode) as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **popen)

def kill_group(pgid, sig=signal.SIGKILL):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass

def stop(*procs, wait=5.0):
    """TERM the children's groups together, KILL a group whose leader outlives `wait`, then what is left in
    each (a worker that outlived its manager)."""
    for p in procs:
        if p.poll() is None:
            kill_group(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            kill_group(p.pid)
            p.wait()
        kill_group(p.pid)

class Procs(list):
    """The children of one run, stopped together when it ends."""

    def start(self, argv, log_path, **popen):
        self.append(spawn(argv, log_path, **popen))
        self[-1].what, self[-1].log = " ".join(os.path.basename(a) for a in argv[:2]), log_path
        return self[-1]

    def stop_all(self):
        for p in reversed(self):
            try:
                stop(p)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                log(f"stopping pid {p.pid}: {e}")

def check_running(proc):
    """RunFailed once a child of Procs.start() has exited."""
    if proc.poll() is not None:
        raise RunFailed(f"{proc.what} exited {proc.returncode} (log: {proc.log})")

def wait_until(what, limit, fn, every=0.1, proc=None):
    """fn()'s first true value, polled while `proc` runs; fn raises RunFailed to give up at once, anything else
    it raises is retried until the deadline."""
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            if proc is not None:
                check_running(proc)
            v = fn()
            if v:
                return v
        except RunFailed:
            raise
        except Exception as e:  # noqa: BLE001 - polled again until the deadline
            last = e
        time.sleep(every)
    raise RunFailed(f"timed out after {limit:.0f}s waiting for {what}" + (f" ({last})" if last else ""))
