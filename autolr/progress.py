"""The progress bar of a study: trials finished, and where the running trial stands.

``trials:  8/14 [#9 epoch 3/20, step 130/440, loss 0.231]``: the bar counts finished trials and,
while one trains, shows its epoch, step and latest training loss, redrawn at most every
``REFRESH_S`` (one ``time.monotonic()`` per window of steps otherwise: nothing measurable). tqdm's
``auto`` picks a notebook widget in Jupyter and text on a terminal; it writes to stderr. A study run
without a bar gets :class:`NullProgress`, which does nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from autolr import keys

__all__ = ["AboveTheBar", "NullProgress", "Progress", "REFRESH_S", "run_label"]

REFRESH_S = 0.5


def run_label(number: int, attrs: Mapping[str, Any]) -> str:
    """How the bar names a run from its trial's number and user attrs: ``#9`` for a search trial; a
    confirmation run by the search trial it confirms (its own number counts the confirmation
    study's runs), its step back's scale and its seed: ``confirming #4 at 0.7x its lr on seed 1000``."""
    of = attrs.get(keys.CONFIRM_OF)
    if of is None:
        return f"#{number}"
    scale = attrs.get(keys.LR_SCALE)
    back = f" at {scale:g}x its lr" if scale is not None else ""
    return f"confirming #{of}{back} on seed {attrs.get(keys.SEED)}"


class NullProgress:
    """No bar: every call does nothing."""

    def steps(self, trial: str, step: int, total_steps: int | None, epoch: int, epochs: int | None, loss: float | None) -> None: ...

    def trial_finished(self, text: str, counted: bool) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


class Progress(NullProgress):
    """A bar over ``target`` finished trials, starting at ``initial``."""

    def __init__(self, target: int, *, initial: int = 0) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=target, initial=min(initial, target), desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True)
        self._last = 0.0
        if initial:  # until the first trial's steps: why the bar does not start at 0
            self.bar.set_postfix_str(f"resuming: {initial} finished before")

    def steps(self, trial: str, step: int, total_steps: int | None, epoch: int, epochs: int | None, loss: float | None) -> None:
        """``trial``: how the bar names the running trial (:func:`run_label`)."""
        now = time.monotonic()
        if now - self._last < REFRESH_S:
            return
        self._last = now
        of_steps = f"/{total_steps}" if total_steps else ""
        of_epochs = f"/{epochs}" if epochs else ""
        loss_text = "" if loss is None else f", loss {loss:.4g}"
        self.bar.set_postfix_str(f"{trial} epoch {epoch}{of_epochs}, step {step}{of_steps}{loss_text}")

    def trial_finished(self, text: str, counted: bool) -> None:
        self._last = 0.0
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(1 if counted else 0)

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        self.bar.close()


class AboveTheBar(logging.StreamHandler):
    """A log line on a line of its own above the bar, not after the bar's text on its line:
    ``tqdm.write`` clears the bar, prints, and draws it again (without a bar, it prints)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own contract: a handler never raises
            self.handleError(record)
