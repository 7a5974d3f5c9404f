"""Celery on Redis: carries "run this step" to the nodes and "advance this build" to the scheduler."""
