"""Quality benchmark: train CycleHDR on unpaired data, then score it on held-out real HDR scenes whose LDR inputs come
from the training camera family AND from cameras outside it, next to every classical operator, at several seeds.

Protocol (printed with the results, so anyone can reproduce them):

1. Split ``--data`` (default ``../shared/data``: LDR photos + real HDR scenes) by scene with ``scripts/prepare_data.py
   example`` (``--split-seed``, default 0; the split is the same for every training seed): a paired **test** set and a
   paired **validation** set (disjoint scenes, each drawn from every source in proportion), and of the rest half the
   scenes give the HDR training set and the other half LDR inputs, added to the real LDR photos — no scene is in two
   parts. The LDR inputs of ``test`` / ``val`` are synthesised with the training camera family
   (:mod:`llmhdr_basicsr.utils.camera`: gamma / sigmoid curves); those of ``test_ood`` / ``val_ood`` show the same
   scenes rendered by cameras *outside* that family (:mod:`llmhdr_basicsr.utils.renderings`: filmic, ACES, Drago and
   Reinhard tone curves, contrast and saturation boosts, sensor noise, JPEG), which training never sees.
2. Train ``CycleHDRModel`` (every loss that needs no external weights) for ``--iters`` iterations (or ``--budget-min``
   minutes) per seed and variant. A variant (``--variants``) is the full method (``full``: every part) with one part
   switched off or changed (the ablation), the CPU recipe chosen on validation (``recipe``: the settings of
   ``options/llmhdr_cpu.yml``), or a plain CycleGAN with the same generator; ``--set key=value`` changes any option.
3. Reconstruct every LDR of the chosen sets (``--eval``: ``test`` = ``test`` + ``test_ood``, ``val`` = ``val`` +
   ``val_ood``, or both) with G_Y (full image) and with every registered classical operator, and score all of them
   with :func:`llmhdr_basicsr.metrics.hdr_metric.compute_hdr_metrics` (the code behind ``llmhdr-eval`` and the
   registered metrics; relative HDR aligned by the geometric-mean luminance gain, PU21/ColorVideoVDP at
   1000 cd/m² for the GT's 99.9th luminance percentile; ``pu21_psnr_clip`` / ``log2_ratio_clip`` over the pixels the
   LDR input clipped).

Tune on ``--eval val``; report ``--eval test``. Every finished run is kept as ``<work>/runs/<variant>_seed<k>.json``
(with its options) and reused by later calls with the same options, so a long ablation can be interrupted, resumed
and split over several processes (``--jobs N`` runs N trainings side by side with one thread each).

Usage::

    python benchmarks/quality.py                                  # the full method, seeds 0 1 2, test sets
    python benchmarks/quality.py --eval val --seeds 0             # tuning: validation sets
    python benchmarks/quality.py --variants ablation --jobs 2     # the ablation table
    python benchmarks/quality.py --set train.llm_opt.loss_weight=0.3 --eval val --tag llm03
    python benchmarks/quality.py --variants recipe --eval val --stops-oracle   # stored runs, constant expansion stops
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
METRICS = ('pu21_psnr', 'cvvdp', 'pu21_psnr_clip', 'log2_ratio_clip', 'pu21_ssim', 'psnr_mu')
GOAL_METRICS = ('pu21_psnr', 'cvvdp')
#: Evaluation sets: name -> (LDR folder, GT folder) inside the split, and what they are.
SETS = {
    'test': ('test_ldr', 'test_gt', 'test scenes, LDRs from the training camera family'),
    'test_ood': ('test_ood_ldr', 'test_gt', 'test scenes, LDRs from cameras outside the training family'),
    'val': ('val_ldr', 'val_gt', 'validation scenes, training camera family'),
    'val_ood': ('val_ood_ldr', 'val_gt', 'validation scenes, cameras outside the training family'),
}
EVAL_GROUPS = {'test': ('test', 'test_ood'), 'val': ('val', 'val_ood'), 'all': ('val', 'val_ood', 'test', 'test_ood')}
DELETE = object()  # an override value that removes the option (switches a loss or dataset option off)
#: The virtual camera of the recipe: the gamma / sigmoid family of the in-family test sets widened by logistic
#: S-curves (toe and shoulder), JPEG and white-balance errors; never the out-of-family test renderings.
WIDE_CAMERA = {'logistic_prob': 0.4, 'jpeg_prob': 0.3, 'wb_jitter': 0.05}

#: The virtual camera of ``wide_shoulder``: more and deeper logistic highlight shoulders than the recipe's.
SHOULDER_CAMERA = {**WIDE_CAMERA, 'logistic_prob': 0.6, 'logistic_pivot': [-6.0, -0.5], 'logistic_slope': [0.4, 1.2]}
#: The recipe's shape (no adversarial terms, T = 1); the recipe before the shoulder basis; the recipe.
CPU_SHAPE = {'train.gan_opt': DELETE, 'network_g.num_iter': 1, 'network_g_hdr2ldr.num_iter': 1}
EXPANSION_S3 = {**CPU_SHAPE, 'network_g.highlight_expansion': {'init_stops': 3.0}}
RECIPE = {**EXPANSION_S3, 'network_g.crf_basis': 'shoulders'}

#: The ablation: the full method (``full``) with one part off or changed, and a plain CycleGAN with the same
#: generator and budget. Each entry: (description, {dotted option: value or DELETE}).
VARIANTS: dict[str, tuple[str, dict]] = {
    'full': ('every part (the reference of the ablation)', {}),
    'no_perception': ('without the perception loss L_heu', {'train.llm_opt': DELETE}),
    'no_gating': ('without the perception-map gates', {'network_g.gating': False, 'network_g_hdr2ldr.gating': False}),
    'no_feedback': ('one decoder pass (T = 1): no feedback loop',
                    {'network_g.num_iter': 1, 'network_g_hdr2ldr.num_iter': 1}),
    'no_cycle': ('without the cycle terms', {'train.cycle_opt': DELETE}),
    'with_identity': ('with the identity terms (CycleGAN: 0.5 x the cycle weight)',
                      {'train.identity_opt.loss_weight': 'half_cycle'}),
    'no_adversarial': ('without the adversarial terms', {'train.gan_opt': DELETE}),
    'no_camera': ('without the virtual-camera cycle (white from the dataset percentile)',
                  {'train.camera_opt': DELETE, 'datasets.train.virtual_camera': DELETE}),
    'narrow_camera': ('virtual camera of the in-family test sets only (gamma / sigmoid, no JPEG)',
                      {'datasets.train.virtual_camera': True}),
    'no_curve': ('fixed sRGB base instead of the learned camera curve',
                 {'network_g.crf_basis': False, 'network_g_hdr2ldr.crf_basis': False}),
    'recipe': ('the CPU recipe chosen on validation (options/llmhdr_cpu.yml): full without the adversarial terms, '
               'T = 1, learned highlight expansion of the base starting at 3 stops, G_Y\'s camera-curve basis with '
               'two deeper highlight shoulders', RECIPE),
    'region_stops': ('the recipe with the expansion stops as a map: a per-region term of the bottleneck added to the '
                     'image\'s stops (highlight_expansion.region)',
                     {**RECIPE, 'network_g.highlight_expansion': {'init_stops': 3.0, 'region': True}}),
    'stops_rate30': ('the recipe with the expansion stops learning 3x faster (highlight_expansion.rate 30 instead of '
                     '10)', {**RECIPE, 'network_g.highlight_expansion': {'init_stops': 3.0, 'rate': 30.0}}),
    'wide_clip': ('the recipe with a virtual camera that clips up to 35 % of the frame (2-16 % in the recipe)',
                  {**RECIPE, 'datasets.train.virtual_camera': {**WIDE_CAMERA, 'clip_range': [0.02, 0.35]}}),
    'expansion_s3': ('the recipe with the default camera-curve basis (the recipe before the shoulder basis was '
                     'measured)', EXPANSION_S3),
    'no_expansion': ('the recipe without the learned highlight expansion (the recipe before it was measured)',
                     CPU_SHAPE),
    'expansion_s2': ('the recipe with the expansion starting at 2 stops for a fully saturated region (the recipe '
                     'before this was measured)', {**CPU_SHAPE, 'network_g.highlight_expansion': True}),
    'expansion_t200': ('expansion_s2 with the expansion map thresholded at 200/255 instead of 250/255 (also lifts '
                       'highlights a camera rolled off below clipping)',
                       {**CPU_SHAPE, 'network_g.highlight_expansion': {'threshold': 200 / 255}}),
    'camera_mse': ('expansion_s3 with the camera cycle as a squared error (its optimum the mean of what a clipped '
                   'region may hold, as PU21-PSNR scores it) instead of L1 (the median)',
                   {**EXPANSION_S3,
                    'train.camera_opt': {'type': 'MSELoss', 'loss_weight': 100.0, 'reduction': 'mean'}}),
    'wide_shoulder': ('expansion_s3 with more and stronger highlight shoulders in the virtual camera (logistic curves '
                      'with probability 0.6, pivot 0.5-6 stops below white, slope 0.4-1.2 per stop)',
                      {**EXPANSION_S3, 'datasets.train.virtual_camera': SHOULDER_CAMERA}),
    'wide_shoulder_basis': ('the recipe (shoulder basis) with the camera of wide_shoulder',
                            {**RECIPE, 'datasets.train.virtual_camera': SHOULDER_CAMERA}),
    'display_contrast': ('expansion_s3 with a display contrast boost in the virtual camera (a logistic S-curve about '
                         'mid-grey blended in with weight 0.1-0.5, for half the photos)',
                         {**EXPANSION_S3, 'datasets.train.virtual_camera': {**WIDE_CAMERA, 'contrast_prob': 0.5}}),
    'cyclegan': ('plain CycleGAN with the same U-Net: adversarial 1, cycle 10, identity 5; no gates, feedback, '
                 'perception, camera cycle or curve', {
                     'network_g.gating': False, 'network_g_hdr2ldr.gating': False,
                     'network_g.feedback_input': False, 'network_g_hdr2ldr.feedback_input': False,
                     'network_g.num_iter': 1, 'network_g_hdr2ldr.num_iter': 1,
                     'network_g.crf_basis': False, 'network_g_hdr2ldr.crf_basis': False,
                     'train.llm_opt': DELETE, 'train.camera_opt': DELETE, 'datasets.train.virtual_camera': DELETE,
                     'train.gan_opt.loss_weight': 1.0, 'train.cycle_opt.loss_weight': 10.0,
                     'train.identity_opt.loss_weight': 5.0,
                 }),
}  # fmt: skip
ABLATION = tuple(VARIANTS)
CODE = ''  # code_digest() of this process, set in main()


# ------------------------------------------------------------------------------------------------------ data
def load_prepare_data():
    spec = importlib.util.spec_from_file_location('prepare_data', REPO / 'scripts' / 'prepare_data.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules['prepare_data'] = module
    spec.loader.exec_module(module)
    return module


def make_split(data: Path, out: Path, seed: int) -> dict:
    """Run ``prepare_data.py example`` into ``out`` (reused when the same seed and data already built it)."""
    record_file = out / 'split.json'
    stamp = out / '.benchmark_split'
    key = f'{seed}|{data}|v2'
    if stamp.is_file() and stamp.read_text() == key and record_file.is_file():
        return json.loads(record_file.read_text())
    prep = load_prepare_data()
    code = prep.main(['example', '--data', str(data), '--out', str(out), '--seed', str(seed), '--overwrite'])
    if code != 0:
        raise RuntimeError(f'prepare_data.py example failed with exit code {code}')
    stamp.write_text(key)
    return json.loads(record_file.read_text())


def eval_pairs(split: Path, name: str) -> list[tuple[Path, Path]]:
    """``(ldr, gt)`` paths of one evaluation set, matched by file stem."""
    from llmhdr_basicsr.utils.hdr_io import HDR_EXTENSIONS, IMAGE_EXTENSIONS, list_images

    ldr_dir, gt_dir = (
        (Path(SETS[name][0]), Path(SETS[name][1]))
        if name == 'custom'
        else (split / SETS[name][0], split / SETS[name][1])
    )
    gts = {p.stem: p for p in map(Path, list_images(str(gt_dir), HDR_EXTENSIONS))}
    pairs = [(Path(p), gts[Path(p).stem]) for p in list_images(str(ldr_dir), IMAGE_EXTENSIONS) if Path(p).stem in gts]
    if not pairs:
        raise FileNotFoundError(f'no LDR/HDR pairs with matching file stems in {ldr_dir} and {gt_dir}')
    return pairs


# --------------------------------------------------------------------------------------------------- options
def parse_value(text: str):
    """``--set`` values are YAML (``1e-3``, ``true``, ``[1, 2]``, ``null``); ``delete`` removes the option."""
    return DELETE if text == 'delete' else yaml.safe_load(text)


def apply_overrides(opt: dict, overrides: dict) -> dict:
    """Set (or delete) dotted options, e.g. ``{'train.llm_opt.loss_weight': 0.3, 'train.gan_opt': DELETE}``."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split('.')
        node = opt
        for key in parents:
            node = node.setdefault(key, {})
            if node is None:
                break
        if node is None:
            continue
        if value is DELETE:
            node.pop(leaf, None)
        elif value == 'half_cycle':
            node[leaf] = 0.5 * opt['train']['cycle_opt']['loss_weight']
        else:
            node[leaf] = value
    return opt


