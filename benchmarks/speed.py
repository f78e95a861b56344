"""Speed and memory benchmark of LLM-HDR / CycleHDR: every figure is a ratio measured side by side in one run.

Absolute times on a shared machine are noise; what this script reports are ratios between configurations timed in
the same process, interleaved round-robin (A, B, C, A, B, C, ...) so that a change of machine load hits all of them
alike. Each time is the median of ``--repeats`` runs after ``--warmup`` untimed runs. Sections (``--sections``):

``step``
    One full ``CycleHDRModel.optimize_parameters`` step (options/llmhdr.yml: FeedbackUNet num_feat 64, num_iter 3,
    heuristic perception on, CLIP/SAM off, ``--size`` crops, ``--batch`` 1) against a reference CycleGAN step built
    here from the CycleGAN paper (Zhu et al. 2017, Sec. 4 and appendix 7.2: ResNet generator ``c7s1-64, d128, d256,
    R256 x 9, u128, u64, c7s1-3`` with instance norm and reflection padding, 70x70 PatchGAN, LSGAN + cycle L1
    (lambda 10) + identity L1 (0.5 lambda), Adam, pools of 50). Reported: step times, multiply-accumulates per step
    (``torch.utils.flop_counter.FlopCounterMode`` over forward *and* backward of the whole step, MAC = FLOP / 2) and
    the achieved GMAC/s. Goal: ours >= 0.9x the reference's GMAC/s. On a GPU the same step also runs with bf16
    autocast (``train.amp: bf16``) and channels_last, with peak GPU memory.
``extras``
    Step time with each optional part, relative to the default step: heuristic perception (gating + L_llm) vs both
    off (goal <= 1.10x), CLIP L_con (ViT-B-32, random weights), SAM L_sem (vit_b, random weights, the loss's default
    input size), CLIP + SAM (goal <= 1.6x), cached VLM maps in the batch (``ldr_maps``, ~1.0x). The CLIP/SAM caches
    of the fixed LDR side are warm as in training after the first epoch: every call gets **new random crops and flips
    of the same LDR images** (warm-up included), so the caches can hit only across crops, through the dataset's
    whole-image view (``ldr_image_key``, ``ldr_global``, ``ldr_window``); their hit/miss counts are printed.
``infer``
    Megapixels per second of ``llmhdr-infer``'s per-image code path (:class:`llmhdr_basicsr.infer.Reconstructor`:
    sRGB in, linear HDR out, file I/O excluded) with G_Y at the training width and random weights: untiled at 1 MP,
    tiled (:class:`~llmhdr_basicsr.utils.tiling.GlobalStatsTiler`, ``--tile``/``--overlap``) at 4K (3840x2160).
    Each run happens in its own child process; the peak resident memory (``VmHWM``) of the 4K one is the memory
    figure (goal <= 3 GB on the CPU). Goal: tiled throughput >= 0.75x untiled.
``data``
    Samples per second of ``UnpairedLDRHDRDataset`` through a ``DataLoader`` with ``--workers`` (2) workers at
    ``--size`` crops from ``--data`` (default ``../shared/data``); goal: >= 5x the training step's sample rate
    (needs ``step`` in the same run).
``judge``
    Step time with the training-time VLM judge (``train.llm_opt.backend: vlm``) against a local server that answers
    in 2 s, in 20 s, or never, relative to the judge off (interleaved as above). The judge submits at every step
    (``judge_every: 1``, the worst case); the figure for a real setting is the amortised ratio at ``--judge-every``
    (default 50): ``1 + (ratio at every step - 1) / judge_every``. Goal: amortised <= 1.05x for every server;
    the judge's answered / dropped / failed counts are printed.
``store`` (not in the default list)
    Samples per second of ``UnpairedLDRHDRDataset`` at ``--size`` crops, virtual camera and whole-image views on,
    on ``--store-frames`` (2) synthesised 4K frames (3840x2160 EXR + 8-bit PNG, in a temporary folder): read whole
    (every sample decodes both frames and computes the ``hdr_norm`` percentile and the camera's exposure quantile on
    the whole HDR frame) against a training store of the same frames (``prepare_data.py store``: 512 px tiles every
    512 px, per-frame statistics), with 0 and with 1 DataLoader worker (the per-worker rate); also the store's build
    time per frame. Goal: store >= 5x the whole-frame rate (0 workers).
``profile`` (not in the default list)
    ``torch.profiler`` of one step of each model: time by operator category, operator counts, and the most expensive
    operators with their input shapes. Use it when the GMAC/s goal fails.

Usage (from the repository root)::

    python benchmarks/speed.py                                   # all default sections, CPU
    python benchmarks/speed.py --sections step,profile --repeats 2 --warmup 1
    python benchmarks/speed.py --device cuda --json speed.json   # GPU: adds bf16 / channels_last step variants
    python benchmarks/speed.py --tiny                            # seconds; what the test suite runs
    python benchmarks/speed.py --sections store --threads 1      # the training store on 4K frames (~2 min)

The output lists the machine (CPU model, cores, load average, torch version, threads), a table per section, the goals
with pass/fail and a final one-line summary starting with ``SUMMARY``. ``--json PATH`` writes all numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / 'shared' / 'data'
SECTIONS = ('step', 'extras', 'judge', 'infer', 'data', 'store', 'profile')
DEFAULT_SECTIONS = ('step', 'extras', 'judge', 'infer', 'data')
CHILD_TAG = 'SPEED_CHILD_RESULT '

#: Tiny open_clip image tower for ``--tiny`` (random weights, no download), registered under this name.
TINY_CLIP_ARCH = 'llmhdr-speed-tiny-clip'
TINY_CLIP_CFG = {
    'embed_dim': 64,
    'vision_cfg': {'image_size': 64, 'layers': 2, 'width': 64, 'patch_size': 16, 'head_width': 32},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 2},
}


# ================================================================================================= configuration
@dataclass
class Settings:
    """Everything a section needs; built from the command line by :func:`settings_from_args`."""

    sections: tuple[str, ...]
    size: int
    num_feat: int
    num_iter: int
    batch: int
    repeats: int
    warmup: int
    device: torch.device
    threads: int
    data: Path
    workers: int
    data_samples: int
    infer_untiled: tuple[int, int]
    infer_tiled: tuple[int, int]
    tile: int
    overlap: int
    tiny: bool
    store_frames: int = 2
    store_frame: tuple[int, int] = (2160, 3840)
    store_tile: int = 512
    seed: int = 0
    judge_every: int = 50


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        '--sections',
        default=','.join(DEFAULT_SECTIONS),
        help=f'comma-separated subset of {",".join(SECTIONS)} (default: %(default)s)',
    )
    p.add_argument('--size', type=int, default=None, help='training crop size (default 256; --tiny: 32)')
    p.add_argument('--num-feat', type=int, default=None, help='generator/discriminator width (default 64; --tiny: 4)')
    p.add_argument('--num-iter', type=int, default=None, help='feedback iterations (default 3; --tiny: 2)')
    p.add_argument('--batch', type=int, default=1, help='training batch size (default 1)')
    p.add_argument('--repeats', type=int, default=None, help='timed runs per configuration (default 3; --tiny: 2)')
    p.add_argument('--warmup', type=int, default=1, help='untimed runs per configuration first (default 1)')
    p.add_argument('--device', default='cpu', help='cpu or cuda[:N] (default cpu)')
    p.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch default)')
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, help='folder with ldr/ and hdr/ (default %(default)s)')
    p.add_argument('--workers', type=int, default=2, help='DataLoader workers of the data section (default 2)')
    p.add_argument('--data-samples', type=int, default=None, help='samples timed in the data section (default 48)')
    p.add_argument('--store-frames', type=int, default=2, help='frames synthesised by the store section (default 2)')
    p.add_argument('--tile', type=int, default=None, help='tile edge of the tiled infer run (default 512)')
    p.add_argument('--overlap', type=int, default=None, help='tile overlap of the tiled infer run (default 32)')
    p.add_argument('--json', type=Path, default=None, help='also write all numbers to this JSON file')
    p.add_argument('--tiny', action='store_true', help='toy sizes for a smoke run (num_feat 4, 32x32, 2 repeats, ...)')
    p.add_argument('--seed', type=int, default=0, help='torch.manual_seed (default 0)')
    p.add_argument('--judge-every', type=int, default=50, help='judge section: the amortised figure (default 50)')
    p.add_argument('--infer-child', default=None, help=argparse.SUPPRESS)  # internal: one inference run, JSON spec
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Validate the command line and fill the size-dependent defaults (``--tiny`` shrinks everything)."""
    sections = tuple(s.strip() for s in args.sections.split(',') if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f'--sections: unknown {unknown or "(empty)"}; choose from {",".join(SECTIONS)}')
    tiny = args.tiny

    def pick(value, full, small):
        return value if value is not None else (small if tiny else full)

    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(f'--device {args.device!r} is not a device; use cpu or cuda[:N]') from err
    if device.type not in ('cpu', 'cuda'):
        raise ValueError(f'--device {args.device!r}: use cpu or cuda[:N]')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {args.device!r}: torch sees no CUDA device on this machine; use --device cpu')
    s = Settings(
        sections=sections,
        size=pick(args.size, 256, 32),
        num_feat=pick(args.num_feat, 64, 4),
        num_iter=pick(args.num_iter, 3, 2),
        batch=args.batch,
        repeats=pick(args.repeats, 3, 2),
        warmup=args.warmup,
        device=device,
        threads=args.threads or torch.get_num_threads(),
        data=args.data,
        workers=args.workers,
        data_samples=pick(args.data_samples, 48, 8),
        infer_untiled=(56, 64) if tiny else (1000, 1000),
        infer_tiled=(104, 136) if tiny else (2160, 3840),
        tile=pick(args.tile, 512, 48),
        overlap=pick(args.overlap, 32, 8),
        tiny=tiny,
        store_frames=args.store_frames,
        store_frame=(96, 128) if tiny else (2160, 3840),
        store_tile=64 if tiny else 512,
        seed=args.seed,
        judge_every=args.judge_every,
    )
    for name in ('size', 'num_feat', 'num_iter', 'batch', 'repeats', 'threads', 'data_samples', 'tile', 'store_frames'):
        if getattr(s, name) < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(s, name)}')
    if s.warmup < 0 or s.workers < 0 or s.overlap < 0:
        raise ValueError('--warmup, --workers and --overlap must be >= 0')
    if {'step', 'extras', 'data', 'profile'} & set(sections) and not (s.data / 'ldr').is_dir():
        raise FileNotFoundError(f'--data {s.data}: expected the folders {s.data}/ldr and {s.data}/hdr')
    return s


