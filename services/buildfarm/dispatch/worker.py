"""Entry point for ``celery -A buildfarm.dispatch.worker:app``: the app built from settings."""

from buildfarm.dispatch.celery_app import make_celery
from buildfarm.model.settings import load_settings

app = make_celery(load_settings())
