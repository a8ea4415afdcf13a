"""Forge: a self-hosted push-to-deploy platform built as a declarative reconciler."""

__version__ = "0.1.0"
