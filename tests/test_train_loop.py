"""BasicSR's training loop through the plugin: progress lines and ETA, tensorboard tags, worker cap, exact resume."""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, finish_forked, forked_pids, make_unpaired_folders, run_forked, start_forked
from llmhdr_basicsr.utils import progress, resume_files, rng_state, train_hooks


class FakeTB:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def basicsr_lines():
    handler = Lines()
    logger = logging.getLogger('basicsr')
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old)


def _opt(print_freq=1000, print_seconds=30, total=101):
    return {'name': 'unit_progress', 'train': {'total_iter': total},
            'logger': {'print_freq': print_freq, 'print_seconds': print_seconds, 'use_tb_logger': True}}  # fmt: skip


# ------------------------------------------------------------------------------------------------- progress
def test_time_based_line_with_window_speed_and_eta_from_the_first_iteration(monkeypatch, basicsr_lines):
    """print_freq 1000, 10 s per iteration: a line every 30 s anyway, ETA = remaining x 10 s from the start (BasicSR
    restarts its clock after iteration 1 and showed ~0 there), BasicSR's reset_start_time changes nothing."""
    clock = [1000.0]
    monkeypatch.setattr(progress.time, 'time', lambda: clock[0])
    logger = progress.ProgressLogger(_opt(), start_iter=0, tb_logger=FakeTB(), heartbeat=False)
    printed = []
    for it in range(1, 8):
        clock[0] += 2.0  # data loading
        logger.step_begins()
        clock[0] += 8.0  # training step
        if logger.step_done(it):
            logger({'epoch': 0, 'iter': it, 'lrs': [2e-4], 'l_g_gan_hdr': 0.5})
            printed.append(it)
        if it == 1:
            logger.reset_start_time()
    assert printed == [3, 6]  # at least every 30 s of wall time, at the end of the iteration in progress
    line = basicsr_lines[0]
    assert 'iter:       3' in line and 'lr:(2.000e-04,)' in line and 'l_g_gan_hdr: 5.0000e-01' in line
    assert 'eta: 0:16:20' in line  # (101 - 3) x 10 s
    assert 'time (data): 10.000 (2.000), 0.1 it/s' in line
    logger.window_seconds = 7.0  # the window follows a change of speed
    for it in range(8, 12):
        clock[0] += 1.0
        logger.step_begins()
        clock[0] += 1.0
        logger.step_done(it)
    assert logger.seconds_per_iter() == pytest.approx(2.0)


def test_tensorboard_tags_learning_rates_losses_and_discriminator_outputs():
    tb = FakeTB()
    logger = progress.ProgressLogger(_opt(print_freq=1), start_iter=0, tb_logger=tb, heartbeat=False)

    class Model:
        def __init__(self):
            net = torch.nn.Linear(1, 1)
            self.optimizer_g = torch.optim.Adam(net.parameters(), lr=2e-4)
            self.optimizer_d = torch.optim.Adam(net.parameters(), lr=1e-4)
            self.optimizers = [self.optimizer_g, self.optimizer_d]

    logger.model = Model()
    logger.step_begins()
    logger.step_done(1)
    logger({'epoch': 0, 'iter': 1, 'lrs': [2e-4], 'time': 1.0, 'data_time': 0.1, 'l_g_gan_hdr': 0.5,
            'out_d_hdr_real': 0.9, 'grad_norm': 3.0})  # fmt: skip
    assert tb.scalars['losses/l_g_gan_hdr'] == [(1, 0.5)]
    assert tb.scalars['d_out/out_d_hdr_real'] == [(1, 0.9)]
    assert tb.scalars['misc/grad_norm'] == [(1, 3.0)]
    assert tb.scalars['lr/g'] == [(1, 2e-4)] and tb.scalars['lr/d'] == [(1, 1e-4)]
    assert 'out_d_hdr_real' not in tb.scalars  # no longer a top-level tag


