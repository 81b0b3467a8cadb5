"""ASGI entry point: mysite.asgi:application

HTTP goes to Django. WebSocket connections get an echo, as a Django
Channels consumer would serve them: each message comes back prefixed with
the pid of the worker holding the connection, so a test can tell which
worker a socket stays with.
"""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

django_application = get_asgi_application()


async def echo(scope, receive, send):
    pid = os.getpid()
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive":
            text = event.get("text") or (event.get("bytes") or b"").decode()
            await send({"type": "websocket.send", "text": f"{pid} {text}"})
        elif event["type"] == "websocket.disconnect":
            return


async def application(scope, receive, send):
    if scope["type"] == "websocket":
        await echo(scope, receive, send)
    else:
        await django_application(scope, receive, send)
