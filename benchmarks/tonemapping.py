"""Tone-mapping benchmark: CycleHDR's HDR -> LDR generator G_X against the classical operators, on the held-out HDR
scenes of ``benchmarks/quality.py``, scored with TMQI and against reference LDR renderings.

Protocol (printed with the results):

1. The scenes, split and trained models are those of ``benchmarks/quality.py`` (same ``--work`` folder): G_X is the
   ``net_g_hdr2ldr`` of each run of ``--variants`` (default ``full``; e.g. ``full,no_cycle,no_adversarial`` shows
   what each term does for G_X) at ``--iters`` iterations and each seed of ``--seeds`` (reused when stored, trained
   here otherwise). The HDR images are the ground truth of the test scenes (``--eval val``: the validation
   scenes, for tuning).
2. G_X sees each HDR image as in training and in ``llmhdr-tonemap``: the run's ``hdr_norm`` luminance percentile
   mapped to 1, then its mu-law with the generator's headroom; the whole image in one call. The classical operators
   are those of ``llmhdr-tonemap --operator``: Reinhard et al. 2002 (global, key 0.18), exposure (99th luminance
   percentile at white, clipped, sRGB) and mu-law (maximum at 1). All are scale invariant.
3. Metrics (:mod:`llmhdr_basicsr.metrics.tmqi_metric`, the code of ``llmhdr-eval --direction hdr2ldr``): TMQI Q and
   its structural fidelity S and naturalness N against the HDR image (no reference LDR needed), and PSNR / SSIM
   (8-bit units) against two reference renderings of the same scene that the split holds: the LDR of the training
   camera family (``*_ldr``, the cameras of G_Y's virtual-camera cycle) and the LDR of a camera outside it
   (``*_ood_ldr``: filmic, ACES, Drago, Reinhard curves...). Mean over the images, then mean +- sd over seeds.

Usage::

    python benchmarks/tonemapping.py --iters 600 --seeds 0 1 2 --markdown tonemapping.md
    python benchmarks/tonemapping.py --iters 600 --variants full,no_cycle,no_adversarial --stored   # stored runs
    python benchmarks/tonemapping.py --smoke --data DIR --work DIR      # tiny widths, 2 iterations (tests)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / 'benchmarks' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


b = _load('baselines')  # loads quality.py as ``quality`` too
q = b.q

OPERATORS = {'Reinhard 2002': 'reinhard', 'exposure (99th pct)': 'exposure', 'mu-law': 'mu'}
GX = 'CycleHDR G_X'
#: Column -> (label, reference set suffix or None, metric).
COLUMNS = {
    'tmqi': ('TMQI Q', None, 'tmqi'),
    'tmqi_s': ('TMQI S', None, 'tmqi_s'),
    'tmqi_n': ('TMQI N', None, 'tmqi_n'),
    'psnr_cam': ('PSNR cam', '', 'psnr'),
    'ssim_cam': ('SSIM cam', '', 'ssim'),
    'psnr_ood': ('PSNR ood', '_ood', 'psnr'),
    'ssim_ood': ('SSIM ood', '_ood', 'ssim'),
}


def scenes(split: Path, group: str) -> list[tuple[str, Path, Path, Path]]:
    """``(name, hdr, reference LDR of the training camera family, reference LDR from outside it)`` of every scene."""
    out = []
    for ldr, gt in q.eval_pairs(split, group):
        (ood,) = [p for p, g in q.eval_pairs(split, f'{group}_ood') if g == gt] or [None]
        if ood is None:
            raise FileNotFoundError(f'no {group}_ood rendering of {gt}')
        out.append((gt.stem, gt, ldr, ood))
    return out


def score_operator(tonemap, items) -> dict:
    """Per-image scores of ``tonemap(hdr (H, W, 3) float32 linear) -> LDR (H, W, 3) in [0, 1]``."""
    from llmhdr_basicsr.metrics.tmqi_metric import compute_tmo_metrics
    from llmhdr_basicsr.utils.hdr_io import read_hdr, read_ldr

    rows = {}
    for name, hdr_path, cam_path, ood_path in items:
        hdr = read_hdr(str(hdr_path))
        ldr = tonemap(hdr)
        row = compute_tmo_metrics(ldr, hdr, ['tmqi', 'tmqi_s', 'tmqi_n'])
        for suffix, ref_path in (('cam', cam_path), ('ood', ood_path)):
            ref = compute_tmo_metrics(ldr, hdr, ['psnr', 'ssim'], ref=read_ldr(str(ref_path)))
            row.update({f'{k}_{suffix}': v for k, v in ref.items()})
        rows[name] = row
    return rows


def classical(op: str):
    from llmhdr_basicsr.utils.tonemap import tonemap_preview

    def tonemap(hdr: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(hdr).permute(2, 0, 1)[None]
        return tonemap_preview(x, op)[0].permute(1, 2, 0).numpy()

    return tonemap


def gx_of_run(work: Path, seed: int, variant: str = 'full'):
    """G_X of the stored ``variant`` run of ``seed``, applied as ``llmhdr-tonemap`` applies it."""
    import yaml

    from llmhdr_basicsr.infer import Reconstructor, load_network

    exp = work / 'runs' / f'{variant}_seed{seed}' / 'experiments' / 'quality_benchmark'
    weights, opt_path = exp / 'models' / 'net_g_hdr2ldr_latest.pth', exp / 'options.yml'
    if not weights.is_file() or not opt_path.is_file():
        raise FileNotFoundError(
            f'{weights} or {opt_path} is missing (the run record exists but not its checkpoint): delete '
            f'{q.run_path(work, variant, seed)} so that the run is trained again'
        )
    hdr_norm = yaml.safe_load(opt_path.read_text())['datasets']['train']['hdr_norm']
    loaded = load_network('hdr2ldr', str(weights), str(opt_path))
    return Reconstructor(loaded, 'hdr2ldr', torch.device('cpu'), tile=0, hdr_norm=hdr_norm)


def stored_records(args, variant: str = 'full') -> list[dict]:
    """``--stored``: the ``variant`` run records of ``--work`` at this budget as they are, whatever code version
    trained them (their iterations are checked, the code digest is not)."""
    out = []
    for seed in args.seeds:
        path = q.run_path(Path(args.work), variant, seed)
        if not path.is_file():
            raise FileNotFoundError(f'--stored: no run record {path}; run benchmarks/quality.py --iters {args.iters}')
        rec = json.loads(path.read_text())
        if rec['budget']['iters'] != args.iters:
            raise ValueError(f'--stored: {path} was trained for {rec["budget"]["iters"]} iterations, not {args.iters}')
        print(f'stored run {path.name}: key {rec["key"]} (code digest not checked)')
        out.append(rec)
    return out


def summarise(per_seed_rows: list[dict]) -> dict:
    """``{column: (mean over seeds, sd, n)}`` of the per-image means."""
    means = [{c: float(np.mean([r[c] for r in rows.values()])) for c in COLUMNS} for rows in per_seed_rows]
    return {c: q.seed_stats([m[c] for m in means]) for c in COLUMNS}


def table_lines(rows: dict) -> list[str]:
    width = max(22, *(len(name) + 2 for name in rows))
    head = f'{"method":<{width}}' + ''.join(f'{COLUMNS[c][0]:>16}' for c in COLUMNS)
    lines = [head, '-' * len(head)]
    for name, row in rows.items():
        lines.append(f'{name:<{width}}' + ''.join(f'{q.fmt(*row[c]):>16}' for c in COLUMNS))
    return lines


def markdown(rows: dict) -> str:
    out = ['| method | ' + ' | '.join(COLUMNS[c][0] for c in COLUMNS) + ' |', '|---|' + '---|' * len(COLUMNS)]
    out += [f'| {name} | ' + ' | '.join(q.fmt(*row[c]) for c in COLUMNS) + ' |' for name, row in rows.items()]
    return '\n'.join(out) + '\n'


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=str(REPO.parent / 'shared' / 'data'), help='folder with ldr/ and hdr/')
    p.add_argument('--work', default=str(REPO / 'datasets' / 'quality_benchmark'), help='quality.py work folder')
    p.add_argument('--eval', choices=('test', 'val'), default='test', help='HDR scenes of the test or validation set')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--iters', type=int, default=600, help='training iterations of the CycleHDR runs')
    p.add_argument('--crop', type=int, default=96)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--lr-decay-from', type=float, default=0.5)
    p.add_argument('--hdr-norm', type=float, default=95.0)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument(
        '--stored',
        action='store_true',
        help='use the stored runs of --work as they are (no code-digest check), never train',
    )
    p.add_argument('--variants', default='full', help='comma-separated quality.py variants whose G_X is scored')
    p.add_argument('--smoke', action='store_true', help='tiny widths (and --iters 2 unless given): a quick check')
    p.add_argument('--json', help='write all numbers to this JSON file')
    p.add_argument('--markdown', help='also write the table as Markdown to this file')
    args = p.parse_args(argv)
    if args.smoke and '--iters' not in argv:
        args.iters = 2
    args.no_cvvdp = True  # only matters for CycleHDR runs trained here: their LDR -> HDR scores are not used
    args.data, args.work = str(Path(args.data).resolve()), str(Path(args.work).resolve())
    args.variants = [v for v in args.variants.split(',') if v]
    unknown = [v for v in args.variants if v not in q.VARIANTS]
    if unknown:
        p.error(f'--variants: unknown {unknown}; choose from {list(q.VARIANTS)}')
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    q.CODE = q.code_digest()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    record = q.make_split(Path(args.data), work / 'split', 0)
    import llmhdr_basicsr  # noqa: F401

    command = 'python benchmarks/tonemapping.py ' + ' '.join(shlex.quote(a) for a in argv)
    load = ', '.join(f'{v:.1f}' for v in os.getloadavg())
    print(f'command: {command}\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
          f'torch {torch.__version__}, {args.threads} threads, load average {load}')  # fmt: skip
    items = scenes(work / 'split', args.eval)
    print(f'{args.eval} HDR scenes: {[name for name, *_ in items]}; G_X of the {args.variants} runs at '
          f'{args.iters} iterations, seeds {args.seeds}')  # fmt: skip
    names = tuple(m for m in q.METRICS if m != 'cvvdp')
    rows, per_image = {}, {}
    for variant in args.variants:
        records = stored_records(args, variant) if args.stored else b.cyclehdr_records(args, names, variant)
        torch.set_num_threads(args.threads)
        per_seed = [score_operator(gx_of_run(work, rec['seed'], variant), items) for rec in records]
        label = GX if args.variants == ['full'] else f'{GX} [{variant}]'
        rows[label], per_image[label] = summarise(per_seed), per_seed
    for name, op in OPERATORS.items():
        scores = score_operator(classical(op), items)
        rows[name], per_image[name] = summarise([scores]), scores
    print('\n'.join(['', *table_lines(rows)]))
    print(
        '\nTMQI against the HDR image; PSNR (dB) / SSIM against the reference renderings: cam = the training '
        "camera family (the split's *_ldr), ood = a camera outside it (*_ood_ldr)"
    )
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({'command': command, 'split': record, 'seeds': args.seeds,
                                               'table': rows, 'per_image': per_image}, indent=1))  # fmt: skip
    return 0


if __name__ == '__main__':
    sys.exit(main())
