import asyncio
import os
import time

from django.http import HttpResponse

TEXT = "text/plain; charset=utf-8"


def index(request):
    return HttpResponse("hello from django\n", content_type=TEXT)


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


def pid(request):
    return HttpResponse(str(os.getpid()), content_type=TEXT)
