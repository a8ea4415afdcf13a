"""Test helper process: ``writer.py URL PREFIX COUNT`` creates Apps PREFIX-0 … and prints each
name on stdout (flushed) only after the store acknowledged the write."""

from __future__ import annotations

import sys

from forge.models import App, AppSpec, ObjectMeta
from forge.store.factory import open_store


def main(argv: list[str]) -> None:
    url, prefix, count = argv[1], argv[2], int(argv[3])
    store = open_store(url)
    try:
        for i in range(count):
            store.create(App(metadata=ObjectMeta(name=f"{prefix}-{i}"), spec=AppSpec(repo="acme/crash")))
            print(f"{prefix}-{i}", flush=True)
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv)
