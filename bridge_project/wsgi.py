"""WSGI entry point (for a plain HTTP server; daphne uses asgi.py)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bridge_project.settings")
application = get_wsgi_application()
