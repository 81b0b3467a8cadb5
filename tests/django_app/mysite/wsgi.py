"""The WSGI entry point, for servers that speak WSGI (Gunicorn's sync and
gthread workers, Granian and Uvicorn with --interface wsgi)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()