# ======================================================================================================= helpers
def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times cover it (no-op on the CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``, with CUDA synchronisation before and after.

    The CPU time (all threads of this process, ``time.process_time``) leaves out the time the process waited for a
    core while other processes ran; with one thread it is the compute time, the stablest figure on a shared machine.
    With several threads it also counts OpenMP spin-waiting, and on a GPU it means little.
    """
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-accumulates of everything ``fn`` runs, forward and backward (``FlopCounterMode`` FLOP / 2).

    The counter covers matrix products and convolutions (incl. transposed and their backward); element-wise work
    (norms, activations, the perception heuristics) is not counted, for both models alike.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops()) // 2


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def machine_info(device: torch.device) -> dict:
    """CPU model, cores, load average, torch version and threads (and the GPU when used)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        'cpu': cpu,
        'cores': os.cpu_count(),
        'load_avg': [round(v, 2) for v in os.getloadavg()] if hasattr(os, 'getloadavg') else None,
        'python': platform.python_version(),
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'device': str(device),
    }
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def peak_rss_bytes() -> int:
    """Peak resident memory of this process: ``VmHWM`` from /proc/self/status, else ``ru_maxrss``."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == 'darwin' else rss * 1024


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return '-'
    return f'{seconds * 1e3:.1f} ms' if seconds < 1 else f'{seconds:.2f} s'


def fmt_x(value: float | None) -> str:
    return '-' if value is None else f'{value:.2f}x'


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """Plain fixed-width table (first column left-aligned, the others right-aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = '  '.join('-' * w for w in widths)
    print(f'\n{title}')
    print(line)
    print('  '.join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    print(line)
    for r in rows:
        print('  '.join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print(line)


@dataclass
class Goal:
    """One goal of the issue: ``value`` compared with ``target`` (``op`` '>=' or '<='); None = not measured."""

    name: str
    value: float | None
    op: str
    target: float
    unit: str = 'x'
    alt: float | None = None
    alt_label: str = 'CPU time'

    @property
    def passed(self) -> bool | None:
        if self.value is None or not math.isfinite(self.value):
            return None
        return self.value >= self.target if self.op == '>=' else self.value <= self.target

    def as_dict(self) -> dict:
        return {
            'name': self.name,
            'value': self.value,
            'op': self.op,
            'target': self.target,
            'unit': self.unit,
            'passed': self.passed,
            self.alt_label.replace(' ', '_'): self.alt,
        }

    def line(self) -> str:
        verdict = {True: 'PASS', False: 'FAIL', None: 'n/a'}[self.passed]
        value = '-' if self.value is None else f'{self.value:.3g}{self.unit}'
        alt = '' if self.alt is None else f'; by {self.alt_label}: {self.alt:.3g}{self.unit}'
        return f'{verdict:4s}  {self.name}: {value} (goal {self.op} {self.target:g}{self.unit}{alt})'


# ============================================================================================ reference CycleGAN
class ResnetBlock(nn.Module):
    """CycleGAN residual block ``R256``: two 3x3 convs with reflection padding and instance norm, ReLU between."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """The CycleGAN generator for 256x256 images (Zhu et al. 2017, appendix 7.2, after Johnson et al. 2016).

    ``c7s1-ngf, d(2 ngf), d(4 ngf), R(4 ngf) x num_block, u(2 ngf), u(ngf), c7s1-3``: ``c7s1-k`` = 7x7 conv stride 1
    with reflection padding, ``dk`` = 3x3 conv stride 2, ``uk`` = 3x3 fractionally strided conv stride 1/2, each
    followed by instance norm and ReLU; the last conv ends in tanh. Convs keep their biases (instance norm has no
    affine parameters). 11,378,179 parameters at ngf 64, 9 blocks. Weights N(0, 0.02).

    Args:
        num_in_ch: input channels (3).
        num_out_ch: output channels (3).
        ngf: width of the first layer (64).
        num_block: residual blocks (9 for 256x256 images).

    Input ``(N, num_in_ch, H, W)`` in [-1, 1] (H, W multiples of 4); output ``(N, num_out_ch, H, W)`` in (-1, 1).
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, ngf: int = 64, num_block: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(num_in_ch, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(inplace=True),
        ]
        for mult in (1, 2):  # d128, d256
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1),
                nn.InstanceNorm2d(ngf * mult * 2),
                nn.ReLU(inplace=True),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(num_block)]
        for mult in (4, 2):  # u128, u64
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1),
                nn.InstanceNorm2d(ngf * mult // 2),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, num_out_ch, 7), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ReferenceCycleGAN:
    """A CycleGAN training step as the paper describes it, with the same interface as ``CycleHDRModel``.

    G: A->B and F: B->A (:class:`ResnetGenerator`), D_A judges domain A, D_B domain B (70x70 PatchGAN, the project's
    :class:`~llmhdr_basicsr.archs.patchgan_arch.PatchGANDiscriminator`, which is that architecture). Generator step
    with both discriminators frozen: LSGAN ``(D_B(G(a)) - 1)^2 + (D_A(F(b)) - 1)^2``, cycle
    ``lambda (|F(G(a)) - a| + |G(F(b)) - b|)``, identity ``0.5 lambda (|G(b) - b| + |F(a) - a|)``, lambda = 10; then
    each discriminator on real vs a fake from a 50-image history, loss halved. Adam lr 2e-4, betas (0.5, 0.999).

    Domain A = the LDR batch, B = the mu-law HDR batch, both mapped from [0, 1] to [-1, 1] as CycleGAN's data.

    Args:
        ngf: generator width; ndf: discriminator width.
        device: where it runs.
        amp: None or ``'bf16'`` / ``'fp16'`` (CUDA autocast).
        channels_last: convert networks and inputs to channels_last (CUDA only).
    """

    def __init__(
        self, ngf: int, ndf: int, device: torch.device, amp: str | None = None, channels_last: bool = False
    ) -> None:
        from llmhdr_basicsr.archs.patchgan_arch import PatchGANDiscriminator
        from llmhdr_basicsr.models.image_pool import ImagePool

        self.device = device
        self.channels_last = channels_last and device.type == 'cuda'
        self.nets = {
            'g': ResnetGenerator(ngf=ngf),
            'f': ResnetGenerator(ngf=ngf),
            'd_a': PatchGANDiscriminator(num_feat=ndf),
            'd_b': PatchGANDiscriminator(num_feat=ndf),
        }
        for name, net in self.nets.items():
            net = net.to(device).train()
            self.nets[name] = net.to(memory_format=torch.channels_last) if self.channels_last else net
        self.opt_g = torch.optim.Adam(
            itertools.chain(self.nets['g'].parameters(), self.nets['f'].parameters()), lr=2e-4, betas=(0.5, 0.999)
        )
        self.opt_d = torch.optim.Adam(
            itertools.chain(self.nets['d_a'].parameters(), self.nets['d_b'].parameters()), lr=2e-4, betas=(0.5, 0.999)
        )
        self.pool_a, self.pool_b = ImagePool(50), ImagePool(50)
        self.lambda_cycle, self.lambda_identity = 10.0, 0.5
        self.amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp) if device.type == 'cuda' else None
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp_dtype is torch.float16)

    def feed_data(self, data: dict) -> None:
        from llmhdr_basicsr.utils.tonemap import mu_law

        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.real_a = (data['ldr'].to(self.device) * 2 - 1).contiguous(memory_format=fmt)
        self.real_b = (mu_law(data['hdr'].to(self.device)).clamp(0, 1) * 2 - 1).contiguous(memory_format=fmt)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast('cuda', dtype=self.amp_dtype)

    @staticmethod
    def _lsgan(pred: torch.Tensor, real: bool) -> torch.Tensor:
        return F.mse_loss(pred.float(), torch.full_like(pred.float(), 1.0 if real else 0.0))

    def _backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def optimize_parameters(self, current_iter: int) -> None:
        g, f, d_a, d_b = (self.nets[k] for k in ('g', 'f', 'd_a', 'd_b'))
        a, b = self.real_a, self.real_b
        for p in itertools.chain(d_a.parameters(), d_b.parameters()):
            p.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            fake_b, fake_a = g(a), f(b)
            rec_a, rec_b = f(fake_b), g(fake_a)
            idt_b, idt_a = g(b), f(a)
            lam, lam_id = self.lambda_cycle, self.lambda_cycle * self.lambda_identity
            loss_g = (
                self._lsgan(d_b(fake_b), True)
                + self._lsgan(d_a(fake_a), True)
                + lam * (F.l1_loss(rec_a, a) + F.l1_loss(rec_b, b))
                + lam_id * (F.l1_loss(idt_b, b) + F.l1_loss(idt_a, a))
            )
        self._backward(loss_g, self.opt_g)
        for p in itertools.chain(d_a.parameters(), d_b.parameters()):
            p.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            loss_d = 0.5 * (self._lsgan(d_b(b), True) + self._lsgan(d_b(self.pool_b.query(fake_b)), False))
            loss_d = loss_d + 0.5 * (self._lsgan(d_a(a), True) + self._lsgan(d_a(self.pool_a.query(fake_a)), False))
        self._backward(loss_d, self.opt_d)


