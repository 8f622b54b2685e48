"""What the benches share: the header line of a table, the command that runs a bench again,
turns taken between the things compared."""

from __future__ import annotations

import statistics
import time
from datetime import date
from pathlib import Path

from tokenfill.paths import BUNDLED_MODEL
from tokenfill.runtime.hardware import (
    describe_machine,
    use_threads_for,
)


def header(command: str) -> str:
    """The line above a bench's table: the command that ran it, the machine, the date."""
    return f"`{command}` on {describe_machine()}, {date.today().isoformat()}"


def model_option(model: Path) -> str:
    """The `--model` a bench's command line needs to run again: none for the bundled model
    (the default), else the directory as it was given."""
    return "" if Path(model).resolve() == BUNDLED_MODEL.resolve() else f" --model {model}"


def same_threads(module, args, kwargs) -> None:
    """A forward pre-hook giving a `transformers` model tokenfill's threads per pass."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is not None:
        use_threads_for(ids.numel())


def interleaved_medians(fns: list, rounds: int) -> list[float]:
    """Median seconds of each function, run in turn round after round (every other round in
    reverse order, so that none always follows the same one), so that the machine's load falls
    on all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for k in range(rounds):
        order = list(range(len(fns)))
        for i in (order if k % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(kept) for kept in times]


