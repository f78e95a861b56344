"""Training progress in BasicSR's loop: a line at least every ``logger.print_seconds``, a correct ETA, lr scalars.

BasicSR's ``MessageLogger`` prints every ``print_freq`` iterations only (nothing for minutes when an iteration is
slow), restarts its clock after the first iteration (``reset_start_time``), so the ETA of the first lines is close to
zero, and sends every log key that does not start with ``l_`` to a top-level tensorboard tag (``out_d_*``).
:class:`ProgressLogger` replaces it in the training loop (:mod:`llmhdr_basicsr.utils.train_hooks`):

- the regular ``print_freq`` lines as before, plus one whenever ``print_seconds`` (default 30; 0 = off) have passed
  since the last line, at the end of the iteration in progress; while one iteration runs longer than that, a
  heartbeat line says which iteration is running and for how long;
- speed and ETA from the iterations of the recent window (the last ``window_seconds``, at least the last iteration),
  measured from the moment the loop starts, so the first line is already right; the time per iteration includes data
  loading, checkpoints and validation (what the ETA has to cover); ``time (data)`` shows the seconds per iteration and
  the part spent outside the training step;
- tensorboard: the learning rate of each optimizer as ``lr/<optimizer>`` (``lr/g``, ``lr/d`` for CycleHDRModel),
  losses (``l_*``) under ``losses/`` as BasicSR does, discriminator outputs (``out_d_*``) under ``d_out/``, other
  values under ``misc/``.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections import deque

from basicsr.utils import MessageLogger
from basicsr.utils.dist_util import get_dist_info

DEFAULT_PRINT_SECONDS = 30.0
_CURRENT: list = [None]  # the logger of the running training loop (its heartbeat stops when another one starts)


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (with days when needed), as BasicSR prints it; ``?`` when unknown."""
    if seconds != seconds or seconds == float('inf'):
        return '?'
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def named_learning_rates(model) -> dict[str, float]:
    """``{name: lr}`` of the first parameter group of each optimizer of a BasicSR model.

    The name is the model attribute holding the optimizer without its ``optimizer_`` prefix (``optimizer_g`` -> ``g``),
    or the optimizer's index.
    """
    names = {id(v): k for k, v in vars(model).items() if k.startswith('optimizer')}
    out = {}
    for i, optimizer in enumerate(getattr(model, 'optimizers', [])):
        name = names.get(id(optimizer), str(i)).removeprefix('optimizer').lstrip('_') or str(i)
        out[name] = float(optimizer.param_groups[0]['lr'])
    return out


def tb_tag(key: str) -> str:
    """Tensorboard tag of a log key: ``l_*`` -> ``losses/``, ``out_d_*`` -> ``d_out/``, ``judge_*`` -> ``judge/``,
    ``amp_*`` -> ``amp/``, anything else -> ``misc/``."""
    if key.startswith('l_'):
        return f'losses/{key}'
    if key.startswith('amp_'):
        return f'amp/{key.removeprefix("amp_")}'
    if key.startswith('judge_'):
        return f'judge/{key.removeprefix("judge_")}'
    if key.startswith('out_d_'):
        return f'd_out/{key}'
    return f'misc/{key}'


