"""Shared fixtures: paths, a subprocess runner for fresh interpreters, tiny generated images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
PYTHON = sys.executable

os.environ.setdefault('HF_HUB_OFFLINE', '1')


@pytest.fixture(autouse=True)
def _single_thread():
    """Tests use tiny tensors: intra-op threads only add overhead (and contention on the 2 shared CI cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_python(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <args>`` in a fresh interpreter; on failure the assertion shows the tail of its output."""
    full_env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONUNBUFFERED': '1', **(env or {})}
    proc = subprocess.run(
        [PYTHON, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f'exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}'
    )


def make_unpaired_folders(root: Path, n_ldr: int = 3, n_hdr: int = 3, size: tuple[int, int] = (40, 48), seed: int = 0):
    """Tiny LDR PNGs and HDR .hdr files with smooth content and a few bright 'light sources'."""
    from llmhdr_basicsr.utils.hdr_io import write_hdr, write_ldr

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    (root / 'ldr').mkdir(parents=True, exist_ok=True)
    (root / 'hdr').mkdir(parents=True, exist_ok=True)
    for i in range(n_ldr):
        base = np.stack([xx, yy, 0.5 * (xx + yy)], -1) * rng.uniform(0.5, 1.0, 3)
        write_ldr(root / 'ldr' / f'ldr_{i}.png', np.clip(base + rng.normal(0, 0.02, base.shape), 0, 1))
    for i in range(n_hdr):
        hdr = np.stack([yy, xx, 1 - yy], -1) * rng.uniform(0.2, 1.0, 3) + 0.01
        cy, cx = rng.integers(4, h - 4), rng.integers(4, w - 4)
        hdr[cy - 2 : cy + 2, cx - 2 : cx + 2] = rng.uniform(20, 200)
        write_hdr(root / 'hdr' / f'hdr_{i}.hdr', hdr.astype(np.float32))
    return root / 'ldr', root / 'hdr'


@pytest.fixture(scope='session')
def tiny_unpaired(tmp_path_factory) -> tuple[Path, Path]:
    return make_unpaired_folders(tmp_path_factory.mktemp('unpaired'))


class DisabledWarnings:
    """Collects the 'X is disabled' messages of losses that switched themselves off: as ``UserWarning`` (library use)
    or as records on BasicSR's ``basicsr`` logger (inside a run, or once another test initialised that logger)."""

    def __init__(self, owner: str):
        import logging
        import warnings

        self.owner, self.messages = owner, []
        self._logging, self._warnings = logging, warnings

    def __enter__(self):
        self._catch = self._warnings.catch_warnings(record=True)
        self._caught = self._catch.__enter__()
        self._warnings.simplefilter('always')
        self._handler = self._logging.Handler()
        self._handler.emit = lambda record: self.messages.append(record.getMessage())
        self._logging.getLogger('basicsr').addHandler(self._handler)
        return self

    def __exit__(self, *exc):
        self._logging.getLogger('basicsr').removeHandler(self._handler)
        self._catch.__exit__(*exc)
        self.messages += [str(w.message) for w in self._caught]
        self.messages = [m for m in self.messages if self.owner in m]
        return False
