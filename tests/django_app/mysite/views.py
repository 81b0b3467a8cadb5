import asyncio
import os
import time

from django.http import HttpResponse, StreamingHttpResponse

TEXT = "text/plain; charset=utf-8"


def index(request):
    return HttpResponse("hello from django\n", content_type=TEXT)


def sized(request):
    # index with its Content-Length, as Django's CommonMiddleware sets it
    # (this project has no middleware, so Uvicorn answers it chunked).
    response = HttpResponse("hello from django\n", content_type=TEXT)
    response["Content-Length"] = str(len(response.content))
    return response


def healthz(request):
    return HttpResponse("ok", content_type=TEXT)


async def delay(request, ms):
    await asyncio.sleep(ms / 1000)
    return HttpResponse(f"slept {ms}ms", content_type=TEXT)


def cpu(request, ms):
    # Busy loop: holds the GIL and a CPU core for `ms` milliseconds.
    deadline = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return HttpResponse(f"burned {ms}ms", content_type=TEXT)


def big(request, n):
    # A response of `n` bytes: more than the sockets between hold.
    return HttpResponse(b"x" * n, content_type=TEXT)


def pid(request):
    return HttpResponse(str(os.getpid()), content_type=TEXT)


def forwarded(request):
    # What a proxy in front told the app about the client.
    lines = [
        f"{name}={request.META.get(key, '')}"
        for name, key in [
            ("for", "HTTP_X_FORWARDED_FOR"),
            ("proto", "HTTP_X_FORWARDED_PROTO"),
            ("host", "HTTP_X_FORWARDED_HOST"),
            ("real-ip", "HTTP_X_REAL_IP"),
            ("forwarded", "HTTP_FORWARDED"),
        ]
    ]
    return HttpResponse("\n".join(lines) + "\n", content_type=TEXT)


async def events(request, n):
    # Server-sent events, one every 200 ms: a response that streams.
    async def stream():
        for i in range(n):
            yield f"data: {i}\n\n"
            await asyncio.sleep(0.2)

    return StreamingHttpResponse(stream(), content_type="text/event-stream")
