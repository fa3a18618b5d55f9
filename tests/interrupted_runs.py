"""A training run killed at the start of an epoch and resumed from its last.pt, next to the
same run never interrupted: shared by the method contract tests (digits, srnn)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from snn2hw.methods import make_method
from snn2hw.train import trainer as trainer_mod


class Interrupt(Exception):
    pass


class StopAt:
    """Delegates to a method but raises at the start of epoch ``stop`` (a killed run)."""

    def __init__(self, inner, stop: int) -> None:
        self.inner, self.stop = inner, stop

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def on_epoch_start(self, ctx):
        if ctx.epoch == self.stop:
            raise Interrupt
        return self.inner.on_epoch_start(ctx)


def whole_and_resumed(run: Callable, method: str, out, monkeypatch, epochs: int, stop: int):
    """(uninterrupted result, result of the run killed at epoch ``stop`` then resumed);
    ``run(method, out=None, resume=False, epochs=...)`` trains. Asserts equal weights."""
    whole = run(method, epochs=epochs)
    monkeypatch.setattr(trainer_mod, "make_method", lambda n, o=None: StopAt(make_method(n, o), stop))
    with pytest.raises(Interrupt):
        run(method, out=out, epochs=epochs)
    monkeypatch.undo()
    resumed = run(method, out=out, resume=True, epochs=epochs)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{method}: {k} differs after resume")
    return whole, resumed