# ================================================================================================ our model
def model_options(
    s: Settings,
    amp: str | None = None,
    channels_last: bool = False,
    perception: bool = True,
    clip: bool = False,
    sam: bool = False,
) -> dict:
    """``CycleHDRModel`` options: options/llmhdr.yml at the benchmark's width/size, CLIP/SAM off unless asked.

    ``perception=False`` removes both parts of the heuristic perception: the generators' map gating
    (``gating: false``) and the perception loss ``llm_opt``.
    """
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr.yml').read_text())
    work = Path(os.environ.get('TMPDIR', '/tmp')) / 'llmhdr_speed_benchmark'
    opt.update(
        name='speed_benchmark',
        is_train=True,
        dist=False,
        rank=0,
        world_size=1,
        auto_resume=False,
        root_path=str(work),
        num_gpu=1 if s.device.type == 'cuda' else 0,
    )
    opt.pop('val', None)
    opt['path'].update(
        experiments_root=str(work),
        models=str(work / 'models'),
        log=str(work),
        training_states=str(work / 'training_states'),
        visualization=str(work / 'visualization'),
    )
    for key in ('network_g', 'network_g_hdr2ldr'):
        opt[key].update(num_feat=s.num_feat, num_iter=s.num_iter)
        if not perception:
            opt[key]['gating'] = False
    for key in ('network_d_hdr', 'network_d_ldr'):
        opt[key]['num_feat'] = s.num_feat
    train = opt['train']
    train.update(amp=amp, channels_last=channels_last)
    if not perception:
        train.pop('llm_opt', None)
    train.pop('clip_opt', None)
    train.pop('sam_opt', None)
    if clip:
        train['clip_opt'] = {'type': 'CLIPContrastiveLoss', 'loss_weight': 1.0, 'random_weights': True}
        if s.tiny:
            train['clip_opt'].update(arch=TINY_CLIP_ARCH, model_cfg=TINY_CLIP_CFG)
        else:
            train['clip_opt']['arch'] = 'ViT-B-32'
    if sam:
        train['sam_opt'] = {'type': 'SAMSemanticLoss', 'loss_weight': 1.0, 'random_weights': True}
        train['sam_opt'].update({'variant': 'tiny', 'input_size': 64} if s.tiny else {'variant': 'vit_b'})
    return opt


def build_ours(s: Settings, **kwargs):
    """A ``CycleHDRModel`` built from :func:`model_options` (fixed seed, so every variant starts alike)."""
    import logging

    from basicsr.models import build_model

    torch.manual_seed(s.seed)
    logging.getLogger('basicsr').setLevel(logging.WARNING)  # no network summaries in the benchmark output
    return build_model(model_options(s, **kwargs))


def training_batch(s: Settings, draw: int = 0) -> dict:
    """One real unpaired batch: ``--batch`` crops of ``--size`` from the first LDR images of ``--data``.

    ``draw`` seeds the crop windows, flips and HDR partners (``np.random``, which the dataset draws from): every
    ``draw`` gives other crops of the **same** LDR images, as the epochs of a training run do.
    """
    import numpy as np
    from basicsr.data import build_dataset
    from torch.utils.data import DataLoader

    dataset = build_dataset(data_options(s))
    torch.manual_seed(s.seed)
    np.random.seed(s.seed * 1000 + draw)
    batch = next(iter(DataLoader(dataset, batch_size=s.batch, shuffle=False)))
    return batch


