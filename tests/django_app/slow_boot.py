"""The Django app, after SLOW_BOOT seconds of start-up work (as a large
app's imports and warm-up take): for tests of exact readiness."""
import os
import time

time.sleep(float(os.environ.get("SLOW_BOOT", "3")))

from mysite.asgi import application  # noqa: E402,F401
