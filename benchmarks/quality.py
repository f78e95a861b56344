"""Quality benchmark: train the unpaired CycleHDR model for a fixed wall-clock budget, then score it on held-out real
HDR scenes next to every classical baseline, with the project's one metric implementation.

Protocol (printed with the results, so anyone can reproduce them):

1. Split ``--data`` (default ``../shared/data``: LDR photos + real HDR scenes) with ``scripts/prepare_data.py
   example``: a quarter of the HDR scenes is held out as a paired test set (LDR synthesised with seeded random camera
   curves and exposures, ``llmhdr_basicsr.utils.camera``); of the rest, half the scenes give the HDR training set and
   the other half give synthesised LDR inputs, added to the real LDR photos — LDR and HDR training sets never show
   the same scene. ``--test-ldr DIR --test-gt DIR`` replace the generated test set by any paired folder.
2. Train ``CycleHDRModel`` (all losses that need no external weights: adversarial, cycle, identity (weight 0 by
   default), perception, and the virtual-camera cycle on the HDR half; generators with the learned camera-curve base)
   for ``--budget-min`` minutes of wall-clock time on this machine (or ``--iters`` iterations), at a width and crop
   that fit the budget. The learning rate is constant for the first half of the budget, then decays linearly to 0
   (``--lr-decay-from``), so the end state does not depend on where the budget cuts training.
3. Reconstruct every test LDR with G_Y (full image) and with every registered classical baseline, and score all of
   them with :func:`llmhdr_basicsr.metrics.hdr_metric.compute_hdr_metrics` (the code behind ``llmhdr-eval`` and the
   registered metrics; relative HDR aligned by the geometric-mean luminance gain, PU21/ColorVideoVDP at
   1000 cd/m² for the GT's 99.9th luminance percentile).

Usage::

    python benchmarks/quality.py                          # default 20-minute budget, seed 0
    python benchmarks/quality.py --budget-min 2 --json q.json
    python benchmarks/quality.py --snapshot-min 4         # + a convergence table (PU21-PSNR every 4 minutes)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

BASELINES = {  # name -> (arch type, kwargs): every registered classical operator, output in linear HDR
    'linearize (sRGB)': ('LinearizeITMO', {}),
    'Akyuz 2007': ('AkyuzITMO', {}),
    'Masia 2009': ('MasiaITMO', {'variant': '2009'}),
    'Masia 2017': ('MasiaITMO', {'variant': '2017'}),
    'Kovaleski-Oliveira 2014': ('KovaleskiOliveiraITMO', {}),
}
METRICS = ('pu21_psnr', 'cvvdp', 'pu21_ssim', 'psnr_mu', 'log_psnr')


def load_prepare_data():
    spec = importlib.util.spec_from_file_location('prepare_data', REPO / 'scripts' / 'prepare_data.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules['prepare_data'] = module
    spec.loader.exec_module(module)
    return module


def make_split(data: Path, out: Path, seed: int) -> dict:
    """Run ``prepare_data.py example`` into ``out`` (reused when the same seed already built it)."""
    record_file = out / 'split.json'
    stamp = out / '.benchmark_seed'
    if stamp.is_file() and stamp.read_text() == f'{seed}|{data}':
        return json.loads(record_file.read_text()) if record_file.is_file() else {}
    prep = load_prepare_data()
    code = prep.main(['example', '--data', str(data), '--out', str(out), '--seed', str(seed), '--overwrite'])
    if code != 0:
        raise RuntimeError(f'prepare_data.py example failed with exit code {code}')
    stamp.write_text(f'{seed}|{data}')
    return json.loads(record_file.read_text()) if record_file.is_file() else {}


def training_options(args, split: Path, work: Path) -> dict:
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    opt['name'] = 'quality_benchmark'
    train = opt['datasets']['train']
    train.update(
        dataroot_ldr=str(split / 'train_ldr'), dataroot_hdr=str(split / 'train_hdr'), crop_size=args.crop,
        batch_size_per_gpu=args.batch, cache_images=True, phase='train', hdr_exposure_aug=None, hdr_norm=args.hdr_norm,
    )  # fmt: skip
    for key in ('network_g', 'network_g_hdr2ldr'):
        opt[key].update(num_feat=args.num_feat, num_iter=args.num_iter, norm=args.norm, crf_basis=bool(args.crf_basis))
    for key in ('network_d_hdr', 'network_d_ldr'):
        opt[key].update(num_feat=args.num_feat)
    t = opt['train']
    t['optim_g']['lr'] = t['optim_d']['lr'] = args.lr
    t['scheduler'] = {'type': 'MultiStepLR', 'milestones': [10**9], 'gamma': 1.0}
    t['cycle_opt']['loss_weight'] = args.w_cycle
    t['identity_opt']['loss_weight'] = args.w_identity
    t['llm_opt']['loss_weight'] = args.w_llm
    t['gan_opt']['loss_weight'] = args.w_gan
    if args.w_camera > 0:  # virtual-camera cycle: the HDR crops photographed with random camera curves
        t['camera_opt'] = {'type': 'L1Loss', 'loss_weight': args.w_camera, 'reduction': 'mean'}
        train['virtual_camera'] = True
    else:
        t.pop('camera_opt', None)
        train['virtual_camera'] = None
    if args.ema > 0:
        t['ema_decay'] = args.ema
    opt.pop('val', None)
    opt['datasets'].pop('val', None)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False, root_path=str(work))
    exp = work / 'experiments' / opt['name']
    opt['path'].update(
        experiments_root=str(exp), models=str(exp / 'models'), training_states=str(exp / 'training_states'),
        log=str(exp), visualization=str(exp / 'visualization'),
    )  # fmt: skip
    return opt


def train(opt: dict, budget_s: float, seed: int, *, max_iters: int = 0, decay_from: float = 0.5,
          snapshot_s: float = 0.0, log_every: int = 200):  # fmt: skip
    """Train until the wall-clock budget (or ``max_iters`` iterations, when > 0) is spent.

    The learning rate is constant until ``decay_from`` of the budget, then decays linearly to 0 at its end (CycleGAN's
    schedule, ``LinearDecayLR``, over the elapsed fraction of the budget), so the generators settle instead of
    stopping wherever the budget happens to cut them (``decay_from`` 1: constant). With ``snapshot_s`` > 0 the
    generator (and its EMA) is copied every ``snapshot_s`` seconds of training, for the convergence table.
    Returns the model and a summary dict (with ``snapshots``: list of {iter, seconds, params, params_ema}).
    """
    from basicsr.data import build_dataset
    from basicsr.models import build_model
    from torch.utils.data import DataLoader

    import llmhdr_basicsr  # noqa: F401
    from llmhdr_basicsr.models.lr_scheduler import linear_decay_factor

    torch.manual_seed(seed)
    np.random.seed(seed)
    import random

    random.seed(seed)
    dataset = build_dataset(opt['datasets']['train'])
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset, batch_size=opt['datasets']['train']['batch_size_per_gpu'], shuffle=True, drop_last=True,
        num_workers=0, generator=generator,
    )  # fmt: skip
    model = build_model(copy.deepcopy(opt))
    init_lr = model._get_init_lr()
    start = time.perf_counter()
    it, history, snapshots = 0, [], []

    def progress() -> float:
        return it / max_iters if max_iters > 0 else (time.perf_counter() - start) / budget_s

    while progress() < 1:
        for batch in loader:
            factor = linear_decay_factor(progress(), decay_from)
            model._set_lr([[lr * factor for lr in group] for group in init_lr])
            it += 1
            model.feed_data(batch)
            model.optimize_parameters(it)
            elapsed = time.perf_counter() - start
            if it % log_every == 0:
                logs = {k: round(v, 4) for k, v in model.get_current_log().items() if k.startswith('l_')}
                history.append({'iter': it, 'seconds': round(elapsed, 1), 'lr_factor': round(factor, 4), **logs})
                print(f'  iter {it:6d}  {elapsed / 60:5.1f} min  {it / elapsed:5.2f} it/s  lr x{factor:.3f}  '
                      + json.dumps(logs))  # fmt: skip
            if snapshot_s > 0 and elapsed >= snapshot_s * (len(snapshots) + 1):
                ema = getattr(model, 'net_g_ema', None)
                params_ema = copy.deepcopy(ema.state_dict()) if ema is not None else None
                snapshots.append({'iter': it, 'seconds': round(elapsed, 1), 'params_ema': params_ema,
                                  'params': copy.deepcopy(model.net_g.state_dict())})  # fmt: skip
            if progress() >= 1:
                break
    elapsed = time.perf_counter() - start
    return model, {'iterations': it, 'seconds': round(elapsed, 1), 'iters_per_s': round(it / elapsed, 3),
                   'history': history, 'snapshots': snapshots}  # fmt: skip


def test_pairs(test_ldr: Path, test_gt: Path) -> list[tuple[Path, Path]]:
    from llmhdr_basicsr.utils.hdr_io import HDR_EXTENSIONS, IMAGE_EXTENSIONS, list_images

    gts = {p.stem: p for p in map(Path, list_images(str(test_gt), HDR_EXTENSIONS))}
    pairs = [(Path(p), gts[Path(p).stem]) for p in list_images(str(test_ldr), IMAGE_EXTENSIONS) if Path(p).stem in gts]
    if not pairs:
        raise FileNotFoundError(f'no LDR/HDR pairs with matching file stems in {test_ldr} and {test_gt}')
    return pairs


@torch.no_grad()
def score(predict, pairs, metric_opts: dict, names: list[str] | None = None) -> dict:
    """Per-image metrics (``names``, default all of METRICS) of ``predict(ldr (1,3,H,W) display-referred [0, 1])
    -> linear HDR (1,3,H,W)`` on every pair."""
    from llmhdr_basicsr.metrics.hdr_metric import compute_hdr_metrics
    from llmhdr_basicsr.utils.hdr_io import read_hdr, read_ldr

    rows = {}
    for ldr_path, gt_path in pairs:
        ldr = torch.from_numpy(read_ldr(str(ldr_path))).permute(2, 0, 1)[None]
        pred = predict(ldr)[0].permute(1, 2, 0).float().numpy()
        gt = read_hdr(str(gt_path))
        rows[ldr_path.stem] = compute_hdr_metrics(pred, gt, names=list(names or METRICS), **metric_opts)
    return rows


def baseline_predictor(arch_type: str, kwargs: dict):
    from basicsr.utils.registry import ARCH_REGISTRY

    net = ARCH_REGISTRY.get(arch_type)(out_domain='linear', **kwargs).eval()
    return lambda ldr: net(ldr)


def model_predictor(model, net=None):
    """G_Y of ``model`` (its EMA when there is one, or ``net``) as ``ldr -> linear HDR``."""
    net = net if net is not None else getattr(model, 'net_g_ema', model.net_g)

    def predict(ldr):
        net.eval()
        out = net(ldr)
        net.train()
        return model.to_linear(out[-1] if isinstance(out, list) else out)

    return predict


def convergence(model, snapshots: list[dict], pairs) -> list[dict]:
    """Mean PU21-PSNR / PSNR-mu of each training snapshot of G_Y (and of its EMA), printed as a table."""
    net = copy.deepcopy(model.net_g)
    names = ['pu21_psnr', 'psnr_mu']
    rows = []
    print(f'\nconvergence on the test set:\n{"iter":>7} {"min":>6} {"G pu21":>9} {"G psnr_mu":>10} {"EMA pu21":>9}')
    for snap in snapshots:
        row = {'iter': snap['iter'], 'seconds': snap['seconds']}
        for key, label in (('params', 'g'), ('params_ema', 'ema')):
            if snap[key] is None:
                continue
            net.load_state_dict(snap[key])
            per_image = score(model_predictor(model, net), pairs, {}, names)
            row.update({f'{label}_{m}': float(np.mean([r[m] for r in per_image.values()])) for m in names})
        rows.append(row)
        print(f'{row["iter"]:7d} {row["seconds"] / 60:6.1f} {row["g_pu21_psnr"]:9.3f} {row["g_psnr_mu"]:10.3f} '
              + (f'{row["ema_pu21_psnr"]:9.3f}' if 'ema_pu21_psnr' in row else f'{"-":>9}'))  # fmt: skip
    return rows


def summarise(rows: dict) -> dict:
    return {m: float(np.mean([r[m] for r in rows.values()])) for m in METRICS}


def print_table(results: dict[str, dict]) -> None:
    head = f'{"method":<28}' + ''.join(f'{m:>12}' for m in METRICS)
    print(head)
    print('-' * len(head))
    for name, summary in results.items():
        print(f'{name:<28}' + ''.join(f'{summary[m]:12.3f}' for m in METRICS))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=str(REPO.parent / 'shared' / 'data'), help='folder with ldr/ and hdr/')
    p.add_argument('--work', default=str(REPO / 'datasets' / 'quality_benchmark'), help='split + experiment folder')
    p.add_argument('--test-ldr', help='paired test folder: LDR inputs (default: the held-out split)')
    p.add_argument('--test-gt', help='paired test folder: HDR ground truth matched by file stem')
    p.add_argument('--budget-min', type=float, default=20.0, help='training wall-clock budget in minutes')
    p.add_argument('--iters', type=int, default=0, help='fixed iteration count instead of the budget (repeats exactly)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--num-feat', type=int, default=8)
    p.add_argument('--num-iter', type=int, default=2)
    p.add_argument('--crop', type=int, default=96)
    p.add_argument('--crf-basis', type=int, default=1, help='1: generators learn a per-image camera curve base')
    p.add_argument('--norm', default='instance', choices=('instance', 'none'), help='generator normalisation')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--hdr-norm', type=float, default=95.0, help='HDR luminance percentile mapped to diffuse white')
    p.add_argument('--w-gan', type=float, default=0.01)
    p.add_argument('--w-cycle', type=float, default=0.1)
    p.add_argument('--w-identity', type=float, default=0.0)
    p.add_argument('--w-llm', type=float, default=0.1)
    p.add_argument('--w-camera', type=float, default=10.0, help='virtual-camera cycle weight (0 = off)')
    p.add_argument('--ema', type=float, default=0.0, help='EMA decay of G_Y, evaluated instead of G_Y (0 = off)')
    p.add_argument('--lr-decay-from', type=float, default=0.5, help='budget fraction where lr starts its decay to 0')
    p.add_argument('--snapshot-min', type=float, default=0.0, help='also score G_Y every this many training minutes')
    p.add_argument('--no-cvvdp', action='store_true', help='skip ColorVideoVDP (the slowest metric)')
    p.add_argument('--baselines-only', action='store_true', help='no training: score the classical operators only')
    p.add_argument('--json', help='write all numbers to this JSON file')
    args = p.parse_args(argv)
    if not 0.0 <= args.lr_decay_from <= 1.0:
        p.error(f'--lr-decay-from must lie in [0, 1], got {args.lr_decay_from}')
    torch.set_num_threads(args.threads)
    global METRICS
    if args.no_cvvdp:
        METRICS = tuple(m for m in METRICS if m != 'cvvdp')

    work = Path(args.work).resolve()
    split = work / 'split'
    command = 'python benchmarks/quality.py ' + ' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f'command: {command}\nseed: {args.seed}\nmachine: {platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads')  # fmt: skip
    record = make_split(Path(args.data).resolve(), split, args.seed)
    test_ldr = Path(args.test_ldr) if args.test_ldr else split / 'test_ldr'
    test_gt = Path(args.test_gt) if args.test_gt else split / 'test_gt'
    pairs = test_pairs(test_ldr, test_gt)
    print(f'split: {split} (train_ldr {len(os.listdir(split / "train_ldr"))}, train_hdr '
          f'{len(os.listdir(split / "train_hdr"))}); test: {len(pairs)} pairs from {test_ldr}')  # fmt: skip

    if args.baselines_only:
        results = {
            name: summarise(score(baseline_predictor(arch, kw), pairs, {})) for name, (arch, kw) in BASELINES.items()
        }
        print()
        print_table(results)
        if args.json:
            Path(args.json).write_text(
                json.dumps({'command': command, 'seed': args.seed, 'summary': results}, indent=1)
            )
        return 0

    opt = training_options(args, split, work)
    print(f'training for {args.budget_min} min: num_feat {args.num_feat}, num_iter {args.num_iter}, crop {args.crop}, '
          f'batch {args.batch}, lr {args.lr}, hdr_norm {args.hdr_norm}, weights gan {args.w_gan} cycle {args.w_cycle} '
          f'identity {args.w_identity} llm {args.w_llm} camera {args.w_camera}, ema {args.ema}')  # fmt: skip
    model, train_summary = train(opt, args.budget_min * 60, args.seed, max_iters=args.iters,
                                 decay_from=args.lr_decay_from, snapshot_s=args.snapshot_min * 60)  # fmt: skip
    print(f'trained {train_summary["iterations"]} iterations in {train_summary["seconds"]} s')
    snapshots = train_summary.pop('snapshots')
    if snapshots:
        train_summary['convergence'] = convergence(model, snapshots, pairs)
    model.save(epoch=0, current_iter=-1)  # models/net_g_latest.pth etc., usable with llmhdr-infer -opt <its options>
    (Path(opt['path']['experiments_root']) / 'options.yml').write_text(yaml.safe_dump(opt, sort_keys=False))

    metric_opts = {}
    results, per_image = {}, {}
    per_image['CycleHDR (ours)'] = score(model_predictor(model), pairs, metric_opts)
    for name, (arch, kwargs) in BASELINES.items():
        per_image[name] = score(baseline_predictor(arch, kwargs), pairs, metric_opts)
    for name, rows in per_image.items():
        results[name] = summarise(rows)
    print()
    print_table(results)
    ours = results['CycleHDR (ours)']
    best = {m: max(v[m] for k, v in results.items() if k != 'CycleHDR (ours)') for m in METRICS}
    wins = {m: ours[m] > best[m] for m in ('pu21_psnr', 'cvvdp') if m in METRICS}
    verdict = 'beats' if all(wins.values()) else 'does NOT beat'
    detail = ', '.join(f'{m} ({ours[m]:.3f} vs best {best[m]:.3f})' for m in wins)
    print(f'\nsummary: after {args.budget_min:g} min ({train_summary["iterations"]} it), CycleHDR {verdict} every '
          f'classical baseline on {detail}')  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({
            'command': command, 'seed': args.seed, 'split': record, 'train': train_summary,
            'summary': results, 'per_image': per_image, 'wins': wins,
        }, indent=1, default=str))  # fmt: skip
    return 0 if all(wins.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