def ensure_cache_keys(model, batches: list[dict]) -> tuple[list[dict], str]:
    """Make sure ``model`` finds CLIP/SAM cache keys in ``batches``; add synthetic crop keys if it does not.

    The CLIP/SAM losses cache their fixed LDR side per image under the dataset's whole-image view
    (``ldr_image_key`` + ``ldr_global`` + ``ldr_window``, :mod:`llmhdr_basicsr.utils.ldr_view`), or per crop under
    ``ldr_key``. A batch with neither gets one synthetic key per crop, so that the caches can be warm at all, and
    the sentence returned says so.

    Returns:
        The batches to use and a sentence saying where the keys came from (``'from the dataset'`` when the dataset
        provides the whole-image view).
    """
    model.feed_data(batches[0])
    if getattr(model, 'ldr_global_view', None) is not None:
        return batches, 'from the dataset'
    if not hasattr(model, 'ldr_keys'):
        return batches, 'unknown (the model has neither a whole-image LDR view nor ldr_keys)'

    def keys_of():
        return model.ldr_keys

    if keys_of() is not None:
        return batches, 'from the dataset (per-crop ldr_key only: new crops miss the caches)'
    out = []
    for batch in batches:
        batch = dict(batch)
        batch.setdefault('ldr_key', [f'speed-benchmark-{i}' for i in range(batch['ldr'].shape[0])])
        out.append(batch)
    model.feed_data(out[0])
    if keys_of() is None:
        return batches, 'none (the model found no keys: the LDR side is recomputed every step)'
    return out, 'synthesised by the benchmark (the dataset batch had none)'


def data_options(s: Settings) -> dict:
    return {
        'name': 'speed_benchmark',
        'type': 'UnpairedLDRHDRDataset',
        'phase': 'train',
        'dataroot_ldr': str(s.data / 'ldr'),
        'dataroot_hdr': str(s.data / 'hdr'),
        'crop_size': s.size,
        'use_hflip': True,
        'hdr_norm': 99.5,
        'virtual_camera': True,  # options/llmhdr.yml trains the virtual-camera cycle: its batches carry cam_ldr
        'io_backend': {'type': 'disk'},
    }


# ========================================================================================== timing machinery
@dataclass
class Runner:
    """One configuration to time: ``model.feed_data(batch)`` + ``model.optimize_parameters(it)`` per call.

    ``batch`` may be a list: call ``k`` (from 0) then uses ``batch[k % len(batch)]``, e.g. new crops at every call.
    """

    name: str
    model: object
    batch: dict | list[dict]
    iteration: int = 0

    def __call__(self) -> None:
        batches = self.batch if isinstance(self.batch, list) else [self.batch]
        self.iteration += 1
        self.model.feed_data(batches[(self.iteration - 1) % len(batches)])
        self.model.optimize_parameters(self.iteration)


def measure(runners: list[Runner], s: Settings, count: tuple[str, ...] = ()) -> dict[str, dict]:
    """Interleaved timing: warm-up rounds, then ``repeats`` rounds of every runner in turn.

    The first warm-up call of each runner named in ``count`` runs under the MAC counter (an extra untimed call when
    ``warmup`` is 0). Returns per runner: ``times`` / ``cpu_times`` (wall / process CPU seconds, see :func:`timed`),
    their ``median`` / ``cpu_median``, the ``best`` wall time, ``macs`` (when counted) and, on a GPU,
    ``peak_gpu_bytes`` (``torch.cuda.max_memory_allocated`` over its timed calls).
    """
    out = {r.name: {'times': [], 'cpu_times': []} for r in runners}
    for w in range(max(s.warmup, 1 if count else 0)):
        for r in runners:
            if w == 0 and r.name in count:
                out[r.name]['macs'] = count_macs(r)
            elif w < s.warmup:
                r()
    for _ in range(s.repeats):
        for r in runners:
            if s.device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(s.device)
            wall, cpu = timed(r, s.device)
            out[r.name]['times'].append(wall)
            out[r.name]['cpu_times'].append(cpu)
            if s.device.type == 'cuda':
                peak = torch.cuda.max_memory_allocated(s.device)
                out[r.name]['peak_gpu_bytes'] = max(out[r.name].get('peak_gpu_bytes', 0), peak)
    for res in out.values():
        res['median'] = statistics.median(res['times'])
        res['best'] = min(res['times'])
        res['cpu_median'] = statistics.median(res['cpu_times'])
    return out


# ================================================================================================ sections
def section_step(s: Settings, results: dict) -> tuple[dict, list[Goal]]:
    """Our full training step vs the reference CycleGAN step: times, MACs, achieved GMAC/s (+ GPU variants)."""
    batch = training_batch(s)
    variants = [('fp32', None, False)]
    if s.device.type == 'cuda':
        variants += [('bf16 autocast', 'bf16', False), ('channels_last', None, True)]
    runners = []
    for label, amp, cl in variants:
        runners.append(Runner(f'CycleHDR [{label}]', build_ours(s, amp=amp, channels_last=cl), batch))
        torch.manual_seed(s.seed)
        ref = ReferenceCycleGAN(s.num_feat, s.num_feat, s.device, amp=amp, channels_last=cl)
        runners.append(Runner(f'reference CycleGAN [{label}]', ref, batch))
    res = measure(runners, s, count=tuple(r.name for r in runners if '[fp32]' in r.name))
    for label, *_ in variants:  # MACs do not depend on precision or memory format
        for model in ('CycleHDR', 'reference CycleGAN'):
            res[f'{model} [{label}]']['macs'] = res[f'{model} [fp32]']['macs']
    rows = []
    for name, r in res.items():
        r['gmac_per_step'] = r['macs'] / 1e9
        r['gmac_per_s'] = r['gmac_per_step'] / r['median']
        r['samples_per_s'] = s.batch / r['median']
        r['gmac_per_cpu_s'] = r['gmac_per_step'] / r['cpu_median']
        row = [
            name,
            fmt_time(r['median']),
            ' '.join(fmt_time(t) for t in r['times']),
            f'{r["gmac_per_step"]:.1f}',
            f'{r["gmac_per_s"]:.1f}',
        ]
        if s.device.type == 'cuda':
            row.append(f'{r["peak_gpu_bytes"] / 2**30:.2f}')
        else:
            row += [fmt_time(r['cpu_median']), f'{r["gmac_per_cpu_s"]:.1f}']
        rows.append(row)
    header = ['model', 'median step', 'runs', 'GMAC/step', 'GMAC/s']
    header += ['peak GiB'] if s.device.type == 'cuda' else ['CPU time', 'GMAC/CPU-s']
    print_table(
        f'Training step ({s.size}x{s.size}, batch {s.batch}, num_feat {s.num_feat}, num_iter {s.num_iter}, {s.device})',
        header,
        rows,
    )
    ours, ref = res['CycleHDR [fp32]'], res['reference CycleGAN [fp32]']
    eff = ratio(ours['gmac_per_s'], ref['gmac_per_s'])
    cpu = s.device.type == 'cpu'
    out = {
        'runs': res,
        'ours_step_s': ours['median'],
        'reference_step_s': ref['median'],
        'step_time_ratio': ratio(ours['median'], ref['median']),
        'mac_ratio': ratio(ours['macs'], ref['macs']),
        'gmac_per_s_ratio': eff,
        'gmac_per_s_ratio_best': ratio(ours['macs'] / ours['best'], ref['macs'] / ref['best']),
        'gmac_per_cpu_s_ratio': ratio(ours['gmac_per_cpu_s'], ref['gmac_per_cpu_s']) if cpu else None,
        'train_samples_per_s': ours['samples_per_s'],
    }
    print(
        f'ours / reference: step time {fmt_x(out["step_time_ratio"])}, MACs {fmt_x(out["mac_ratio"])}, '
        f'achieved GMAC/s {fmt_x(eff)} (medians; best runs {fmt_x(out["gmac_per_s_ratio_best"])}'
        + (f'; by CPU time {fmt_x(out["gmac_per_cpu_s_ratio"])})' if cpu else ')')
    )
    if s.device.type == 'cuda':
        for label in ('bf16 autocast', 'channels_last'):
            for model in ('CycleHDR', 'reference CycleGAN'):
                sp = ratio(res[f'{model} [fp32]']['median'], res[f'{model} [{label}]']['median'])
                out[f'{model} speed-up {label}'] = sp
                print(f'{model}: {label} speed-up over fp32 {fmt_x(sp)}')
    return out, [Goal('achieved GMAC/s, ours / reference CycleGAN', eff, '>=', 0.9, alt=out['gmac_per_cpu_s_ratio'])]