def training_options(args, split: Path, overrides: dict) -> dict:
    """The benchmark's CycleHDR options: ``options/llmhdr_smoke.yml`` at the benchmark's size and loss weights, the
    split's training folders, then ``overrides`` (variant, then ``--set``)."""
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    opt['name'] = 'quality_benchmark'
    train = opt['datasets']['train']
    train.update(
        dataroot_ldr=str(split / 'train_ldr'), dataroot_hdr=str(split / 'train_hdr'), crop_size=args.crop,
        batch_size_per_gpu=args.batch, cache_images=True, phase='train', hdr_exposure_aug=None, hdr_norm=args.hdr_norm,
        virtual_camera=dict(WIDE_CAMERA),
    )  # fmt: skip
    for key in ('network_g', 'network_g_hdr2ldr'):
        opt[key].update(num_feat=args.num_feat, num_iter=args.num_iter, norm='instance', crf_basis=True)
    for key in ('network_d_hdr', 'network_d_ldr'):
        opt[key].update(num_feat=args.num_feat)
    t = opt['train']
    t['optim_g']['lr'] = t['optim_d']['lr'] = args.lr
    t['scheduler'] = {'type': 'MultiStepLR', 'milestones': [10**9], 'gamma': 1.0}  # the loop below sets the lr
    t['gan_opt']['loss_weight'] = args.w_gan
    t['cycle_opt']['loss_weight'] = args.w_cycle
    t['identity_opt']['loss_weight'] = args.w_identity
    t['llm_opt']['loss_weight'] = args.w_llm
    t['camera_opt'] = {'type': 'L1Loss', 'loss_weight': args.w_camera, 'reduction': 'mean'}
    opt.pop('val', None)
    opt['datasets'].pop('val', None)
    opt = apply_overrides(opt, overrides)
    for block in ('gan_opt', 'cycle_opt', 'identity_opt', 'llm_opt', 'camera_opt'):
        if block in t and not t[block].get('loss_weight', 1):
            t.pop(block)  # weight 0: off, and not part of the run's identity
    return opt


