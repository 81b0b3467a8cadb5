"""Minimal Django settings for corral's integration tests and benchmarks.

No database, no static files, no templates, no middleware: just URL routing
and views, so the numbers measure the server rather than Django extras.
"""
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "corral-test-secret-key-not-for-production-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = []
MIDDLEWARE = []

ROOT_URLCONF = "mysite.urls"
ASGI_APPLICATION = "mysite.asgi.application"

# No database at all: Django falls back to its dummy backend.
DATABASES = {}

TEMPLATES = []

USE_I18N = False
USE_TZ = True
TIME_ZONE = "UTC"

# Quiet logging: only errors reach stderr (no per-request 404 warnings).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "level": "ERROR"},
    },
    "root": {"handlers": ["stderr"], "level": "ERROR"},
    "loggers": {
        "django": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
    },
}
