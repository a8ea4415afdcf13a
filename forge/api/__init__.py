"""The Forge HTTP API (falcon, served by gunicorn): ``create_app(config, store=None, clock=None)``."""

from forge.api.app import create_app

__all__ = ["create_app"]
