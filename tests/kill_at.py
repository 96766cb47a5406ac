"""Fault injection at exact I/O points: ``kill -9`` a child process at the N-th ``os.replace`` / ``os.fsync``.

Every durable write of the package goes through ``os.fsync`` (after the bytes are written, before
the rename) and ``os.replace`` (the rename that makes a file or folder visible), so killing just
before the N-th of these calls reproduces a crash at each write and rename point in turn.
``run_killed(fn, at=N)`` forks, installs the switch in the child, runs ``fn`` there and returns how
the child ended; ``count_points(fn)`` runs it unharmed and returns the list of points it passed.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path


class KillSwitch:
    """Counts ``os.replace`` / ``os.fsync`` calls (all threads); SIGKILLs the process before call ``at``."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def install(self) -> None:
        real_replace, real_fsync = os.replace, os.fsync

        def hit(kind: str, target: str) -> None:
            with self._lock:
                self.calls.append((kind, target))
                n = len(self.calls)
            if self.at is not None and n == self.at:
                os.kill(os.getpid(), signal.SIGKILL)

        def replace(src, dst, *args, **kwargs):
            hit("replace", os.fspath(dst))
            return real_replace(src, dst, *args, **kwargs)

        def fsync(fd):
            try:
                target = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
            except OSError:
                target = "?"
            hit("fsync", target)
            return real_fsync(fd)

        os.replace, os.fsync = replace, fsync


def run_killed(
    fn: Callable[[], object], *, at: int | None, log: Path | None = None, timeout: float = 300
) -> str:
    """Run ``fn`` in a forked child with a KillSwitch at ``at``: ``"killed"``, ``"ok"`` or ``"error: ..."``.

    With ``log``, the child writes the points it passed there (JSON) when it finishes.
    """
    err = Path(tempfile.gettempdir()) / f"kill_at_{os.getpid()}_{time.monotonic_ns()}.err"
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            # The parent's OpenMP thread pool does not survive fork(): a multi-threaded op in the child
            # would wait forever on workers that do not exist. One intra-op thread needs no pool.
            import torch

            torch.set_num_threads(1)
            switch = KillSwitch(at)
            switch.install()
            fn()
            if log is not None:
                log.write_text(json.dumps(switch.calls))
        except BaseException:
            err.write_text(traceback.format_exc())
            code = 1
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "error: timed out"
        time.sleep(0.02)
    if os.WIFSIGNALED(status):
        return "killed" if os.WTERMSIG(status) == signal.SIGKILL else f"error: signal {os.WTERMSIG(status)}"
    if os.WEXITSTATUS(status) == 0:
        return "ok"
    text = err.read_text() if err.exists() else "?"
    err.unlink(missing_ok=True)
    return f"error: {text}"


def count_points(fn: Callable[[], object], log: Path) -> list[tuple[str, str]]:
    """The I/O points ``fn`` passes when nothing kills it (run in a forked child, like the kills)."""
    outcome = run_killed(fn, at=None, log=log)
    assert outcome == "ok", outcome
    return [tuple(c) for c in json.loads(log.read_text())]


def tree_bytes(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``root`` (relative POSIX path -> content), for byte-for-byte comparisons."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def cli_killed_at_step(step: int, argv: list[str]) -> int:
    """Run ``vision-sae-lens argv`` in this process and SIGKILL it as training step ``step`` begins (a rank of a
    data-parallel job dying mid-run, at a step the test knows)."""
    from vision_sae_lens.cli import main
    from vision_sae_lens.train.fast_trainer import FastSAETrainer

    real_step = FastSAETrainer.step

    def step_or_die(self, batch):
        if self.n_training_steps == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, batch)

    FastSAETrainer.step = step_or_die  # type: ignore[method-assign]
    return main(argv)