def test_heartbeat_while_one_iteration_takes_longer_than_print_seconds(basicsr_lines):
    logger = progress.ProgressLogger(_opt(print_seconds=0.2), start_iter=4)
    try:
        logger.step_begins()
        time.sleep(0.9)
        logger.step_done(5)
    finally:
        progress._CURRENT[0] = None  # stops the heartbeat thread
    beats = [line for line in basicsr_lines if 'running for' in line]
    assert beats and 'iter 5 running' in beats[0] and 'training step' in beats[0]


def test_loader_workers_are_capped_at_the_cpu_count():
    cpus = train_hooks.available_cpus()
    opt = {'num_gpu': 0, 'dist': False, 'datasets': {'train': {'num_worker_per_gpu': cpus + 3}}}
    train_hooks.NOTES.clear()
    train_hooks.cap_workers(opt)
    assert opt['datasets']['train']['num_worker_per_gpu'] == cpus
    assert f'{cpus + 3} -> {cpus}' in train_hooks.NOTES[-1]
    opt['datasets']['train']['num_worker_per_gpu'] = 1
    train_hooks.cap_workers(opt)
    assert opt['datasets']['train']['num_worker_per_gpu'] == 1
    train_hooks.NOTES.clear()


# ------------------------------------------------------------------------------------------------ resume
def test_rng_state_round_trip_and_validation_leaves_it_unchanged():
    import numpy as np

    state = rng_state.capture_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    rng_state.restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first
    with rng_state.preserved_rng_state():
        torch.rand(100), np.random.rand(10), random.random()
    after = (random.random(), float(np.random.rand()), float(torch.rand(())))
    rng_state.restore_rng_state(state)
    random.random(), np.random.rand(), torch.rand(())
    assert after == (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_interrupted_save_leftovers_are_found_and_removed(tmp_path):
    states, models = tmp_path / 'training_states', tmp_path / 'models'
    states.mkdir()
    models.mkdir()
    for name in ('2.state', '4.state', '.tmp_abc123.state'):
        (states / name).write_bytes(b'x')
    for name in ('net_g_2.pth', 'net_g_4.pth', 'net_g_6.pth', 'net_g_hdr2ldr_6.pth', 'net_g_latest.pth', '.tmp_q.pth'):
        (models / name).write_bytes(b'x')
    assert resume_files.latest_state(str(states)) == str(states / '4.state')  # BasicSR's scan crashed on .tmp_
    removed = resume_files.clean_interrupted_save(str(tmp_path), 4)
    assert sorted(p.name for p in models.iterdir()) == ['net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth']
    assert sorted(p.name for p in states.iterdir()) == ['2.state', '4.state']
    assert len(removed) == 4 and all('removed' in m for m in removed)


LOSS_LINE = re.compile(r'iter:\s*([\d,]+), lr:\(([^)]*)\)\] \[eta[^\]]*\] (.*)$')


def _losses(log: Path) -> dict[int, str]:
    out = {}
    for line in log.read_text().splitlines():
        match = LOSS_LINE.search(line)
        if match:
            out[int(match.group(1).replace(',', ''))] = f'lr {match.group(2)} {match.group(3).strip()}'
    return out


def _resume_options(tmp_path: Path, workers: int) -> dict:
    ldr, hdr = make_unpaired_folders(tmp_path / 'data', n_ldr=2, n_hdr=2, size=(36, 40))
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    opt['datasets']['train'].update(dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), batch_size_per_gpu=1,
                                    dataset_enlarge_ratio=5, num_worker_per_gpu=workers)  # fmt: skip
    opt['datasets']['val']['dataroot_lq'] = str(ldr)
    opt['train'].update(total_iter=8, pool_size=2)  # a full pool swaps images at random: its state matters
    opt['train']['scheduler'].update(total_iter=8, decay_start=4)
    opt['val']['val_freq'] = 4  # validation at a checkpoint must not shift the random state
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
    return opt


