"""Shared fixtures: paths, subprocess runners (fresh interpreters, forked entry points), tiny generated images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'


@pytest.fixture(scope='session')
def prep():
    """``scripts/prepare_data.py`` as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('prepare_data', REPO / 'scripts' / 'prepare_data.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules['prepare_data'] = module  # dataclasses and multiprocessing pickling look the module up by name
    spec.loader.exec_module(module)
    return module


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
    """Run ``python <args>`` in a fresh interpreter; on failure the assertion shows the tail of its output.

    One intra-op thread unless ``env`` says otherwise: the tensors are tiny, and on the shared 2-core machine two
    OpenMP threads competing with another process made a 1 s training run take a minute.
    """
    full_env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', **(env or {})}
    proc = subprocess.run(
        [PYTHON, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc


#: Runs entry-point modules (``basicsr.train``, ``basicsr.test``, ...) each in a forked child of one interpreter that
#: has imported basicsr once: group after group, up to ``parallel`` children of a group at a time. Child pids go to
#: ``_pids.txt`` as they start (so a test can kill one); prints ``[{code, output}, ...]`` as JSON at the end.
FORK_DRIVER = textwrap.dedent(
    """
    import json, os, runpy, sys
    import basicsr  # noqa: F401  (once, before forking: the start-up hook registers the plugin)


    def child(case, write, os=os, sys=sys, runpy=runpy):
        # runs the module in this __main__ as `python -m` does (its globals replace the driver's): locals only here
        os.dup2(write, 1)
        os.dup2(write, 2)
        sys.argv = [case['module']] + case['args']
        try:
            runpy._run_module_as_main(case['module'])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            sys.excepthook(*sys.exc_info())  # what the interpreter does with an uncaught exception
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


    def start(index, case, pids):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            child(case, write)
        os.close(write)
        pids.write(f'{index} {pid}\\n')
        pids.flush()
        return pid, read


    def finish(pid, read):
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        os.close(read)
        status = os.waitpid(pid, 0)[1]
        return {'code': os.waitstatus_to_exitcode(status), 'output': b''.join(chunks).decode('utf-8', 'replace')}


    def run_all(path, parallel):
        cases, results = json.load(open(path)), {}
        with open('_pids.txt', 'w') as pids:
            for group in sorted({c['group'] for c in cases}):
                running = []
                for index, case in enumerate(cases):
                    if case['group'] != group:
                        continue
                    running.append((index, *start(index, case, pids)))
                    if len(running) >= parallel:
                        i, pid, read = running.pop(0)
                        results[i] = finish(pid, read)
                for i, pid, read in running:
                    results[i] = finish(pid, read)
        return [results[i] for i in range(len(cases))]


    print(json.dumps(run_all(sys.argv[1], int(sys.argv[2]))))
    """
)


def start_forked(cases: list[tuple], cwd: Path, parallel: int = 1) -> subprocess.Popen:
    """Start :data:`FORK_DRIVER` for ``cases`` = ``[(module, args[, group])]`` in ``cwd``; see :func:`run_forked`."""
    cwd = Path(cwd)
    payload = [{'module': c[0], 'args': [str(a) for a in c[1]], 'group': c[2] if len(c) > 2 else 0} for c in cases]
    (cwd / '_cases.json').write_text(json.dumps(payload))
    (cwd / '_fork_driver.py').write_text(FORK_DRIVER)
    (cwd / '_pids.txt').unlink(missing_ok=True)
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen([PYTHON, '_fork_driver.py', '_cases.json', str(parallel)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def forked_pids(cwd: Path) -> dict[int, int]:
    """``{case index: pid}`` of the children :func:`start_forked` has started so far."""
    path = Path(cwd) / '_pids.txt'
    lines = path.read_text().split('\n') if path.exists() else []
    return {int(i): int(pid) for i, pid in (line.split() for line in lines if line.count(' ') == 1)}


def finish_forked(proc: subprocess.Popen, timeout: int = 600) -> list[dict]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def run_forked(cases: list[tuple], cwd: Path, parallel: int = 1, timeout: int = 600) -> list[dict]:
    """Run ``python -m <module> <args>`` for each case as forked children of one interpreter (basicsr imported once).

    Each child executes the module as ``__main__`` exactly as ``python -m`` does, in ``cwd``, with its own exit
    status; an uncaught exception goes through ``sys.excepthook``. Cases are ``(module, args)`` or ``(module, args,
    group)``: groups run one after the other (a later group may use what an earlier one wrote). Returns ``[{'code':
    int, 'output': stdout and stderr}]`` in the order of ``cases``.
    """
    return finish_forked(start_forked(cases, cwd, parallel), timeout)


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
        self._handler = self._logging.Handler(level=self._logging.WARNING)  # not BasicSR's 'Loss [X] is created.'
        self._handler.emit = lambda record: self.messages.append(record.getMessage())
        self._logging.getLogger('basicsr').addHandler(self._handler)
        return self

    def __exit__(self, *exc):
        self._logging.getLogger('basicsr').removeHandler(self._handler)
        self._catch.__exit__(*exc)
        self.messages += [str(w.message) for w in self._caught]
        self.messages = [m for m in self.messages if self.owner in m]
        return False
