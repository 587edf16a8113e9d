"""Decorators that keep a store operation whole: signals held back, ENOSPC made :class:`NoSpace`.

* :func:`signals_deferred` / :func:`defers_signals`: a mount and its reference table must
  change together, so ``get`` and ``put`` run with SIGINT/SIGTERM handlers held back and
  deliver what arrived afterwards.
* :func:`reports_no_space`: a full disk anywhere inside a layer operation (extraction, a
  staging clone, a lock or reference file, a new directory) becomes one
  :class:`aufs.NoSpace` that names the layer.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .errors import AufsError, NoSpace

__all__ = ["defers_signals", "reports_no_space", "signals_deferred"]

_Method = TypeVar("_Method", bound=Callable[..., Any])

# Signals whose Python handlers (KeyboardInterrupt, a daemon's SystemExit) are held back; a
# signal left at its default action kills the process, and the store's sweep handles that.
_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_deferring = False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block with SIGINT/SIGTERM handlers held back, then deliver what arrived.

    Only the main thread runs Python signal handlers, so only there is anything to hold back;
    nested uses are one deferral.
    """
    global _deferring
    if _deferring or threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved: dict[int, Any] = {}
    try:
        # inside the try: a signal that lands while the handlers are being swapped still
        # finds every swapped handler restored
        for signum in _DEFERRED_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                saved[signum] = handler
                signal.signal(signum, lambda received, frame: pending.append(received))
        _deferring = True
        yield
    finally:
        _deferring = False
        for held, handler in saved.items():
            signal.signal(held, handler)
        if pending:
            saved[pending[0]](pending[0], None)


def defers_signals(method: _Method) -> _Method:
    """Run the function under :func:`signals_deferred`."""

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with signals_deferred():
            return method(*args, **kwargs)

    return run  # type: ignore[return-value]


def reports_no_space(action: str) -> Callable[[_Method], _Method]:
    """Make a method whose first argument is a layer id raise :class:`aufs.NoSpace` naming that
    layer for ENOSPC/EDQUOT, wherever it arises, raised from the original error. The object
    the method is bound to must have a ``home`` attribute (the store's home)."""

    def wrap(method: _Method) -> _Method:
        @functools.wraps(method)
        def run(self: Any, layer_id: str, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, layer_id, *args, **kwargs)
            except NoSpace as exc:
                if repr(layer_id) in exc.message:
                    raise
                raise NoSpace(f"cannot {action} layer {layer_id!r}: {exc.message}",
                              layer_id=layer_id, path=exc.path) from exc
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(exc, AufsError):
                    raise
                where = exc.filename if exc.filename is not None else str(self.home)
                raise NoSpace(f"cannot {action} layer {layer_id!r}: no space left on the store's "
                              f"filesystem ({where}); free space or raise the quota",
                              layer_id=layer_id, path=where) from exc

        return run  # type: ignore[return-value]

    return wrap
