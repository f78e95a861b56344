"""Baselines benchmark: CycleHDR (unpaired), the peer HDR networks and a BasicSR architecture (supervised on pairs)
and every classical operator, trained and scored under the protocol of ``benchmarks/quality.py``, in one table.

Protocol (printed with the results):

1. The scene split, the evaluation sets (``test``: LDRs from the training camera family, ``test_ood``: from cameras
   outside it; ``--eval val`` for the validation sets), the metrics and their scale alignment are those of
   ``benchmarks/quality.py`` (same ``--work`` folder, so its split and cached runs are shared).
2. **Pairs.** The supervised methods train with ``PairedHDRModel`` on pairs made from the *HDR half* of the training
   scenes only (``train_hdr``, the scenes CycleHDR sees as HDR): each scene photographed ``--pairs-per-scene`` times by
   random cameras of the training family (the cameras CycleHDR's virtual camera draws: gamma / sigmoid / logistic
   curves, JPEG, white-balance errors). They see no scene and no camera that CycleHDR does not; CycleHDR sees the
   unpaired LDR half in addition, and never a pair of real photographs. The table says which method used pairs.
3. **Same budget.** Every learned method trains ``--iters`` iterations at the same crop, batch, Adam learning rate and
   schedule (constant, then linear decay to 0 from ``--lr-decay-from``), at each seed of ``--seeds``. CycleHDR is the
   ``recipe`` variant of ``quality.py`` (what ``options/llmhdr_cpu.yml`` trains) at the same budget (its stored
   runs are reused).
4. Columns: the quality metrics (mean ± sd over seeds), parameters of the LDR -> HDR network, GMAC per megapixel of
   one inference (``FlopCounterMode``: convolutions and matrix products, measured at ``--size``² and divided by its
   megapixels), inference seconds per megapixel (median of 3 at ``--size``², ``--threads`` threads, after a warm-up,
   all methods timed side by side in this process) and training iterations.

Usage::

    python benchmarks/baselines.py --iters 600 --seeds 0 1 2 --jobs 2 --markdown baselines.md
    python benchmarks/baselines.py --methods ExpandNet,HDRCNN --seeds 0 --eval val
    python benchmarks/baselines.py --smoke --data DIR --work DIR     # tiny widths, 2 iterations (tests)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def _load_quality():
    spec = importlib.util.spec_from_file_location('quality', REPO / 'benchmarks' / 'quality.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules['quality'] = module
    spec.loader.exec_module(module)
    return module


q = _load_quality()

#: The supervised methods: name -> (network_g options, their changes at smoke size). Paper defaults, except that
#: the outputs bounded by a final sigmoid / tanh are scaled to reach 16x white, the model's HDR range (headroom 4):
#: at the papers' scale (white = 1) they could not represent a highlight at all under this protocol, and that
#: SingleHDR's residual head starts at zero: with PyTorch's default initialisation its residual of amplitude 15
#: starts at several units, and the pixels it pushes below zero sit behind the output ReLU without gradient.
SUPERVISED: dict[str, tuple[dict, dict]] = {
    'ExpandNet': ({'type': 'ExpandNet', 'out_scale': 16.0}, {'num_feat': 4, 'global_size': 32}),
    'HDRCNN': ({'type': 'HDRCNN'}, {'width': 4}),
    'FHDR': ({'type': 'FHDR', 'out_scale': 16.0}, {'num_feat': 4, 'num_iter': 2}),
    'SingleHDR(W) U-Net': (
        {'type': 'SingleHDRUNet', 'residual_scale': 15.0, 'zero_init_residual': True},
        {'num_feat': 4},
    ),
    'RRDBNet (BasicSR, scale 1)': (
        {
            'type': 'RRDBNet',
            'num_in_ch': 3,
            'num_out_ch': 3,
            'scale': 1,
            'num_feat': 32,
            'num_block': 4,
            'num_grow_ch': 16,
        },
        {'num_feat': 4, 'num_block': 1, 'num_grow_ch': 4},
    ),  # fmt: skip
    'FeedbackUNet (supervised)': ({}, {}),  # CycleHDR's G_Y, trained on the pairs: filled in from the recipe
}
CYCLEHDR = 'CycleHDR (unpaired)'
RECIPE = 'recipe'  # the quality.py variant of the CycleHDR row and of the supervised FeedbackUNet's architecture
PAD = 16  # inputs are reflect-padded to a multiple of this (RRDBNet at scale 1 needs 4) and cropped back


# ----------------------------------------------------------------------------------------------------------- data
def make_pairs(split: Path, out: Path, per_scene: int, seed: int) -> tuple[Path, Path]:
    """``out/lq`` + ``out/gt``: every HDR of ``split/train_hdr`` photographed ``per_scene`` times by random cameras of
    the training family (the split's camera widened as CycleHDR's virtual camera is); reused when already made."""
    lq, gt = out / 'lq', out / 'gt'
    stamp = out / '.pairs'
    key = f'{per_scene}|{seed}|{sorted(p.name for p in (split / "train_hdr").iterdir())}'
    if stamp.is_file() and stamp.read_text() == key:
        return lq, gt
    prep = q.load_prepare_data()
    record = json.loads((split / 'split.json').read_text())
    camera = {k: tuple(v) if isinstance(v, list) else v for k, v in record['camera'].items()}
    camera.update(q.WIDE_CAMERA)
    hdrs = sorted(str(p) for p in (split / 'train_hdr').iterdir() if p.suffix.lower() in ('.hdr', '.exr', '.pfm'))
    for folder in (lq, gt):
        if folder.exists():
            for f in folder.iterdir():
                f.unlink()
    prep.run_synth(hdrs, str(lq), seed, per_scene, camera, str(gt), 'copy', str(out / 'cameras.json'))
    stamp.write_text(key)
    return lq, gt


# ------------------------------------------------------------------------------------------------------ options
def network_options(args, name: str) -> dict:
    if name == 'FeedbackUNet (supervised)':
        recipe = q.training_options(q.parse_args(quality_argv(args)), Path(args.work) / 'split', q.VARIANTS[RECIPE][1])
        return copy.deepcopy(recipe['network_g'])
    net, smoke = SUPERVISED[name]
    return {**net, **(smoke if args.smoke else {})}


def supervised_options(args, name: str, pairs: tuple[Path, Path]) -> dict:
    """``PairedHDRModel`` options of one supervised method on the pairs, at the benchmark's budget."""
    lq, gt = pairs
    return {
        'name': 'baselines', 'model_type': 'PairedHDRModel', 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'train': {
            'name': 'pairs', 'type': 'PairedLDRHDRDataset', 'phase': 'train', 'dataroot_lq': str(lq),
            'dataroot_gt': str(gt), 'io_backend': {'type': 'disk'}, 'crop_size': args.crop, 'use_hflip': True,
            'cache_images': True, 'batch_size_per_gpu': args.batch, 'hdr_norm': args.hdr_norm,
        }},
        'network_g': network_options(args, name),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'optim_g': {'type': 'Adam', 'lr': args.lr, 'betas': [0.9, 0.999]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [10**9], 'gamma': 1.0},  # train() sets the lr
            'total_iter': args.iters, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
    }  # fmt: skip