def finalize_options(opt: dict, work: Path) -> dict:
    opt = copy.deepcopy(opt)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False, root_path=str(work))
    exp = work / 'experiments' / opt['name']
    opt['path'].update(
        experiments_root=str(exp), models=str(exp / 'models'), training_states=str(exp / 'training_states'),
        log=str(exp), visualization=str(exp / 'visualization'),
    )  # fmt: skip
    return opt


def code_digest() -> str:
    """A digest of the package's code without comments and docstrings (``ast`` dumps of every module), so a stored
    run is reused only with the code that made it, while edits of documentation keep it valid."""
    import ast

    digest = hashlib.sha256()
    for path in sorted((REPO / 'llmhdr_basicsr').rglob('*.py')):
        tree = ast.parse(path.read_text(encoding='utf-8'))
        for node in ast.walk(tree):
            body = getattr(node, 'body', None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
        digest.update(path.relative_to(REPO).as_posix().encode() + ast.dump(tree).encode())
    return digest.hexdigest()[:16]


def run_key(opt: dict, budget: dict) -> str:
    """A digest of everything that determines a run (options, budget, seed, code; not the paths)."""
    text = json.dumps({'opt': opt, 'budget': budget, 'code': CODE}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------------- training
def train(opt: dict, budget_s: float, seed: int, *, max_iters: int = 0, decay_from: float = 0.5,
          snapshot_s: float = 0.0, log_every: int = 200):  # fmt: skip
    """Train until the wall-clock budget (or ``max_iters`` iterations, when > 0) is spent.

    The learning rate is constant until ``decay_from`` of the budget, then decays linearly to 0 at its end (CycleGAN's
    schedule, ``LinearDecayLR``, over the elapsed fraction of the budget), so the generators settle instead of
    stopping wherever the budget happens to cut them (``decay_from`` 1: constant). With ``snapshot_s`` > 0 the
    generator is copied every ``snapshot_s`` seconds of training, for the convergence table.
    Returns the model and a summary dict (with ``snapshots``: list of {iter, seconds, params}).
    """
    import random

    from basicsr.data import build_dataset
    from basicsr.models import build_model
    from torch.utils.data import DataLoader

    import llmhdr_basicsr  # noqa: F401
    from llmhdr_basicsr.models.lr_scheduler import linear_decay_factor

    torch.manual_seed(seed)
    np.random.seed(seed)
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
            if it % log_every == 0 or it == 1:
                logs = {k: round(v, 5) for k, v in model.get_current_log().items() if k.startswith('l_')}
                history.append({'iter': it, 'seconds': round(elapsed, 1), 'lr_factor': round(factor, 4), **logs})
                print(f'  iter {it:6d}  {elapsed / 60:5.1f} min  {it / elapsed:5.2f} it/s  lr x{factor:.3f}  '
                      + json.dumps(logs), flush=True)  # fmt: skip
            if snapshot_s > 0 and elapsed >= snapshot_s * (len(snapshots) + 1):
                snapshots.append({'iter': it, 'seconds': round(elapsed, 1),
                                  'params': copy.deepcopy(model.net_g.state_dict())})  # fmt: skip
            if progress() >= 1:
                break
    elapsed = time.perf_counter() - start
    return model, {'iterations': it, 'seconds': round(elapsed, 1), 'iters_per_s': round(it / elapsed, 3),
                   'history': history, 'snapshots': snapshots}  # fmt: skip


# --------------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def score(predict, pairs, names: tuple[str, ...]) -> dict:
    """Per-image metrics of ``predict(ldr (1,3,H,W) display-referred [0, 1]) -> linear HDR (1,3,H,W)``."""
    from llmhdr_basicsr.metrics.hdr_metric import compute_hdr_metrics
    from llmhdr_basicsr.utils.hdr_io import read_hdr, read_ldr

    rows = {}
    for ldr_path, gt_path in pairs:
        ldr_np = read_ldr(str(ldr_path))
        ldr = torch.from_numpy(ldr_np).permute(2, 0, 1)[None]
        pred = predict(ldr)[0].permute(1, 2, 0).float().numpy()
        gt = read_hdr(str(gt_path))
        rows[ldr_path.stem] = compute_hdr_metrics(pred, gt, names=list(names), lq=ldr_np)
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


def mean_scores(rows: dict, names: tuple[str, ...]) -> dict:
    """Mean of each metric over the images (NaN entries, e.g. no clipped pixels, left out)."""
    out = {}
    for m in names:
        values = [r[m] for r in rows.values() if r[m] == r[m]]
        out[m] = float(np.mean(values)) if values else float('nan')
    return out


def baseline_scores(work: Path, split: Path, sets: tuple[str, ...], names: tuple[str, ...]) -> dict:
    """``{set: {operator: per-image rows}}`` of every classical operator, cached in ``<work>/baselines.json``."""
    cache = work / 'baselines.json'
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    changed = False
    for set_name in sets:
        for name, (arch, kwargs) in BASELINES.items():
            rows = stored.get(set_name, {}).get(name)
            if rows is None or any(set(names) - set(r) for r in rows.values()):
                stored.setdefault(set_name, {})[name] = score(baseline_predictor(arch, kwargs),
                                                              eval_pairs(split, set_name), names)  # fmt: skip
                changed = True
    if changed:
        tmp = cache.with_suffix('.tmp')
        tmp.write_text(json.dumps(stored, indent=1))
        tmp.replace(cache)
    return {s: stored[s] for s in sets}


# ------------------------------------------------------------------------------------------------------ runs
def run_path(work: Path, variant: str, seed: int) -> Path:
    return work / 'runs' / f'{variant}_seed{seed}.json'


def run_one(args, split: Path, work: Path, variant: str, seed: int, overrides: dict, names: tuple[str, ...]) -> dict:
    """Train one (variant, seed) and score it on every evaluation set; the record is also written to disk."""
    opt = training_options(args, split, overrides)
    budget = {'iters': args.iters, 'budget_min': args.budget_min if not args.iters else None,
              'decay_from': args.lr_decay_from, 'seed': seed}  # fmt: skip
    key = run_key(opt, budget)
    exp_work = work / 'runs' / f'{variant}_seed{seed}'
    full = finalize_options(opt, exp_work)
    print(f'[{variant} seed {seed}] training ({key}): '
          + ', '.join(f'{k}={v}' for k, v in overrides.items() if v is not DELETE)
          + ''.join(f', {k} off' for k, v in overrides.items() if v is DELETE), flush=True)  # fmt: skip
    model, summary = train(full, args.budget_min * 60, seed, max_iters=args.iters, decay_from=args.lr_decay_from,
                           snapshot_s=args.snapshot_min * 60)  # fmt: skip
    snapshots = summary.pop('snapshots')
    model.save(epoch=0, current_iter=-1)  # <run>/experiments/quality_benchmark/models/net_g_latest.pth etc.
    (Path(full['path']['experiments_root']) / 'options.yml').write_text(yaml.safe_dump(full, sort_keys=False))
    scores = {s: score(model_predictor(model), eval_pairs(split, s), names) for s in EVAL_GROUPS['all']}
    if snapshots:
        summary['convergence'] = convergence(model, snapshots, eval_pairs(split, 'val'))
    record = {'variant': variant, 'seed': seed, 'key': key, 'overrides': {k: (None if v is DELETE else v)
              for k, v in overrides.items()}, 'budget': budget, 'train': summary, 'scores': scores,
              'options': opt}  # fmt: skip
    path = run_path(work, variant, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(path)
    return record


def cached_run(args, split: Path, work: Path, variant: str, seed: int, overrides: dict) -> dict | None:
    """The stored record of this (variant, seed) if it was made with exactly these options and budget."""
    path = run_path(work, variant, seed)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    opt = training_options(args, split, overrides)
    budget = {'iters': args.iters, 'budget_min': args.budget_min if not args.iters else None,
              'decay_from': args.lr_decay_from, 'seed': seed}  # fmt: skip
    return record if record.get('key') == run_key(opt, budget) else None


def convergence(model, snapshots: list[dict], pairs) -> list[dict]:
    """Mean PU21-PSNR of each training snapshot of G_Y on the validation set, printed as a table."""
    net = copy.deepcopy(model.net_g)
    rows = []
    print(f'\nconvergence on the validation set:\n{"iter":>7} {"min":>6} {"pu21":>9}')
    for snap in snapshots:
        net.load_state_dict(snap['params'])
        per_image = score(model_predictor(model, net), pairs, ('pu21_psnr',))
        row = {'iter': snap['iter'], 'seconds': snap['seconds'], 'pu21_psnr': mean_scores(per_image, ('pu21_psnr',))}
        row['pu21_psnr'] = row['pu21_psnr']['pu21_psnr']
        rows.append(row)
        print(f'{row["iter"]:7d} {row["seconds"] / 60:6.1f} {row["pu21_psnr"]:9.3f}')
    return rows


# ----------------------------------------------------------------------------------------------------- report
def load_stored_generator(work: Path, variant: str, seed: int):
    """G_Y of the stored run ``<work>/runs/<variant>_seed<seed>`` (built from its saved options), in eval mode."""
    from basicsr.utils.registry import ARCH_REGISTRY

    exp = work / 'runs' / f'{variant}_seed{seed}' / 'experiments' / 'quality_benchmark'
    weights, options = exp / 'models' / 'net_g_latest.pth', exp / 'options.yml'
    if not (weights.is_file() and options.is_file()):
        raise FileNotFoundError(f'no stored run {variant} seed {seed} in {work / "runs"}: train it first '
                                f'(python benchmarks/quality.py --variants {variant} --seeds {seed} ...)')  # fmt: skip
    net_opt = dict(yaml.safe_load(options.read_text())['network_g'])
    net = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
    state = torch.load(weights, map_location='cpu', weights_only=True)
    net.load_state_dict(state.get('params_ema', state['params']))
    return net.eval()


def stops_oracle(work: Path, split: Path, variant: str, seed: int, sets: tuple[str, ...], grid: list[float]) -> dict:
    """PU21-PSNR of a stored run's G_Y on ``sets`` with its predicted expansion stops and with every constant of
    ``grid`` instead: ``{set: {'learned': {image: (stops, score)}, 'fixed': {stops: {image: score}}}}``.

    What per-image stops could gain: the best constant for the whole set vs the best constant per image (an oracle
    that sees the ground truth, a bound, never a setting)."""
    from llmhdr_basicsr.archs.feedback_unet_arch import model_to_hdr

    net = load_stored_generator(work, variant, seed)
    if getattr(net, 'expansion', None) is None:
        raise ValueError(
            f'--stops-oracle: variant {variant} has no highlight expansion (network_g.highlight_expansion)'
        )
    seen = []
    predict_stops = net.expansion.stops
    net.expansion.stops = lambda feat, x: seen.append(predict_stops(feat, x)) or seen[-1]

    def predict(ldr):
        with torch.no_grad():
            return model_to_hdr(net(ldr), net.headroom)

    out = {}
    for name in sets:
        pairs = eval_pairs(split, name)
        rows = score(predict, pairs, ('pu21_psnr',))
        stops = [float(t.mean()) for t in seen]
        seen.clear()
        out[name] = {'learned': {k: (st, v['pu21_psnr']) for (k, v), st in zip(rows.items(), stops)}, 'fixed': {}}
        for value in grid:
            net.expansion.fixed_stops = value
            out[name]['fixed'][value] = {k: v['pu21_psnr'] for k, v in score(predict, pairs, ('pu21_psnr',)).items()}
            seen.clear()
        net.expansion.fixed_stops = None
    return out


def print_stops_oracle(results: dict[tuple[str, int], dict]) -> None:
    """One line per run and set: learned stops and score, the best constant and the per-image oracle."""
    print('\nexpansion stops (PU21-PSNR dB; constant: the best one stop value for the whole set; per-image: the best '
          'value for each image, which needs the ground truth)')  # fmt: skip
    print(f'{"run":<28} {"set":<9} {"learned stops":>14} {"learned":>8} {"constant":>14} {"per-image":>10}')
    for (variant, seed), sets in results.items():
        for name, r in sets.items():
            learned = r['learned']
            stops = np.array([st for st, _ in learned.values()])
            mean = lambda d: float(np.mean(list(d.values())))  # noqa: E731
            best = max(r['fixed'], key=lambda v: mean(r['fixed'][v]))
            oracle = float(np.mean([max(r['fixed'][v][k] for v in r['fixed']) for k in learned]))
            print(f'{variant + " seed " + str(seed):<28} {name:<9} {stops.min():>6.2f}-{stops.max():<7.2f} '
                  f'{np.mean([v for _, v in learned.values()]):>8.2f} {mean(r["fixed"][best]):>7.2f} at {best:<4g} '
                  f'{oracle:>10.2f}')  # fmt: skip


def seed_stats(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count, NaNs left out."""
    v = np.array([x for x in values if x == x], dtype=np.float64)
    if v.size == 0:
        return float('nan'), float('nan'), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def fmt(mean: float, sd: float | None = None, n: int = 1) -> str:
    if mean != mean:
        return 'n/a'
    return f'{mean:.3f}' if sd is None or n < 2 else f'{mean:.3f}±{sd:.3f}'


def build_tables(records: dict[str, list[dict]], baselines: dict, sets: tuple[str, ...], names: tuple[str, ...]):
    """``{set: {method: {metric: (mean, sd, n)}}}``: seed statistics of each variant's mean scores; the classical
    operators have one value (they are deterministic)."""
    tables = {}
    for s in sets:
        rows = {}
        for variant, recs in records.items():
            per_seed = [mean_scores(r['scores'][s], names) for r in recs]
            rows[f'CycleHDR [{variant}]'] = {m: seed_stats([p[m] for p in per_seed]) for m in names}
        for name, per_image in baselines[s].items():
            rows[name] = {m: (*seed_stats([mean_scores(per_image, names)[m]])[:1], None, 1) for m in names}
        tables[s] = rows
    return tables


def seed_difference(cells: dict, ref: dict, metric: str) -> tuple[float, float] | None:
    """Mean difference of ``metric`` between two table rows and two standard errors of it (Welch), or None where
    either row has fewer than two seeds or a NaN mean."""
    (a, sa, na), (b, sb, nb) = cells[metric], ref[metric]
    if na < 2 or nb < 2 or a != a or b != b:
        return None
    return a - b, 2 * (sa**2 / na + sb**2 / nb) ** 0.5


def print_tables(tables: dict, names: tuple[str, ...], reference: str | None) -> None:
    for s, rows in tables.items():
        print(f'\n{s}: {SETS[s][2]}')
        head = f'{"method":<34}' + ''.join(f'{m:>18}' for m in names)
        print(head)
        print('-' * len(head))
        for method, cells in rows.items():
            print(f'{method:<34}' + ''.join(f'{fmt(*cells[m]):>18}' for m in names))
        if reference and reference in rows:
            print(
                f'  difference to {reference} (mean ± 2 standard errors; |diff| > 2 SE is unlikely to be seed noise):'
            )
            ref = rows[reference]
            for method, cells in rows.items():
                if method == reference or not method.startswith('CycleHDR'):
                    continue
                parts = []
                for m in names[:4]:
                    if (d := seed_difference(cells, ref, m)) is None:
                        continue
                    flag = '*' if abs(d[0]) > d[1] else ' '
                    parts.append(f'{m} {d[0]:+.3f}±{d[1]:.3f}{flag}')
                print(f'    {method:<32} ' + '  '.join(parts))


def markdown_tables(tables: dict, names: tuple[str, ...], reference: str | None) -> str:
    """The tables as Markdown (for the README): one per set, and the differences to ``reference`` with two standard
    errors (bold when larger than that)."""
    units = {'pu21_psnr': 'PU21-PSNR dB', 'cvvdp': 'JOD', 'pu21_psnr_clip': 'clipped PU21-PSNR dB',
             'log2_ratio_clip': 'clipped log2 ratio', 'pu21_ssim': 'PU21-SSIM', 'psnr_mu': 'PSNR-μ dB'}  # fmt: skip
    out = []
    for s, rows in tables.items():
        out.append(f'**{s}** ({SETS[s][2]})\n')
        out.append('| method | ' + ' | '.join(units.get(m, m) for m in names) + ' |')
        out.append('|---|' + '---|' * len(names))
        for method, cells in rows.items():
            out.append(f'| {method} | ' + ' | '.join(fmt(*cells[m]) for m in names) + ' |')
        out.append('')
        if reference and reference in rows:
            ref = rows[reference]
            diff_names = [m for m in names if m != 'psnr_mu']
            out.append(f'difference to {reference}, mean ± 2 SE (bold: larger than 2 SE)\n')
            out.append('| variant | ' + ' | '.join(units.get(m, m) for m in diff_names) + ' |')
            out.append('|---|' + '---|' * len(diff_names))
            for method, cells in rows.items():
                if method == reference or not method.startswith('CycleHDR'):
                    continue
                parts = []
                for m in diff_names:
                    if (d := seed_difference(cells, ref, m)) is None:
                        parts.append('n/a')
                        continue
                    text = f'{d[0]:+.3f} ± {d[1]:.3f}'
                    parts.append(f'**{text}**' if abs(d[0]) > d[1] else text)
                out.append(f'| {method} | ' + ' | '.join(parts) + ' |')
            out.append('')
    return '\n'.join(out)


def goals(tables: dict, method: str, sets: tuple[str, ...]) -> dict:
    """For each set: does ``method`` beat every classical operator on PU21-PSNR and JOD, and linearisation by >= 1 dB
    PU21-PSNR in the clipped pixels?"""
    out = {}
    for s in sets:
        rows = tables[s]
        if method not in rows:
            continue
        ours = rows[method]
        classical = {k: v for k, v in rows.items() if not k.startswith('CycleHDR')}
        res = {}
        for m in (m for m in GOAL_METRICS if m in ours):
            best_name, best = max(((k, v[m][0]) for k, v in classical.items()), key=lambda kv: kv[1])
            res[m] = {'ours': ours[m][0], 'best_classical': best, 'best_name': best_name, 'passed': ours[m][0] > best}
        lin = classical['linearize (sRGB)']['pu21_psnr_clip'][0]
        res['pu21_psnr_clip_vs_linearize'] = {'ours': ours['pu21_psnr_clip'][0], 'linearize': lin,
                                              'passed': ours['pu21_psnr_clip'][0] >= lin + 1.0}  # fmt: skip
        out[s] = res
    return out


# ------------------------------------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=str(REPO.parent / 'shared' / 'data'), help='folder with ldr/ and hdr/')
    p.add_argument('--work', default=str(REPO / 'datasets' / 'quality_benchmark'), help='split + runs folder')
    p.add_argument('--split-seed', type=int, default=0, help='seed of the scene split (fixed across training seeds)')
    p.add_argument('--eval', choices=sorted(EVAL_GROUPS), default='test', help='sets in the tables: test or val')
    p.add_argument('--test-ldr', help='with --baselines-only: score the operators on this paired folder (LDR inputs)')
    p.add_argument('--test-gt', help='with --baselines-only: its HDR ground truth, matched by file stem')
    p.add_argument('--variants', default='full', help=f'comma-separated variants, or "ablation"; {", ".join(VARIANTS)}')
    p.add_argument('--tag', default='', help='name suffix of the runs made with --set (keeps their records apart)')
    p.add_argument(
        '--set',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='change an option of every run, e.g. train.llm_opt.loss_weight=0.3 ("delete" removes it)',
    )
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--iters', type=int, default=3000, help='training iterations per run (0: use --budget-min)')
    p.add_argument('--budget-min', type=float, default=20.0, help='wall-clock budget per run when --iters 0')
    p.add_argument('--jobs', type=int, default=1, help='runs trained side by side (one thread each when > 1)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--num-feat', type=int, default=8)
    p.add_argument('--num-iter', type=int, default=2)
    p.add_argument('--crop', type=int, default=96)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument(
        '--hdr-norm', type=float, default=95.0, help='HDR luminance percentile of white (hdr_white: dataset)'
    )
    p.add_argument('--w-gan', type=float, default=0.01)
    p.add_argument('--w-cycle', type=float, default=0.1)
    p.add_argument('--w-identity', type=float, default=0.0)
    p.add_argument('--w-llm', type=float, default=0.1)
    p.add_argument('--w-camera', type=float, default=10.0, help='virtual-camera cycle weight')
    p.add_argument('--lr-decay-from', type=float, default=0.5, help='budget fraction where lr starts its decay to 0')
    p.add_argument('--snapshot-min', type=float, default=0.0, help='also score G_Y on val every this many minutes')
    p.add_argument('--no-cvvdp', action='store_true', help='skip ColorVideoVDP (the slowest metric)')
    p.add_argument('--baselines-only', action='store_true', help='no training: score the classical operators only')
    p.add_argument(
        '--stops-oracle',
        nargs='?',
        const='0:4:0.5',
        metavar='LO:HI:STEP',
        help='no training: score the stored runs of --variants/--seeds with constant expansion stops '
        '(default grid 0:4:0.5) next to their predicted ones, on the --eval sets',
    )
    p.add_argument('--run', help=argparse.SUPPRESS)  # VARIANT:SEED, used by --jobs for the child processes
    p.add_argument('--json', help='write all numbers to this JSON file')
    p.add_argument('--markdown', help='also write the tables as Markdown to this file')
    args = p.parse_args(argv)
    if not 0.0 <= args.lr_decay_from <= 1.0:
        p.error(f'--lr-decay-from must lie in [0, 1], got {args.lr_decay_from}')
    if bool(args.test_ldr) != bool(args.test_gt) or (args.test_ldr and not args.baselines_only):
        p.error('--test-ldr and --test-gt go together, with --baselines-only')
    variants = list(ABLATION) if args.variants == 'ablation' else [v.strip() for v in args.variants.split(',')]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f'--variants: unknown {unknown}; choose from {list(VARIANTS)} or "ablation"')
    try:
        extra = dict(item.split('=', 1) for item in args.set)
    except ValueError:
        p.error(f'--set needs KEY=VALUE, got {args.set}')
    args.variant_list, args.extra = variants, {k: parse_value(v) for k, v in extra.items()}
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    global CODE
    CODE = code_digest()
    torch.set_num_threads(args.threads)
    names = tuple(m for m in METRICS if not (args.no_cvvdp and m == 'cvvdp'))
    work = Path(args.work).resolve()
    split = work / 'split'
    record = make_split(Path(args.data).resolve(), split, args.split_seed)
    import llmhdr_basicsr  # noqa: F401  (registers the classical operators)

    def overrides_of(variant: str) -> dict:
        return {**VARIANTS[variant][1], **args.extra}

    def name_of(variant: str) -> str:
        return variant + (f'_{args.tag}' if args.tag else ('_custom' if args.extra else ''))

    if args.stops_oracle:  # a diagnostic of stored runs, no training
        try:
            lo, hi, step = (float(v) for v in args.stops_oracle.split(':'))
        except ValueError:
            print(f'error: --stops-oracle needs LO:HI:STEP, got {args.stops_oracle!r}', file=sys.stderr)
            return 2
        grid = [round(v, 6) for v in np.arange(lo, hi + step / 2, step)]
        try:
            results = {(v, sd): stops_oracle(work, split, name_of(v), sd, EVAL_GROUPS[args.eval], grid)
                       for v in args.variant_list for sd in args.seeds}  # fmt: skip
        except (FileNotFoundError, ValueError) as err:
            print(f'error: {err}', file=sys.stderr)
            return 2
        print_stops_oracle(results)
        if args.json:
            Path(args.json).write_text(json.dumps({f'{v}_seed{sd}': r for (v, sd), r in results.items()}, indent=1))
        return 0

    if args.run:  # a child of --jobs: one run, then exit
        variant, seed = args.run.rsplit(':', 1)
        run_one(args, split, work, name_of(variant), int(seed), overrides_of(variant), names)
        return 0

    command = 'python benchmarks/quality.py ' + ' '.join(shlex.quote(a) for a in argv)
    load = ', '.join(f'{v:.1f}' for v in os.getloadavg())
    print(f'command: {command}\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
          f'torch {torch.__version__}, {args.threads} threads, load average {load}')  # fmt: skip
    sc = record['scenes']
    print(f'split (seed {args.split_seed}): {len(sc["train_hdr"])} HDR training scenes, {len(sc["train_ldr"])} LDR '
          f'training images, validation {sc["val"]}, test {sc["test"]}')  # fmt: skip
    sets = EVAL_GROUPS[args.eval]
    if args.test_ldr:  # a paired folder of the user's instead of the split's sets
        SETS['custom'] = (args.test_ldr, args.test_gt, f'paired folder {args.test_ldr} / {args.test_gt}')
        pairs = eval_pairs(split, 'custom')
        sets = ('custom',)
        baselines = {'custom': {n: score(baseline_predictor(a, k), pairs, names) for n, (a, k) in BASELINES.items()}}
    else:
        baselines = baseline_scores(work, split, sets, names)
    if args.baselines_only:
        tables = build_tables({}, baselines, sets, names)
        print_tables(tables, names, None)
        if args.json:
            Path(args.json).write_text(json.dumps({'command': command, 'split': record, 'tables': tables}, indent=1))
        return 0

    todo = [(v, s) for s in args.seeds for v in args.variant_list  # seed-major: every variant's first seed first
            if cached_run(args, split, work, name_of(v), s, overrides_of(v)) is None]  # fmt: skip
    print(f'{len(args.variant_list) * len(args.seeds) - len(todo)} run(s) reused, {len(todo)} to train: '
          + ', '.join(f'{v}:{s}' for v, s in todo), flush=True)  # fmt: skip
    if args.jobs > 1 and todo:
        base = [a for i, a in enumerate(argv) if not (a.startswith('--jobs') or (i and argv[i - 1] == '--jobs'))]

        def child(job):
            v, s = job
            cmd = [sys.executable, __file__, *base, '--threads', '1', '--run', f'{v}:{s}']
            log = work / 'runs' / f'{name_of(v)}_seed{s}.log'
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, 'w') as f:
                return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode

        with ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(child, todo))
        if any(codes):
            print(f'error: {sum(map(bool, codes))} run(s) failed; see {work / "runs"}/*.log', file=sys.stderr)
            return 2
    else:
        for v, s in todo:
            run_one(args, split, work, name_of(v), s, overrides_of(v), names)
    records = {name_of(v): [cached_run(args, split, work, name_of(v), s, overrides_of(v)) for s in args.seeds]
               for v in args.variant_list}  # fmt: skip
    tables = build_tables(records, baselines, sets, names)
    first = f'CycleHDR [{name_of(args.variant_list[0])}]'
    print_tables(tables, names, first if len(args.variant_list) > 1 else None)
    if args.markdown:
        Path(args.markdown).write_text(markdown_tables(tables, names, first if len(args.variant_list) > 1 else None))
    result = goals(tables, first, sets)
    iters = [r['train']['iterations'] for recs in records.values() for r in recs]
    for s, res in result.items():
        parts = [f'{m} {v["ours"]:.3f} vs {v["best_classical"]:.3f} ({v["best_name"]}) '
                 f'{"PASS" if v["passed"] else "FAIL"}' for m, v in res.items() if m in GOAL_METRICS]  # fmt: skip
        clip = res['pu21_psnr_clip_vs_linearize']
        parts.append(
            f'clipped pu21 {clip["ours"]:.3f} vs linearize {clip["linearize"]:.3f} + 1 '
            f'{"PASS" if clip["passed"] else "FAIL"}'
        )
        print(f'summary {s} ({first}, {len(args.seeds)} seed(s), {min(iters)}-{max(iters)} it): ' + '; '.join(parts))
    if args.json:
        Path(args.json).write_text(json.dumps({
            'command': command, 'split': record, 'seeds': args.seeds, 'variants': {v: VARIANTS[v][0] for v in
            args.variant_list}, 'extra': {k: (None if v is DELETE else v) for k, v in args.extra.items()},
            'tables': tables, 'goals': result, 'runs': {k: [{'seed': r['seed'], 'train': r['train'],
            'scores': r['scores']} for r in recs] for k, recs in records.items()},
        }, indent=1, default=str))  # fmt: skip
    passed = all(v['passed'] for res in result.values() for v in res.values())
    return 0 if passed else 1


if __name__ == '__main__':
    sys.exit(main())
