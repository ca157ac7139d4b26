"""WSGI entry point: gunicorn gwexample.wsgi --bind unix:/run/gunicorn.sock"""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gwexample.settings")

application = get_wsgi_application()