def quality_argv(args) -> list[str]:
    """The ``quality.py`` command line of the CycleHDR row: the same data, work folder, budget and size."""
    argv = ['--data', args.data, '--work', args.work, '--iters', str(args.iters), '--crop', str(args.crop),
            '--batch', str(args.batch), '--lr', str(args.lr), '--lr-decay-from', str(args.lr_decay_from),
            '--hdr-norm', str(args.hdr_norm), '--seeds', *map(str, args.seeds)]  # fmt: skip
    if args.smoke:
        argv += ['--num-feat', '4', '--no-cvvdp']
    elif args.no_cvvdp:
        argv += ['--no-cvvdp']
    return argv


# ------------------------------------------------------------------------------------------------------ runs
def method_slug(name: str) -> str:
    return ''.join(c if c.isalnum() else '_' for c in name).strip('_').lower()


def run_path(work: Path, name: str, seed: int) -> Path:
    return work / 'baseline_runs' / f'{method_slug(name)}_seed{seed}.json'


def budget_of(args, seed: int) -> dict:
    return {'iters': args.iters, 'decay_from': args.lr_decay_from, 'seed': seed}


def cached_supervised(args, name: str, seed: int, pairs) -> dict | None:
    path = run_path(Path(args.work), name, seed)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    key = q.run_key(supervised_options(args, name, pairs), budget_of(args, seed))
    return record if record.get('key') == key else None


def padded(fn):
    """``fn`` on the input reflect-padded to a multiple of :data:`PAD`, cropped back."""

    def predict(ldr: torch.Tensor) -> torch.Tensor:
        h, w = ldr.shape[-2:]
        x = F.pad(ldr, (0, -w % PAD, 0, -h % PAD), mode='reflect')
        return fn(x)[..., :h, :w]

    return predict