def section_extras(s: Settings, results: dict) -> tuple[dict, list[Goal]]:
    """Step time with each optional part relative to the default step (interleaved, caches warm)."""
    from llmhdr_basicsr.perception.heuristic import heuristic_maps

    # One batch per call (warm-up included): new crops/flips of the same LDR images every time, as in training
    batches = [training_batch(s, draw) for draw in range(max(s.warmup, 1) + s.repeats)]
    base = build_ours(s)
    batches, key_source = ensure_cache_keys(base, batches)
    maps_batches = []
    for batch in batches:  # stand-in for VLM answers read from a PerceptionCache: valid maps for every image
        maps_batch = dict(batch)
        maps_batch['ldr_maps'] = heuristic_maps(batch['ldr']).stack()
        maps_batch['ldr_maps_valid'] = torch.ones(batch['ldr'].shape[0])
        maps_batches.append(maps_batch)
    clip_name = 'tiny CLIP' if s.tiny else 'ViT-B-32'
    sam_name = 'tiny SAM 64 px' if s.tiny else 'vit_b, 224 px'
    runners = [
        Runner('default (heuristic perception)', base, batches),
        Runner('perception off (no gating, no L_llm)', build_ours(s, perception=False), batches),
        Runner(f'+ CLIP L_con ({clip_name})', build_ours(s, clip=True), batches),
        Runner(f'+ SAM L_sem ({sam_name})', build_ours(s, sam=True), batches),
        Runner('+ CLIP + SAM', build_ours(s, clip=True, sam=True), batches),
        Runner('cached VLM maps (ldr_maps in batch)', build_ours(s), maps_batches),
    ]
    res = measure(runners, s)
    default = res[runners[0].name]['median']
    off = res[runners[1].name]['median']
    best_default, best_off = res[runners[0].name]['best'], res[runners[1].name]['best']
    cpu_default, cpu_off = res[runners[0].name]['cpu_median'], res[runners[1].name]['cpu_median']
    cpu = s.device.type == 'cpu'
    rows = []
    for r in runners:
        m = res[r.name]['median']
        first = r is runners[0]
        res[r.name]['ratio'] = ratio(m, off if first else default)
        res[r.name]['ratio_best'] = ratio(res[r.name]['best'], best_off if first else best_default)
        res[r.name]['ratio_cpu'] = ratio(res[r.name]['cpu_median'], cpu_off if first else cpu_default) if cpu else None
        against = 'perception off' if first else 'default'
        rows.append(
            [
                r.name,
                fmt_time(m),
                ' '.join(fmt_time(t) for t in res[r.name]['times']),
                f'{fmt_x(res[r.name]["ratio"])} of {against}',
                fmt_x(res[r.name]['ratio_best']),
                fmt_x(res[r.name]['ratio_cpu']),
            ]
        )
    rows[1][3:] = ['(baseline of the first row)', '', '']
    print_table(
        f'Extras: step time relative to the default step ({s.size}x{s.size}, batch {s.batch})',
        ['configuration', 'median step', 'runs', 'ratio of medians', 'of best runs', 'of CPU times'],
        rows,
    )
    crops = {k for b in batches for k in b.get('ldr_key', [])}
    print(
        f'CLIP/SAM cache keys: {key_source}; {len(batches)} calls per configuration, each with new crops of the same '
        f'{s.batch} LDR image(s) ({len(crops)} distinct crops): only the first call may miss.'
    )
    cache_stats = {}
    for r in runners[2:5]:
        for loss in ('clip_opt', 'sam_opt'):
            cri = getattr(r.model, 'losses', {}).get(loss)
            if cri is not None and hasattr(cri, 'cache'):
                looked_up = cri.cache.hits + cri.cache.misses
                stats = {
                    'hits': cri.cache.hits,
                    'misses': cri.cache.misses,
                    'hit_rate': cri.cache.hits / looked_up if looked_up else None,
                    'encoder_calls': cri.encoder_calls,
                    'images_encoded': cri.images_encoded,
                    'ldr_view': getattr(cri, 'last_ldr_view', None),
                }
                cache_stats[f'{r.name} / {loss}'] = stats
                rate = '-' if stats['hit_rate'] is None else f'{100 * stats["hit_rate"]:.0f} %'
                print(
                    f'  {r.name} / {loss} (ldr_view {stats["ldr_view"]}): cache hits {cri.cache.hits}, misses '
                    f'{cri.cache.misses} (hit rate {rate}), encoder calls {cri.encoder_calls}, images encoded '
                    f'{cri.images_encoded}'
                )
    ratios = {r.name: res[r.name]['ratio'] for r in runners}
    ratios_best = {r.name: res[r.name]['ratio_best'] for r in runners}
    ratios_cpu = {r.name: res[r.name]['ratio_cpu'] for r in runners}
    out = {
        'runs': res,
        'cache_keys': key_source,
        'cache_stats': cache_stats,
        'ratios': ratios,
        'ratios_best': ratios_best,
        'ratios_cpu': ratios_cpu,
    }
    goals = [
        Goal('heuristic perception on / off', ratios[runners[0].name], '<=', 1.10, alt=ratios_cpu[runners[0].name]),
        Goal('CLIP + SAM / default step', ratios[runners[4].name], '<=', 1.6, alt=ratios_cpu[runners[4].name]),
        Goal(
            'cached VLM maps / default step (~1.0x)',
            ratios[runners[5].name],
            '<=',
            1.05,
            alt=ratios_cpu[runners[5].name],
        ),
    ]
    return out, goals


class SlowVLMServer:
    """A local OpenAI-style chat server on 127.0.0.1 that answers every request after ``delay`` seconds (``None``:
    never, until :meth:`stop`) with an empty but valid report."""

    REPLY = json.dumps({'choices': [{'message': {'content': '{"artifacts": false, "regions": []}'}}]}).encode()

    def __init__(self, delay: float | None) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get('Content-Length', 0)))
                release.wait(delay)
                if delay is None:
                    return
                self.send_response(200)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(SlowVLMServer.REPLY)))
                self.end_headers()
                self.wfile.write(SlowVLMServer.REPLY)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.httpd.server_address[1]}/v1'

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def section_judge(s: Settings, results: dict) -> tuple[dict, list[Goal]]:
    """Step time with the VLM judge on (servers answering in 2 s, 20 s, never) relative to the judge off."""
    batches = [training_batch(s, draw) for draw in range(max(s.warmup, 1) + s.repeats)]
    servers = {'2 s': SlowVLMServer(2.0), '20 s': SlowVLMServer(20.0), 'never': SlowVLMServer(None)}
    runners = [Runner('judge off', build_ours(s), batches)]
    for name, server in servers.items():
        model = build_ours(s)
        opt = {'base_url': server.url, 'model': 'bench', 'timeout': 60.0, 'retries': 0, 'judge_every': 1}
        from llmhdr_basicsr.perception.judge import VLMJudge

        model.judge = VLMJudge.from_options(opt)
        runners.append(Runner(f'judge on, server answers in {name}', model, batches))
    try:
        res = measure(runners, s)
        counts = {r.name: r.model.judge.stats() if getattr(r.model, 'judge', None) else {} for r in runners}
    finally:
        for r in runners:
            if getattr(r.model, 'judge', None) is not None:
                r.model.judge.close()
        for server in servers.values():
            server.stop()
    off, off_cpu = res[runners[0].name]['median'], res[runners[0].name]['cpu_median']
    rows, ratios, amortised = [], {}, {}
    for r in runners:
        m = res[r.name]['median']
        ratios[r.name] = ratio(m, off)
        amortised[r.name] = None if ratios[r.name] is None else 1 + (ratios[r.name] - 1) / s.judge_every
        rows.append(
            [
                r.name,
                fmt_time(m),
                fmt_x(ratios[r.name]),
                fmt_x(ratio(res[r.name]['cpu_median'], off_cpu) if s.device.type == 'cpu' else None),
                fmt_x(amortised[r.name]),
                ', '.join(f'{k} {v}' for k, v in counts[r.name].items()) or '-',
            ]
        )
    print_table(
        f'Judge: step time with the VLM judge submitting at every step ({s.size}x{s.size}, batch {s.batch})',
        ['configuration', 'median step', 'ratio', 'of CPU times', f'amortised, judge_every {s.judge_every}', 'judge'],
        rows,
    )
    goals = [
        Goal(f'judge on ({name}) amortised / off', amortised[r.name], '<=', 1.05)
        for name, r in zip(servers, runners[1:])
    ]
    return {'runs': res, 'ratios': ratios, 'amortised': amortised, 'counts': counts}, goals