def test_resume_after_sigkill_logs_exactly_the_losses_of_an_uninterrupted_run(tmp_path):
    """The same run twice, side by side: once uninterrupted, once killed with SIGKILL at a random moment after its
    first checkpoint, with leftovers of an interrupted save planted, then ``--auto_resume``d. Every iteration after
    the resume point must log the same losses and learning rates (epochs of 10 iterations: every checkpoint is
    mid-epoch, so the data position matters). Without loader workers and with 2 (their random streams matter too).
    The runs are ``python -m llmhdr_basicsr.train`` forked from one interpreter (:func:`conftest.start_forked`); the
    SIGKILL goes to the training process itself."""
    runs = []  # (name, workers)
    for workers in (0, 2):
        opt = _resume_options(tmp_path / f'w{workers}', workers)
        for name in ('reference', 'killed'):
            opt['name'] = f'{name}_{workers}'
            (tmp_path / f'{name}_{workers}.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
            runs.append((name, workers))
    driver = start_forked([('llmhdr_basicsr.train', ['-opt', f'{n}_{w}.yml']) for n, w in runs], tmp_path, parallel=4)
    exps = {w: tmp_path / 'experiments' / f'killed_{w}' for w in (0, 2)}
    deadline, pending = time.time() + 180, [0, 2]
    while pending:  # kill each run a random (repeatable) moment after its first checkpoint
        for workers in list(pending):
            assert driver.poll() is None and time.time() < deadline, driver.communicate()[1][-3000:]
            if (exps[workers] / 'training_states' / '2.state').exists():
                time.sleep(random.Random(workers).uniform(0.0, 0.4))
                os.kill(forked_pids(tmp_path)[runs.index(('killed', workers))], signal.SIGKILL)
                pending.remove(workers)
        time.sleep(0.02)
    first = finish_forked(driver)
    resume_iter, leftovers = {}, {}
    for (name, workers), result in zip(runs, first):
        expected = -signal.SIGKILL if name == 'killed' else 0
        assert result['code'] == expected, f'{name} {workers}: {result["code"]}\n{result["output"][-3000:]}'
    for workers, exp in exps.items():
        assert not (exp / 'models' / 'net_g_latest.pth').exists(), 'the run finished before it was killed'
        states = [int(p.stem) for p in (exp / 'training_states').glob('*.state') if p.stem.isdigit()]
        it = resume_iter[workers] = max(states)
        leftovers[workers] = [exp / 'training_states' / '.tmp_k1l2.state', exp / 'models' / '.tmp_a9b8.pth',
                              exp / 'models' / f'net_g_{it + 2}.pth']  # fmt: skip
        for path in leftovers[workers]:
            shutil.copy(exp / 'models' / f'net_g_{it}.pth', path)
    resumed = run_forked([('llmhdr_basicsr.train', ['-opt', f'killed_{w}.yml', '--auto_resume']) for w in (0, 2)],
                         tmp_path, parallel=2)  # fmt: skip
    for workers, result in zip((0, 2), resumed):
        out, it = result['output'], resume_iter[workers]
        assert result['code'] == 0, out[-3000:]
        assert not any(p.exists() for p in leftovers[workers][:2])  # the temporary files are gone; the orphan
        for path in leftovers[workers]:  # network was removed too (the resumed run writes that iteration again)
            assert f'removed {path}' in out
        assert 'whose training state was never written' in out
        assert f'Resuming training from epoch: 0, iter: {it}' in out
        reference = _losses(next((tmp_path / 'experiments' / f'reference_{workers}').glob('train_*.log')))
        after = _losses(max(exps[workers].glob('train_*.log'), key=lambda p: p.stat().st_mtime))
        assert sorted(after) == list(range(it + 1, 9)) and len(reference) == 8
        for i in after:
            assert after[i] == reference[i], f'workers={workers}: iteration {i} differs after resuming at {it}'