def paired_predictor(model):
    """``ldr (1, 3, H, W) display-referred [0, 1] -> linear HDR (1, 3, H, W)`` of a trained ``PairedHDRModel``."""

    def predict(ldr: torch.Tensor) -> torch.Tensor:
        model.feed_data({'lq': ldr})
        model.test()
        return model.get_current_visuals()['result']

    return padded(predict)


def train_supervised(args, name: str, seed: int, pairs, names: tuple[str, ...]) -> dict:
    """Train one supervised method at one seed, score it on every evaluation set, store the record."""
    opt = supervised_options(args, name, pairs)
    key = q.run_key(opt, budget_of(args, seed))
    print(f'[{name} seed {seed}] training ({key})', flush=True)
    full = q.finalize_options(opt, Path(args.work) / 'baseline_runs' / f'{method_slug(name)}_seed{seed}')
    full['manual_seed'] = seed
    model, summary = q.train(full, 0, seed, max_iters=args.iters, decay_from=args.lr_decay_from)
    summary.pop('snapshots')
    model.save(epoch=0, current_iter=-1)  # <run>/experiments/baselines/models/net_g_latest.pth: llmhdr-infer loads it
    split = Path(args.work) / 'split'
    scores = {s: q.score(paired_predictor(model), q.eval_pairs(split, s), names) for s in q.EVAL_GROUPS['all']}
    record = {'method': name, 'seed': seed, 'key': key, 'train': summary, 'scores': scores, 'options': opt}
    path = run_path(Path(args.work), name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(path)
    return record


def cyclehdr_records(args, names: tuple[str, ...], variant: str = 'recipe') -> list[dict]:
    """The ``variant`` runs of ``quality.py`` at this budget (trained here when not stored yet), one per seed."""
    qargs = q.parse_args(quality_argv(args))
    split = Path(args.work) / 'split'
    overrides = q.VARIANTS[variant][1]
    out = []
    for seed in args.seeds:
        rec = q.cached_run(qargs, split, Path(args.work), variant, seed, overrides)
        out.append(rec or q.run_one(qargs, split, Path(args.work), variant, seed, overrides, names))
    return out


# -------------------------------------------------------------------------------------------------- cost columns
def cost(net: torch.nn.Module, predict, size: int) -> dict:
    """Parameters of ``net``, GMAC per megapixel and seconds per megapixel of ``predict`` at ``size``²."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    mp = size * size / 1e6
    with torch.no_grad():
        predict(x)  # warm-up
        with FlopCounterMode(display=False) as counter:
            predict(x)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            predict(x)
            times.append(time.perf_counter() - t0)
    return {'params': sum(p.numel() for p in net.parameters()), 'gmac_per_mp': counter.get_total_flops() / 2e9 / mp,
            's_per_mp': statistics.median(times) / mp}  # fmt: skip


def rebuild(args, name: str):
    """A fresh (untrained) network of one learned method and its predictor, for the cost columns."""
    from basicsr.models import build_model

    import llmhdr_basicsr  # noqa: F401

    if name == CYCLEHDR:
        opt = q.training_options(q.parse_args(quality_argv(args)), Path(args.work) / 'split', {})
    else:
        opt = supervised_options(args, name, (Path(args.work) / 'pairs' / 'lq', Path(args.work) / 'pairs' / 'gt'))
    opt = q.finalize_options(opt, Path(args.work) / 'cost')
    opt['is_train'] = False
    opt.pop('datasets', None)
    model = build_model(opt)
    if name == CYCLEHDR:
        return model.net_g, padded(q.model_predictor(model))
    return model.net_g, paired_predictor(model)


# ------------------------------------------------------------------------------------------------------- report
def build_table(records: dict[str, list[dict]], baselines: dict, set_name: str, names, costs: dict) -> dict:
    rows = {}
    for name, recs in records.items():
        per_seed = [q.mean_scores(r['scores'][set_name], names) for r in recs]
        rows[name] = {m: q.seed_stats([p[m] for p in per_seed]) for m in names}
        rows[name]['pairs'] = name != CYCLEHDR
        rows[name]['iters'] = int(np.median([r['train']['iterations'] for r in recs]))
        rows[name].update(costs.get(name, {}))
    for name, per_image in baselines[set_name].items():
        rows[name] = {m: (q.mean_scores(per_image, names)[m], None, 1) for m in names}
        rows[name].update(pairs=False, iters=0, **costs.get(name, {}))
    return rows


UNITS = {'pu21_psnr': 'PU21-PSNR', 'pu21_ssim': 'PU21-SSIM', 'psnr_mu': 'PSNR-μ', 'cvvdp': 'JOD',
         'pu21_psnr_clip': 'clip PU21', 'log2_ratio_clip': 'clip log2'}  # fmt: skip


def cells(row: dict, names) -> list[str]:
    out = [q.fmt(*row[m]) for m in names]
    params = row.get('params')
    out.append('yes' if row['pairs'] else 'no')
    out.append(f'{params / 1e6:.3f}M' if params else '0')
    out.append(f'{row["gmac_per_mp"]:.1f}' if row.get('gmac_per_mp') is not None else '-')
    out.append(f'{row["s_per_mp"]:.3f}' if 's_per_mp' in row else '-')
    out.append(str(row['iters']) if row['iters'] else '-')
    return out


EXTRA = ('pairs', 'params', 'GMAC/MP', 's/MP', 'iters')


def print_table(set_name: str, rows: dict, names) -> None:
    print(f'\n{set_name}: {q.SETS[set_name][2]}')
    head = f'{"method":<28}' + ''.join(f'{UNITS.get(m, m):>16}' for m in names) + ''.join(f'{e:>9}' for e in EXTRA)
    print(head)
    print('-' * len(head))
    for name, row in rows.items():
        c = cells(row, names)
        print(
            f'{name:<28}' + ''.join(f'{v:>16}' for v in c[: len(names)]) + ''.join(f'{v:>9}' for v in c[len(names) :])
        )


def markdown(tables: dict, names) -> str:
    out = []
    for set_name, rows in tables.items():
        out.append(f'**{set_name}** ({q.SETS[set_name][2]})\n')
        out.append('| method | ' + ' | '.join([UNITS.get(m, m) for m in names] + list(EXTRA)) + ' |')
        out.append('|---|' + '---|' * (len(names) + len(EXTRA)))
        for name, row in rows.items():
            out.append(f'| {name} | ' + ' | '.join(cells(row, names)) + ' |')
        out.append('')
    return '\n'.join(out)


# --------------------------------------------------------------------------------------------------------- main
def method_key(name: str) -> str:
    """The short, comma-free name of a method for ``--methods``: ``'RRDBNet (BasicSR, scale 1)'`` -> ``'rrdbnet'``."""
    return name.split(' ')[0].split('(')[0].lower()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=str(REPO.parent / 'shared' / 'data'), help='folder with ldr/ and hdr/')
    p.add_argument('--work', default=str(REPO / 'datasets' / 'quality_benchmark'), help='quality.py work folder')
    p.add_argument(
        '--methods',
        default='all',
        help=f'comma-separated short names or "all": {", ".join(map(method_key, SUPERVISED))}, cyclehdr',
    )
    p.add_argument('--eval', choices=('test', 'val'), default='test', help='the two test sets, or the two val sets')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--iters', type=int, default=600, help='training iterations of every learned method')
    p.add_argument('--pairs-per-scene', type=int, default=8, help='camera renderings of each HDR training scene')
    p.add_argument('--crop', type=int, default=96)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--lr-decay-from', type=float, default=0.5)
    p.add_argument('--hdr-norm', type=float, default=95.0)
    p.add_argument('--size', type=int, default=512, help='square input size of the cost columns')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--jobs', type=int, default=1, help='supervised runs trained side by side (one thread each)')
    p.add_argument('--no-cvvdp', action='store_true', help='skip ColorVideoVDP')
    p.add_argument('--smoke', action='store_true', help='tiny widths (and --iters 2 unless given): a quick check')
    p.add_argument('--run', help=argparse.SUPPRESS)  # METHOD:SEED, a child of --jobs
    p.add_argument('--json', help='write all numbers to this JSON file')
    p.add_argument('--markdown', help='also write the tables as Markdown to this file')
    args = p.parse_args(argv)
    if args.smoke and '--iters' not in argv:
        args.iters = 2
    if args.smoke:
        args.size, args.no_cvvdp = min(args.size, 64), True
    known = [*SUPERVISED, 'cyclehdr']
    keys = {method_key(m): m for m in known}
    tokens = [m.strip() for m in args.methods.split(',')] if args.methods != 'all' else known
    unknown = [t for t in tokens if t not in known and t.lower() not in keys]
    if unknown:
        p.error(f'--methods: unknown {unknown}; choose from {sorted(keys)} (or the full names) or "all"')
    args.method_list = [t if t in known else keys[t.lower()] for t in tokens]
    args.data, args.work = str(Path(args.data).resolve()), str(Path(args.work).resolve())
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    q.CODE = q.code_digest()
    torch.set_num_threads(args.threads)
    names = tuple(m for m in q.METRICS if not (args.no_cvvdp and m == 'cvvdp'))
    work = Path(args.work)
    record = q.make_split(Path(args.data), work / 'split', 0)
    from basicsr.utils.registry import ARCH_REGISTRY

    import llmhdr_basicsr  # noqa: F401

    pairs = make_pairs(work / 'split', work / 'pairs', args.pairs_per_scene, 0)
    supervised = [m for m in args.method_list if m != 'cyclehdr']
    if args.run:
        name, seed = args.run.rsplit(':', 1)
        train_supervised(args, name, int(seed), pairs, names)
        return 0

    command = 'python benchmarks/baselines.py ' + ' '.join(shlex.quote(a) for a in argv)
    load = ', '.join(f'{v:.1f}' for v in os.getloadavg())
    print(f'command: {command}\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
          f'torch {torch.__version__}, {args.threads} threads, load average {load}')  # fmt: skip
    n_pairs = len(list(pairs[0].iterdir()))
    print(f'supervised pairs: {n_pairs} ({args.pairs_per_scene} training-family renderings of each of the '
          f'{len(record["scenes"]["train_hdr"])} HDR training scenes); every learned method: {args.iters} iterations, '
          f'crop {args.crop}, batch {args.batch}, seeds {args.seeds}')  # fmt: skip
    todo = [(m, s) for s in args.seeds for m in supervised if cached_supervised(args, m, s, pairs) is None]
    print(f'{len(supervised) * len(args.seeds) - len(todo)} supervised run(s) reused, {len(todo)} to train', flush=True)
    if args.jobs > 1 and todo:
        base = [a for i, a in enumerate(argv) if not (a.startswith('--jobs') or (i and argv[i - 1] == '--jobs'))]

        def child(job):
            m, s = job
            log = work / 'baseline_runs' / f'{method_slug(m)}_seed{s}.log'
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, *base, '--threads', '1', '--run', f'{m}:{s}']
            with open(log, 'w') as f:
                return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode

        with ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(child, todo))
        if any(codes):
            print(f'error: {sum(map(bool, codes))} run(s) failed; see {work / "baseline_runs"}/*.log', file=sys.stderr)
            return 2
    else:
        for m, s in todo:
            train_supervised(args, m, s, pairs, names)
    records = {}
    if 'cyclehdr' in args.method_list:
        records[CYCLEHDR] = cyclehdr_records(args, names)
    for m in supervised:
        records[m] = [cached_supervised(args, m, s, pairs) for s in args.seeds]

    sets = q.EVAL_GROUPS[args.eval]
    baselines = q.baseline_scores(work, work / 'split', sets, names)
    torch.set_num_threads(args.threads)
    costs = {}
    for name in records:  # side by side in this process, same threads
        net, predict = rebuild(args, name)
        costs[name] = cost(net, predict, args.size)
    for name, (arch, kwargs) in q.BASELINES.items():
        net = ARCH_REGISTRY.get(arch)(out_domain='linear', **kwargs).eval()
        costs[name] = cost(net, net, args.size)
    tables = {s: build_table(records, baselines, s, names, costs) for s in sets}
    for s, rows in tables.items():
        print_table(s, rows, names)
    print('\npairs: trained on LDR/HDR pairs (supervised); params of the LDR -> HDR network; GMAC/MP and s/MP of one '
          f'inference at {args.size}x{args.size}, {args.threads} thread(s)')  # fmt: skip
    if args.markdown:
        Path(args.markdown).write_text(markdown(tables, names))
    if args.json:
        Path(args.json).write_text(json.dumps({
            'command': command, 'split': record, 'seeds': args.seeds, 'tables': tables,
            'runs': {k: [{'seed': r['seed'], 'train': r['train'], 'scores': r['scores']} for r in recs]
                     for k, recs in records.items()},
        }, indent=1, default=str))  # fmt: skip
    return 0


if __name__ == '__main__':
    sys.exit(main())
