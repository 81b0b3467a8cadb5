"""A WSGI server that, like Daphne's --fd (a Twisted endpoint that adopts
the descriptor as AF_INET), takes only a TCP listener as its inherited
descriptor: given any other socket it says so and exits 1. tests/servers.rs
runs it under corral: it serves in shared-socket mode and in proxy mode
with --worker-socket tcp, and cannot serve on proxy mode's Unix socket.

    python tcp_only_server.py --fd 3 mysite.wsgi:application

One thread per connection; on SIGTERM it stops accepting and exits once
the requests in flight are answered."""

import argparse
import importlib
import signal
import socket
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref import simple_server
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer


class Server(ThreadingMixIn, WSGIServer):
    # server_close() joins the threads: requests in flight finish.
    daemon_threads = False
    block_on_close = True


class Http11(simple_server.ServerHandler):
    """HTTP/1.1 as Daphne answers (wsgiref says 1.0), one request per
    connection, said so."""

    http_version = "1.1"

    def cleanup_headers(self):
        super().cleanup_headers()
        self.headers["Connection"] = "close"


# WSGIRequestHandler.handle() makes its handler by this module-level name.
simple_server.ServerHandler = Http11


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def adopt(fd):
    """The inherited listener, which must be TCP over IPv4."""
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_INET:
        sys.exit(f"tcp_only_server: fd {fd} is {sock.family.name}, not a TCP listener (AF_INET)")
    return sock


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("app", help="module:attribute")
    args = parser.parse_args()
    sock = adopt(args.fd)
    module, attribute = args.app.split(":")
    app = getattr(importlib.import_module(module), attribute)

    host, port = sock.getsockname()
    server = Server((host, port), QuietHandler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_name, server.server_port = host, port
    server.setup_environ()
    server.set_app(app)
    server.server_activate()
    # Shared-socket mode: a sibling may take the connection that woke this
    # one, and a blocking accept() would then wait past SIGTERM.
    sock.setblocking(False)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.1)
    server.server_close()


if __name__ == "__main__":
    main()
