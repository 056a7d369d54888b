"""Apps for the worker-pool tests: importable ``module:function`` factories run in the workers."""

from __future__ import annotations

import os
import sys
from typing import Any

WARMED: list[tuple[int, int]] = []


def make_echo(tag: str) -> Any:
    """An app answering with what a test needs to know about the worker that ran it."""

    def app(message: Any, context: Any) -> Any:
        if message == "raise":
            raise ValueError("bad job")
        if message == "die":
            os._exit(3)
        return {
            "tag": tag,
            "pid": os.getpid(),
            "message": message,
            "warmed": list(WARMED),
            "main_reimported": sys.modules["__main__"].__name__ == "__mp_main__",
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        }

    return app


def warm(tag: str, slot: int, size: int) -> None:
    """Record the warm-up call; slot 1 fails, which must not stop the worker."""
    WARMED.append((slot, size))
    if slot == 1:
        raise RuntimeError("warm-up failure is ignored")