class ProgressLogger(MessageLogger):
    """Drop-in for BasicSR's ``MessageLogger`` (same constructor, same ``__call__``), see the module docstring.

    Args:
        opt: BasicSR options (``name``, ``logger.print_freq``, ``logger.print_seconds``, ``logger.use_tb_logger``,
            ``train.total_iter``).
        start_iter: the iteration training starts from (0, or the resumed iteration).
        tb_logger: tensorboard ``SummaryWriter`` or None.
        window_seconds: length of the speed window. Default: 120.
        heartbeat: run the heartbeat thread (off in unit tests). Default: True.
    """

    def __init__(
        self, opt: dict, start_iter: int = 1, tb_logger=None, window_seconds: float = 120.0, heartbeat: bool = True
    ) -> None:
        super().__init__(opt, start_iter, tb_logger)
        self.print_seconds = float(opt['logger'].get('print_seconds', DEFAULT_PRINT_SECONDS) or 0)
        self.window_seconds = float(window_seconds)
        self.max_iters = int(self.max_iters)
        now = time.time()
        self.marks: deque[tuple[float, int]] = deque([(now, int(start_iter))])  # (end time, iteration)
        self.data_times: deque[float] = deque(maxlen=200)
        self.last_print = now  # any line (heartbeats included)
        self.last_full = now  # the last line with losses
        self.step_started: float | None = None
        self.current_iter = int(start_iter)
        self.model = None  # set by the training hooks: the learning rates of every optimizer go to tensorboard
        self._lock = threading.Lock()
        _CURRENT[0] = self
        self._heartbeat = None
        self.rank = get_dist_info()[0]
        if heartbeat and self.print_seconds > 0 and self.rank == 0:
            self._heartbeat = threading.Thread(target=self._beat, name='llmhdr-progress', daemon=True)
            self._heartbeat.start()

    # ------------------------------------------------------------------------------------------------ measuring
    def reset_start_time(self) -> None:
        """BasicSR calls this after the first iteration; the window-based speed needs no restart (kept as a no-op)."""

    def step_begins(self) -> None:
        """Called when a training step (``optimize_parameters``) starts."""
        now = time.time()
        with self._lock:
            self.data_times.append(now - self.marks[-1][0])
            self.step_started = now

    def step_done(self, current_iter: int) -> bool:
        """Record the end of iteration ``current_iter``; True when a time-based line is due now."""
        now = time.time()
        with self._lock:
            self.step_started = None
            self.current_iter = int(current_iter)
            self.marks.append((now, int(current_iter)))
            while len(self.marks) > 2 and now - self.marks[0][0] > self.window_seconds:
                self.marks.popleft()
            due = self.print_seconds > 0 and now - self.last_full >= self.print_seconds
        return due and current_iter % self.interval != 0  # the print_freq line comes anyway

    def seconds_per_iter(self) -> float:
        """Mean wall time per iteration over the window (nan before the first iteration)."""
        (t0, i0), (t1, i1) = self.marks[0], self.marks[-1]
        return (t1 - t0) / (i1 - i0) if i1 > i0 else float('nan')

    def eta_seconds(self, current_iter: int) -> float:
        return self.seconds_per_iter() * max(self.max_iters - current_iter, 0)

    # ------------------------------------------------------------------------------------------------ printing
    def __call__(self, log_vars: dict) -> None:
        """Print one line (and write tensorboard scalars), from BasicSR's loop or a time-based call."""
        if self.rank != 0:
            return
        log_vars = dict(log_vars)
        epoch = log_vars.pop('epoch')
        current_iter = log_vars.pop('iter')
        lrs = log_vars.pop('lrs')
        log_vars.pop('time', None)  # BasicSR's AvgTimer values: replaced by the window measurement below
        log_vars.pop('data_time', None)
        spi = self.seconds_per_iter()
        data = sum(self.data_times) / len(self.data_times) if self.data_times else 0.0
        speed = f'{1 / spi:.3g} it/s' if spi == spi and spi > 0 else '? it/s'
        message = f'[{self.exp_name[:5]}..][epoch:{epoch:3d}, iter:{current_iter:8,d}, lr:('
        message += ''.join(f'{v:.3e},' for v in lrs) + ')] '
        message += f'[eta: {format_eta(self.eta_seconds(current_iter))}, time (data): {spi:.3f} ({data:.3f}), {speed}] '
        for k, v in log_vars.items():
            message += f'{k}: {v:.4e} '
        with self._lock:
            self.last_print = self.last_full = time.time()
        self.logger.info(message.rstrip())
        if self.use_tb_logger and 'debug' not in self.exp_name and self.tb_logger is not None:
            for k, v in log_vars.items():
                self.tb_logger.add_scalar(tb_tag(k), v, current_iter)
            named = named_learning_rates(self.model) if self.model is not None else {}
            if not named and lrs:
                named = {'0': lrs[0]}
            for name, value in named.items():
                self.tb_logger.add_scalar(f'lr/{name}', value, current_iter)
            images = getattr(self.model, 'tb_images', None)  # e.g. the VLM judge's latest answers
            for tag, image in images() if callable(images) else ():
                self.tb_logger.add_image(tag, image, current_iter)

    def _beat(self) -> None:
        """Heartbeat thread: a line while one iteration (or data loading, a checkpoint, validation) takes long."""
        while _CURRENT[0] is self:
            time.sleep(max(min(self.print_seconds, 5.0), 0.5))
            with self._lock:
                now = time.time()
                since = now - self.marks[-1][0]  # how long the iteration in progress has been running
                if now - self.last_print < self.print_seconds or since < self.print_seconds:
                    continue
                running = self.current_iter + 1
                phase = 'training step' if self.step_started is not None else 'data loading / checkpoint / validation'
                spi = self.seconds_per_iter()
                self.last_print = now
            if running > self.max_iters:
                continue
            last = f'; last iterations took {spi:.1f} s each' if spi == spi else ''
            self.logger.info(f'[{self.exp_name[:5]}..] iter {running:,d} running for {since:.0f} s ({phase}{last})')