def _make_infer_image(height: int, width: int):
    """A real photo from ``shared/data/ldr`` (or a smooth synthetic image) resized to ``height x width``.

    Returns ``(H, W, 3)`` float32 numpy, display-referred sRGB in [0, 1] (what ``llmhdr-infer`` reads from a file).
    """
    import cv2
    import numpy as np

    photo = DEFAULT_DATA / 'ldr' / 'skimage_rocket.png'
    if photo.is_file():
        from llmhdr_basicsr.utils.hdr_io import read_ldr

        return cv2.resize(read_ldr(str(photo)), (width, height), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([xx / width, yy / height, 0.5 * np.ones_like(xx)], -1)


def infer_network(num_feat: int, num_iter: int, seed: int = 0) -> nn.Module:
    """G_Y of options/llmhdr.yml at ``num_feat``/``num_iter`` with random weights, in eval mode."""
    from basicsr.archs import build_network

    opt = copy.deepcopy(yaml.safe_load((REPO / 'options' / 'llmhdr.yml').read_text())['network_g'])
    opt.update(num_feat=num_feat, num_iter=num_iter)
    torch.manual_seed(seed)
    return build_network(opt).eval()


def make_reconstructor(net: nn.Module, tile: int, overlap: int, device: torch.device):
    """``llmhdr-infer``'s per-image processor (:class:`llmhdr_basicsr.infer.Reconstructor`), LDR->HDR, fp32.

    ``tile`` 0 = the whole image in one call; otherwise :class:`~llmhdr_basicsr.utils.tiling.GlobalStatsTiler` with
    the tool's default global-statistics pass. Calling it maps an ``(H, W, 3)`` sRGB image to linear HDR.
    """
    from llmhdr_basicsr.infer import LoadedNetwork, Reconstructor

    loaded = LoadedNetwork(net=net, arch_type=type(net).__name__, source='speed benchmark (random weights)')
    return Reconstructor(loaded, 'ldr2hdr', device, tile=tile, overlap=overlap)


def infer_once(spec: dict) -> dict:
    """One timed inference run as described by ``spec`` (height, width, tile, overlap, num_feat, num_iter, device,
    threads, seed), after a warm-up call on a 64x64 image. Returns seconds, megapixels, MP/s and this process's peak
    resident memory (``peak_rss_bytes``; ``rss_after_setup_bytes`` = the peak before the timed run)."""
    device = torch.device(spec['device'])
    torch.set_num_threads(int(spec['threads']))
    net = infer_network(spec['num_feat'], spec['num_iter'], spec.get('seed', 0))
    rec = make_reconstructor(net, spec['tile'], spec['overlap'], device)
    rec(_make_infer_image(64, 64))  # allocator / kernel selection warm-up on a tiny image
    img = _make_infer_image(spec['height'], spec['width'])
    rss_before = peak_rss_bytes()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    seconds, cpu_seconds = timed(lambda: rec(img), device)
    mp = spec['height'] * spec['width'] / 1e6
    out = {
        **spec,
        'seconds': seconds,
        'megapixels': mp,
        'mp_per_s': mp / seconds,
        'cpu_seconds': cpu_seconds,
        'mp_per_cpu_s': mp / cpu_seconds,
        'peak_rss_bytes': peak_rss_bytes(),
        'rss_after_setup_bytes': rss_before,
        'path': rec.describe(),
    }
    if device.type == 'cuda':
        out['peak_gpu_bytes'] = torch.cuda.max_memory_allocated(device)
    return out


def run_infer_child(spec: dict) -> dict:
    """:func:`infer_once` in a fresh interpreter (its own peak-memory counter); raises with its output on failure."""
    cmd = [sys.executable, str(Path(__file__).resolve()), '--infer-child', json.dumps(spec)]
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONUNBUFFERED': '1'}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO), check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG) :])
    raise RuntimeError(f'infer child failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')


def section_infer(s: Settings, results: dict) -> tuple[dict, list[Goal]]:
    """MP/s untiled (1 MP) and tiled (4K), each run in a child process with its own peak-memory counter.

    The untiled run brackets the tiled one (before and after, MP/s averaged), so that a change of machine load
    during the long 4K run does not bias the ratio.
    """
    common = {
        'num_feat': s.num_feat,
        'num_iter': s.num_iter,
        'device': str(s.device),
        'threads': s.threads,
        'seed': s.seed,
    }
    untiled_spec = {**common, 'height': s.infer_untiled[0], 'width': s.infer_untiled[1], 'tile': 0, 'overlap': 0}
    tiled_spec = {**common, 'height': s.infer_tiled[0], 'width': s.infer_tiled[1], 'tile': s.tile, 'overlap': s.overlap}
    before = run_infer_child(untiled_spec)
    tiled = run_infer_child(tiled_spec)
    after = run_infer_child(untiled_spec)
    untiled = {
        **after,
        'mp_per_s': (before['mp_per_s'] + after['mp_per_s']) / 2,
        'seconds': (before['seconds'] + after['seconds']) / 2,
        'mp_per_cpu_s': (before['mp_per_cpu_s'] + after['mp_per_cpu_s']) / 2,
        'peak_rss_bytes': max(before['peak_rss_bytes'], after['peak_rss_bytes']),
    }
    rows = []
    runs = (('untiled (before)', before), (f'tiled {s.tile}/{s.overlap}', tiled), ('untiled (after)', after))
    for label, r in runs:
        rows.append(
            [
                label,
                f'{r["width"]}x{r["height"]}',
                f'{r["megapixels"]:.2f}',
                fmt_time(r['seconds']),
                f'{r["mp_per_s"]:.4f}',
                f'{r["mp_per_cpu_s"]:.4f}',
                f'{r["peak_rss_bytes"] / 1e9:.2f}',
                f'{r["rss_after_setup_bytes"] / 1e9:.2f}',
            ]
        )
    print_table(
        f'Inference, G_Y num_feat {s.num_feat} num_iter {s.num_iter}, fp32, {s.device} '
        '(child processes, in this order)',
        ['run', 'size', 'MP', 'time', 'MP/s', 'MP/CPU-s', 'peak RSS GB', 'RSS before the run GB'],
        rows,
    )
    rel = ratio(tiled['mp_per_s'], untiled['mp_per_s'])
    rel_cpu = ratio(tiled['mp_per_cpu_s'], untiled['mp_per_cpu_s']) if s.device.type == 'cpu' else None
    print(f'tiled run: {tiled["path"]}')
    print(f'tiled / untiled throughput (untiled = mean of the two runs): {fmt_x(rel)} (by CPU time {fmt_x(rel_cpu)})')
    out = {
        'untiled': untiled,
        'untiled_runs': [before, after],
        'tiled': tiled,
        'tiled_over_untiled': rel,
        'tiled_over_untiled_cpu': rel_cpu,
    }
    goals = [
        Goal(
            f'tiled {tiled["width"]}x{tiled["height"]} / untiled {after["width"]}x{after["height"]} throughput',
            rel,
            '>=',
            0.75,
            alt=rel_cpu,
        )
    ]
    if s.device.type == 'cpu':
        goals.append(
            Goal(
                f'peak RSS of the tiled {s.infer_tiled[1]}x{s.infer_tiled[0]} run',
                tiled['peak_rss_bytes'] / 1e9,
                '<=',
                3.0,
                ' GB',
            )
        )
    return out, goals


def time_loader(dataset, n: int, workers: int) -> tuple[float, float]:
    """``(seconds for n samples, start-up seconds)`` of a batch-1 DataLoader over ``dataset`` with ``workers``."""
    from torch.utils.data import DataLoader

    order = [i % len(dataset) for i in range(n + workers + 1)]  # first batches absorb the worker start-up
    loader = DataLoader(
        dataset,
        batch_size=1,
        sampler=order,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )
    it = iter(loader)
    t_start = time.perf_counter()
    for _ in range(workers + 1):
        next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    seconds = time.perf_counter() - t0
    del it, loader
    return seconds, t0 - t_start


def section_data(s: Settings, results: dict) -> tuple[dict, list[Goal]]:
    """Samples/s of ``UnpairedLDRHDRDataset`` through a DataLoader with ``--workers`` workers."""
    from basicsr.data import build_dataset

    dataset = build_dataset(data_options(s))
    n = s.data_samples
    seconds, startup = time_loader(dataset, n, s.workers)
    rate = n / seconds
    step_rate = (results.get('step') or {}).get('train_samples_per_s')
    rel = ratio(rate, step_rate)
    print_table(
        f'Input pipeline (UnpairedLDRHDRDataset, {s.size}x{s.size} crops, {s.workers} workers, {s.data})',
        ['measure', 'value'],
        [
            ['samples timed', str(n)],
            ['samples/s', f'{rate:.2f}'],
            ['start-up (first batches)', fmt_time(startup)],
            ['training step samples/s', '-' if step_rate is None else f'{step_rate:.4f}'],
            ['loader / training rate', fmt_x(rel)],
        ],
    )
    out = {'samples': n, 'seconds': seconds, 'samples_per_s': rate, 'startup_s': startup, 'over_train_rate': rel}
    return out, [Goal('data loader / training step sample rate', rel, '>=', 5.0)]


def _synth_frames(folder: Path, count: int, height: int, width: int) -> tuple[Path, Path]:
    """``count`` HDR frames (float32 EXR, a smooth scene times log-normal texture, a bright sky band) and as many
    8-bit PNG photos of them in ``folder/{hdr,ldr}``."""
    import numpy as np

    from llmhdr_basicsr.utils import camera as cam
    from llmhdr_basicsr.utils.hdr_io import write_hdr, write_ldr

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        base = 0.2 + 0.15 * np.sin(xx / (37.0 + i)) * np.cos(yy / 23.0)
        texture = np.exp(rng.normal(0.0, 0.5, size=(height, width, 1)).astype(np.float32))
        hdr = base[..., None] * texture * np.array([1.0, 0.9, 0.8], np.float32)
        hdr[: height // 4] *= 30.0  # sky
        write_hdr(str(folder / 'hdr' / f'frame{i}.exr'), hdr)
        write_ldr(str(folder / 'ldr' / f'photo{i}.png'), cam.synthesize_ldr(hdr, rng)[0])
    return folder / 'hdr', folder / 'ldr'


def section_store(s: Settings, results: dict) -> tuple[dict, list[Goal]]:
    """Samples/s of ``UnpairedLDRHDRDataset`` on large frames: read whole vs from a training store."""
    import tempfile

    from basicsr.data import build_dataset

    from llmhdr_basicsr.data.training_store import build_store

    h, w = s.store_frame
    out: dict = {'frames': s.store_frames, 'frame_size': [h, w], 'tile': s.store_tile, 'runs': {}}
    with tempfile.TemporaryDirectory(prefix='speed_store_') as tmp:
        hdr_dir, ldr_dir = _synth_frames(Path(tmp), s.store_frames, h, w)
        stores = {}
        t0 = time.perf_counter()
        for kind, folder in (('hdr', hdr_dir), ('ldr', ldr_dir)):
            stores[kind] = Path(tmp) / f'{kind}_store'
            inputs = sorted(str(p) for p in folder.iterdir())
            build_store(inputs, str(stores[kind]), crop_size=s.store_tile, step=s.store_tile)
        out['build_s_per_frame'] = (time.perf_counter() - t0) / s.store_frames
        rows = []
        for label, ldr, hdr in (('whole frames', ldr_dir, hdr_dir), ('store', stores['ldr'], stores['hdr'])):
            opt = {**data_options(s), 'dataroot_ldr': str(ldr), 'dataroot_hdr': str(hdr), 'name': f'speed_{label}'}
            dataset = build_dataset(opt)
            # whole 4K frames take ~1 s a sample: fewer of them
            n = s.data_samples if label == 'store' or s.tiny else max(4, s.data_samples // 6)
            for workers in (0, 1):
                seconds, startup = time_loader(dataset, n, workers)
                rate = n / seconds
                out['runs'][f'{label}, {workers} workers'] = {'samples': n, 'samples_per_s': rate, 'startup_s': startup}
                rows.append([label, str(workers), str(n), f'{rate:.2f}', fmt_time(startup)])
    rate = {name: run['samples_per_s'] for name, run in out['runs'].items()}
    for workers in (0, 1):
        store_rate, whole_rate = rate[f'store, {workers} workers'], rate[f'whole frames, {workers} workers']
        out[f'store_over_whole_{workers}w'] = ratio(store_rate, whole_rate)
    print_table(
        f'Training store (UnpairedLDRHDRDataset, {s.size}x{s.size} crops, virtual camera, whole-image views, '
        f'{s.store_frames} frames {w}x{h}, tiles {s.store_tile} px; store built in '
        f'{fmt_time(out["build_s_per_frame"])} per frame)',
        ['source', 'workers', 'samples', 'samples/s', 'start-up'],
        rows,
    )
    print(f'store / whole frames: {fmt_x(out["store_over_whole_0w"])} (0 workers), '
          f'{fmt_x(out["store_over_whole_1w"])} (1 worker)')  # fmt: skip
    return out, [Goal('store / whole-frame loader rate (0 workers)', out['store_over_whole_0w'], '>=', 5.0)]


#: Operator categories of the profile section: (label, substrings of the aten op name), first match wins.
PROFILE_CATEGORIES = (
    ('convolution', ('conv',)),
    ('matmul / linear', ('mm', 'linear', 'matmul', 'attention')),
    ('norm (instance/batch/layer)', ('norm',)),
    ('padding', ('pad',)),
    ('pool / resample', ('pool', 'upsample', 'interp')),
    ('optimizer', ('_foreach', 'adam')),
    ('copies / cat / alloc', ('copy', 'cat', 'clone', 'contiguous', 'empty', 'zero', 'fill', 'stack', 'index')),
)


def op_category(op: str) -> str:
    """The :data:`PROFILE_CATEGORIES` label of an aten operator name, else ``'element-wise / other'``."""
    name = op.removeprefix('aten::')
    for label, keys in PROFILE_CATEGORIES:
        if any(k in name for k in keys):
            return label
    return 'element-wise / other'


def _self_time(event, device: torch.device) -> float:
    """Self time of a profiler event in microseconds: device (kernel) time on a GPU, CPU time otherwise."""
    if device.type == 'cuda':
        return float(getattr(event, 'self_device_time_total', getattr(event, 'self_cuda_time_total', 0.0)))
    return float(event.self_cpu_time_total)


def section_profile(s: Settings, results: dict) -> tuple[dict, list[Goal]]:
    """``torch.profiler`` breakdown of one step of each model (after a warm-up step).

    Self time of the ``aten::`` operators (CPU time on the CPU, kernel time on a GPU) by :data:`PROFILE_CATEGORIES`,
    the number of aten calls per step, and the most expensive operators with their input shapes.
    """
    from torch.profiler import ProfilerActivity, profile

    batch = training_batch(s)
    torch.manual_seed(s.seed)
    runners = [
        Runner('CycleHDR', build_ours(s), batch),
        Runner('reference CycleGAN', ReferenceCycleGAN(s.num_feat, s.num_feat, s.device), batch),
    ]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == 'cuda' else [])
    kind = 'GPU kernel' if s.device.type == 'cuda' else 'CPU'
    out = {}
    for r in runners:
        r()  # warm-up
        t0 = time.perf_counter()
        with profile(activities=activities, record_shapes=True) as prof:
            r()
            sync(s.device)
        wall = time.perf_counter() - t0
        leaf = [e for e in prof.key_averages() if e.key.startswith('aten::')]
        total_self = sum(_self_time(e, s.device) for e in leaf) or 1.0
        calls = sum(e.count for e in leaf)
        cats: dict[str, list[float]] = {}
        for e in leaf:
            c = cats.setdefault(op_category(e.key), [0.0, 0])
            c[0] += _self_time(e, s.device)
            c[1] += e.count
        rows = [
            [k, f'{v[0] / 1e6:.2f} s', f'{100 * v[0] / total_self:.1f} %', str(v[1])]
            for k, v in sorted(cats.items(), key=lambda kv: -kv[1][0])
        ]
        print_table(
            f'Profile of one {r.name} step ({wall:.1f} s wall with the profiler): self {kind} time by category, '
            f'{calls} aten calls',
            ['category', 'self time', 'share', 'calls'],
            rows,
        )
        by_shape = sorted(
            (e for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith('aten::')),
            key=lambda e: -_self_time(e, s.device),
        )[:15]
        rows = [
            [
                e.key,
                f'{_self_time(e, s.device) / 1e3:.0f} ms',
                f'{100 * _self_time(e, s.device) / total_self:.1f} %',
                str(e.count),
                str(e.input_shapes)[:90],
            ]
            for e in by_shape
        ]
        print_table(
            f'{r.name}: top operators by self {kind} time (with input shapes)',
            ['op', 'self', 'share', 'calls', 'input shapes'],
            rows,
        )
        out[r.name] = {
            'wall_s': wall,
            'aten_calls': calls,
            'self_s': total_self / 1e6,
            'categories': {k: {'self_s': v[0] / 1e6, 'calls': v[1]} for k, v in cats.items()},
            'top': [
                {'op': e.key, 'self_s': _self_time(e, s.device) / 1e6, 'calls': e.count, 'shapes': str(e.input_shapes)}
                for e in by_shape
            ],
        }
    return out, []


SECTION_FUNCS = {
    'step': section_step,
    'extras': section_extras,
    'judge': section_judge,
    'infer': section_infer,
    'data': section_data,
    'store': section_store,
    'profile': section_profile,
}


# ==================================================================================================== main
def summary_line(results: dict, goals: list[Goal]) -> str:
    parts = []
    if 'step' in results:
        st = results['step']
        parts.append(
            f'step ours {fmt_time(st["ours_step_s"])} vs ref {fmt_time(st["reference_step_s"])}, '
            f'MACs {fmt_x(st["mac_ratio"])}, GMAC/s {fmt_x(st["gmac_per_s_ratio"])}'
            + (f' (CPU time {fmt_x(st["gmac_per_cpu_s_ratio"])})' if st.get('gmac_per_cpu_s_ratio') else '')
        )
    if 'extras' in results:
        r = list(results['extras']['ratios'].values())
        parts.append(
            f'extras perception {fmt_x(r[0])}, CLIP {fmt_x(r[2])}, SAM {fmt_x(r[3])}, both {fmt_x(r[4])}, '
            f'cached maps {fmt_x(r[5])}'
        )
        rc = list(results['extras'].get('ratios_cpu', {}).values())
        if rc and rc[0] is not None:
            parts[-1] += f' (CPU time: perception {fmt_x(rc[0])}, both {fmt_x(rc[4])}, cached maps {fmt_x(rc[5])})'
    if 'judge' in results:
        am = list(results['judge']['amortised'].values())[1:]
        parts.append('judge amortised ' + ', '.join(fmt_x(a) for a in am) + ' (2 s, 20 s, never)')
    if 'infer' in results:
        inf = results['infer']
        parts.append(
            f'infer {inf["untiled"]["mp_per_s"]:.3g} MP/s untiled, {inf["tiled"]["mp_per_s"]:.3g} MP/s '
            f'tiled ({fmt_x(inf["tiled_over_untiled"])}), 4K peak {inf["tiled"]["peak_rss_bytes"] / 1e9:.2f} GB'
        )
    if 'data' in results:
        parts.append(
            f'data {results["data"]["samples_per_s"]:.1f} samples/s ({fmt_x(results["data"]["over_train_rate"])}'
            ' of training)'
        )
    if 'store' in results:
        st = results['store']
        parts.append(f'store {fmt_x(st["store_over_whole_0w"])} the whole-frame loader rate (0 workers), '
                     f'{fmt_x(st["store_over_whole_1w"])} (1 worker)')  # fmt: skip
    n_pass = sum(g.passed is True for g in goals)
    n_fail = sum(g.passed is False for g in goals)
    return f'SUMMARY goals {n_pass} pass / {n_fail} fail; ' + '; '.join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.infer_child is not None:
        print(CHILD_TAG + json.dumps(infer_once(json.loads(args.infer_child))), flush=True)
        return 0
    try:
        s = settings_from_args(args)
    except (ValueError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(s.seed)
    import basicsr  # noqa: F401  (the start-up hook registers the plugin)

    import llmhdr_basicsr  # noqa: F401  (registrations, in case the hook is disabled)

    info = machine_info(s.device)
    print('Speed benchmark: ' + ', '.join(f'{k} {v}' for k, v in info.items()))
    print(
        f'settings: sections {",".join(s.sections)}, size {s.size}, batch {s.batch}, num_feat {s.num_feat}, '
        f'num_iter {s.num_iter}, warm-up {s.warmup}, repeats {s.repeats} (median, interleaved), seed {s.seed}'
        + (', TINY' if s.tiny else '')
    )
    if s.device.type == 'cpu':
        print('note: CPU times on a shared machine: compare the ratios, not the absolute times.')
        load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0
        if s.threads > 1 and load > 0.75 * (os.cpu_count() or 1):
            print(
                f'warning: load average {load:.1f} on {os.cpu_count()} cores with {s.threads} threads: OpenMP '
                'barriers wait for descheduled threads and inflate small operators; --threads 1 gives stabler ratios'
            )
    results: dict = {}
    goals: list[Goal] = []
    t_all = time.perf_counter()
    for name in SECTIONS:
        if name not in s.sections:
            continue
        t0 = time.perf_counter()
        results[name], section_goals = SECTION_FUNCS[name](s, results)
        goals += section_goals
        print(
            f'[{name} section: {time.perf_counter() - t0:.0f} s, load average now '
            f'{", ".join(f"{v:.2f}" for v in os.getloadavg())}]'
        )
    info['load_avg_end'] = [round(v, 2) for v in os.getloadavg()]
    info['peak_rss_main_bytes'] = peak_rss_bytes()
    info['wall_s'] = time.perf_counter() - t_all
    print('\nGoals')
    for g in goals:
        print('  ' + g.line())
    line = summary_line(results, goals)
    print('\n' + line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            'machine': info,
            'settings': {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(s).items()},
            'results': results,
            'goals': [g.as_dict() for g in goals],
            'summary': line,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
