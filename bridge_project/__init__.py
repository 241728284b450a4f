"""mt5-bridge Django project: settings, routing and the Celery app."""
from .celery import app as celery_app

__all__ = ["celery_app"]
