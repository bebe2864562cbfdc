"""How far a transformer run has got: written by the Train workers, read by the driver, shown in the terminal.

Rank 0 rewrites one small JSON file in the run folder after every few optimiser steps and after every validated
epoch; a thread on the driver polls it and hands each new snapshot to a callback, such as `TrainingDisplay`.
A file rather than Ray Train's reported metrics or a Ray actor: `ray.train.report` is a barrier that runs once an
epoch (too rarely for a time-left estimate) and its driver-side callbacks are a developer API, while the run folder
already is on storage that the driver and every worker see (checkpoints live there), an atomic rename makes each
snapshot whole, and the file outlives a crash for anyone who wants to look.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
STEP_WRITE_INTERVAL_S = 0.5
POLL_INTERVAL_S = 0.5


@dataclass(frozen=True)
class EpochScore:
    """One validated epoch."""

    epoch: int
    train_loss: float
    val_macro_f1: float
    val_accuracy: float
    samples_per_s: float


@dataclass(frozen=True)
class TrainProgress:
    """A snapshot of one `train_transformer` call; `finished` holds this call's validated epochs, oldest first."""

    call_id: str
    epochs: int  # the most epochs the run trains (early stopping may end it sooner)
    first_epoch: int  # where this call started: a resumed run starts after its last checkpoint
    steps_per_epoch: int
    epoch: int  # the epoch in progress
    step: int  # optimiser steps done in it
    finished: tuple[EpochScore, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainProgress:
        data = json.loads(text)
        return cls(**{**data, "finished": tuple(EpochScore(**e) for e in data["finished"])})


class ProgressWriter:
    """Rank 0's side: keeps the snapshot and rewrites the file, at most every STEP_WRITE_INTERVAL_S for steps."""

    def __init__(self, path: Path, snapshot: TrainProgress) -> None:
        self.path = path
        self.snapshot = snapshot
        self._written_at = 0.0
        self._write()

    def step(self, epoch: int, step: int) -> None:
        self.snapshot = replace(self.snapshot, epoch=epoch, step=step)
        if time.monotonic() - self._written_at >= STEP_WRITE_INTERVAL_S:
            self._write()

    def epoch_done(self, score: EpochScore) -> None:
        self.snapshot = replace(self.snapshot, finished=(*self.snapshot.finished, score))
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # rank 0 may run on a node the folder is not on
            tmp.write_text(self.snapshot.to_json(), encoding="utf-8")
            os.replace(tmp, self.path)  # readers see the old snapshot or the new one, never half of one
        except OSError as err:  # progress is a courtesy: a full disk must not stop the training
            logger.warning("cannot write %s: %s", self.path, err)
        self._written_at = time.monotonic()


class ProgressWatcher:
    """The driver's side: a thread that polls the file and calls `on_progress` with each new snapshot of this
    call (a file left by an earlier call is ignored), and once more when the block ends."""

    def __init__(self, path: Path, call_id: str, on_progress: Callable[[TrainProgress], None]) -> None:
        self.path, self.call_id, self.on_progress = path, call_id, on_progress
        self._seen = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mailroute-progress", daemon=True)

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        if exc is None:
            self.poll()

    def _run(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            self.poll()

    def poll(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return  # not written yet
        if text == self._seen:
            return
        self._seen = text
        try:
            snapshot = TrainProgress.from_json(text)
        except (ValueError, TypeError, KeyError) as err:
            logger.debug("unreadable progress snapshot %s: %s", self.path, err)
            return
        if snapshot.call_id != self.call_id:
            return
        try:
            self.on_progress(snapshot)
        except Exception:  # a broken display must not stop the training it shows
            logger.exception("progress callback failed")


class TrainingDisplay:
    """A progress bar on stderr (epoch k of n, steps, the last validation score, time left) and one lasting line per
    validated epoch. On a terminal the bar redraws in place and vanishes at the end; elsewhere (a log file, a test)
    only the epoch lines are written."""

    def __init__(self, workers: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True, highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TextColumn("{task.fields[score]}"),
            TextColumn("time left"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            refresh_per_second=2,  # a step takes about a second; redrawing more often takes CPU from the workers
            disable=not console.is_interactive,  # elsewhere Rich would end with an empty line
        )
        self._task = self._progress.add_task(f"starting {workers} Ray Train workers", total=None, score="")
        self._printed = 0  # the last epoch given a line (a restarted worker group resends none it validated)

    def __enter__(self) -> TrainingDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, p: TrainProgress) -> None:
        for score in (s for s in p.finished if s.epoch > self._printed):
            self._printed = score.epoch
            self._progress.console.print(
                f"epoch {score.epoch}/{p.epochs}: train loss {score.train_loss:.4f}, "
                f"val macro-F1 {score.val_macro_f1:.4f}, val accuracy {score.val_accuracy:.4f} "
                f"({score.samples_per_s:.1f} samples/s)",
                soft_wrap=True,
                markup=False,
            )
        last = p.finished[-1] if p.finished else None
        done = (p.epoch - p.first_epoch) * p.steps_per_epoch + p.step
        if last is not None and last.epoch == p.epoch:  # validated: the next epoch has not sent a step yet
            done = (p.epoch - p.first_epoch + 1) * p.steps_per_epoch
        self._progress.update(
            self._task,
            description="scoring the test split" if last and last.epoch == p.epochs else f"epoch {p.epoch}/{p.epochs}",
            total=(p.epochs - p.first_epoch + 1) * p.steps_per_epoch,
            completed=done,
            score="" if last is None else f"val macro-F1 {last.val_macro_f1:.3f}",
        )


@contextmanager
def spinner(description: str) -> Iterator[None]:
    """A spinner with the time elapsed on stderr while `description` runs; on a terminal only, and gone after."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn()]
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_interactive) as progress:
        progress.add_task(description, total=None)
        yield
