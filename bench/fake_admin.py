#!/usr/bin/env python3
"""Figure 7's fake managers: one process answers every pod's admin API, each on its own loopback address,
with the WorkersDoc and the 422 a real `corral run` gave, only the worker count and CPU set per pod."""

import asyncio
import json
import os
import sys
import types

from procs import wait_until
from sampling import request
from stacks import free_port

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 422: "Unprocessable Entity"}

def pod_ips(n):
    return [f"127.1.{i // 256}.{i % 256}" for i in range(1, n + 1)]

class FakeAdmin:
    """Every pod ([desired, requested]) behind one asyncio loop, and a control API on 127.0.0.1 (GET /stats,
    PUT /load: cores per pod)."""

    def __init__(self, ips, port, token, doc, refused, load):
        self.template, self.refused = doc, refused
        self.pods = {ip: [doc["configured"], None] for ip in ips}
        self.port, self.token, self.load = port, token, load
        self.stats = {"gets": 0, "puts": 0, "put_status": {}}

    def doc(self, pod):
        """The real WorkersDoc with this pod's workers, the load spread over them."""
        desired, requested = pod
        util, slots = self.load / desired, self.template["workers"]
        workers = [dict(slots[i % len(slots)], id=i + 1, pid=100001 + i, cpu_utilisation=util) for i in range(desired)]
        return dict(self.template, desired=desired, requested=requested, running=desired, ready=desired,
                    cpu_utilisation=util, workers=workers)

    def scale(self, pod, body):
        """PUT /workers; outside the limits, or not a count, the real manager's 422."""
        n = body.get("desired", -1) if isinstance(body, dict) and set(body) == {"desired"} else -1
        limits = self.template["limits"]
        if n is None:
            pod[:] = [self.template["configured"], None]
        elif isinstance(n, int) and not isinstance(n, bool) and limits["min"] <= n <= limits["max"]:
            pod[:] = [n, n]
        else:
            return 422, self.refused
        return 200, self.doc(pod)

    def admin(self, ip, method, path, headers, body):
        pod = self.pods[ip]
        if path.rstrip("/") != "/workers":
            return 404, {"error": f"no route {path}"}
        if method == "GET":
            self.stats["gets"] += 1
            return 200, self.doc(pod)
        if method != "PUT":
            return 405, {"error": f"{method} is not allowed on /workers"}
        self.stats["puts"] += 1
        if headers.get("authorization") != f"Bearer {self.token}":
            status, answer = 401, {"error": "missing or wrong bearer token"}
        else:
            try:
                status, answer = self.scale(pod, json.loads(body or b"null"))
            except ValueError as e:
                status, answer = 400, {"error": f"body is not JSON: {e}"}
        codes = self.stats["put_status"]
        codes[str(status)] = codes.get(str(status), 0) + 1
        return status, answer

    def control(self, method, path, body):
        if method == "GET" and path == "/stats":
            return 200, self.stats
        if method == "PUT" and path == "/load":
            self.load = float(json.loads(body)["cores"])
            return 200, {"cores": self.load}
        return 404, {"error": f"no route {method} {path}"}

    async def handle(self, reader, writer):
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = dict((k.strip().lower(), v.strip()) for k, v in (h.split(":", 1) for h in head[1:] if ":" in h))
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            ip = writer.get_extra_info("sockname")[0]
            if ip in self.pods:
                status, answer = self.admin(ip, method, path, headers, body)
            else:
                status, answer = self.control(method, path, body)
            writer.write(response(status, answer))
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def serve(self, control_port):
        # Held, so that no server is ever collected while it should listen.
        self.servers = [await asyncio.start_server(self.handle, ip, self.port, backlog=1024) for ip in self.pods]
        self.servers.append(await asyncio.start_server(self.handle, "127.0.0.1", control_port))
        print(f"serving {len(self.pods)} pods on :{self.port}, control on 127.0.0.1:{control_port}", flush=True)
        await asyncio.Event().wait()

def response(status, answer):
    body = json.dumps(answer).encode()
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body

def start(c, pods, port, documents, load):
    """This file as a process of its own in cluster c; its control client, once it answers."""
    path, control = os.path.join(c.workdir, "fake.json"), free_port()
    with open(path, "w") as f:
        json.dump({"pods": pods, "port": port, "control_port": control, "token_file": c.token_file,
                   "documents": documents, "load": load}, f)
    proc = c.procs.start([sys.executable, os.path.abspath(__file__), path], os.path.join(c.workdir, "fake.log"))
    # The benchmark's side of the control API.
    client = types.SimpleNamespace(
        stats=lambda: json.loads(request("127.0.0.1", control, "GET", "/stats", timeout=10)[1]),
        set_load=lambda cores: request("127.0.0.1", control, "PUT", "/load", {"cores": cores}, timeout=10))
    wait_until("the fake admin server", 60, client.stats, every=0.1, proc=proc)
    return client

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    with open(cfg["token_file"]) as f:
        token = f.read().strip()
    fake = FakeAdmin(pod_ips(cfg["pods"]), cfg["port"], token, *cfg["documents"], cfg["load"])
    asyncio.run(fake.serve(cfg["control_port"]))
