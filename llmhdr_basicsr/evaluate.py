"""``llmhdr-eval``: score a folder of predicted HDR images against ground truth, per image and on average.

Usage::

    llmhdr-eval --pred results/ --gt datasets/test_hdr --csv scores.csv --json scores.json
    llmhdr-eval --pred results/ --gt gt/ --pred-suffix _CycleHDR --metrics pu21_psnr,cvvdp --plot scores.png
    llmhdr-eval --pred results/ --gt gt/ --ldr inputs/    # + PU21-PSNR and log2 ratio in the input's clipped pixels
    llmhdr-eval --direction hdr2ldr --pred tonemapped/ --gt hdrs/ --ref-ldr ref/   # tone mapping: TMQI (+ PSNR, SSIM)

(also ``python -m llmhdr_basicsr.evaluate``). Files are matched by stem (``--pred-suffix`` / ``--gt-suffix`` are
removed from the end of the stems first); only HDR files are read (``.hdr``, ``.exr``, ``.pfm``, float ``.tif``), so
the tone-mapped previews ``llmhdr-infer`` writes next to its ``.exr`` files are ignored.

Every number comes from :mod:`llmhdr_basicsr.metrics.hdr_metric` (``compute_hdr_metrics``: the same code as the
registered BasicSR metrics and the benchmarks) and, for LPIPS, from
:func:`llmhdr_basicsr.metrics.lpips_metric.calculate_lpips`.
The protocol is printed as a header and stored in the JSON file, so a result can be reproduced:

- prediction and ground truth are linear HDR, relative scale; the prediction is multiplied by one global gain
  (``--align``, default ``geomean``: least squares in log luminance; the ``gain`` column of the CSV);
- PSNR-mu and log-PSNR: both images divided by the ground truth's maximum;
- PU21-PSNR / PU21-SSIM / ColorVideoVDP: absolute scaling, the ground truth's ``--percentile`` (99.9th) luminance
  percentile set to ``--peak-nits`` (1000) cd/m², the same factor applied to the aligned prediction;
- ColorVideoVDP display model ``--display`` (``standard_hdr_linear``), on ``--device``;
- with ``--ldr`` (the LDR inputs, matched by stem): PU21-PSNR and the median log2 luminance ratio over the pixels
  clipped in the input (a channel >= 250/255), where plain linearisation leaves the highlights at white;
- perfect scores: PSNRs are capped at 100 dB, SSIM 1, JOD 10, LPIPS 0.

``--direction hdr2ldr`` scores tone mapping instead: ``--pred`` holds tone-mapped LDR images (8/16-bit PNG, JPEG,
TIFF, ...), ``--gt`` the source HDR images. Metrics (:mod:`llmhdr_basicsr.metrics.tmqi_metric`): TMQI Q and its
structural fidelity S and statistical naturalness N (Yeganeh & Wang 2013; no alignment, no absolute scaling: TMQI
normalises the HDR luminance itself), and with ``--ref-ldr`` (reference LDR renderings, matched by stem) PSNR and SSIM
of the RGB values in 8-bit units. The table, CSV (without the ``gain`` column) and JSON files have the same layout.

Exit status: 0 when at least one pair was scored, 1 when no pair matched (unmatched files are listed) or none could
be scored, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import inspect
import json
import math
import os
import os.path as osp
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from llmhdr_basicsr.metrics.defaults import (  # the metric module imports basicsr: loaded after parsing
    ALIGN_MODES,
    CVVDP_DISPLAY,
    DEFAULT_ALIGN,
    DEFAULT_PEAK_NITS,
    DEFAULT_PERCENTILE,
)
from llmhdr_basicsr.utils.hdr_io import (
    FLOAT_CAPABLE_EXTENSIONS,
    HDR_EXTENSIONS,
    IMAGE_EXTENSIONS,
    LDR_EXTENSIONS,
    list_images,
    read_hdr,
    read_ldr,
)

EVAL_EXTENSIONS = HDR_EXTENSIONS + FLOAT_CAPABLE_EXTENSIONS
DIRECTIONS = ('ldr2hdr', 'hdr2ldr')
LPIPS_NAME = 'lpips'
#: Display names and direction of every metric column.
METRIC_INFO = {
    'psnr_mu': ('PSNR-mu', 'dB', 'higher'),
    'log_psnr': ('log-PSNR', 'dB', 'higher'),
    'pu21_psnr': ('PU21-PSNR', 'dB', 'higher'),
    'pu21_ssim': ('PU21-SSIM', '', 'higher'),
    'cvvdp': ('ColorVideoVDP', 'JOD', 'higher'),
    'pu21_psnr_clip': ('PU21-PSNR in clipped pixels', 'dB', 'higher'),
    'log2_ratio_clip': ('median log2(pred/gt) in clipped pixels', 'stops', 'zero'),
    LPIPS_NAME: ('LPIPS', '', 'lower'),
}
#: The same for ``--direction hdr2ldr`` (names of :data:`llmhdr_basicsr.metrics.tmqi_metric.TMO_METRICS`).
TMO_METRIC_INFO = {
    'tmqi': ('TMQI Q', '', 'higher'),
    'tmqi_s': ('TMQI S (structural fidelity)', '', 'higher'),
    'tmqi_n': ('TMQI N (naturalness)', '', 'higher'),
    'psnr': ('PSNR vs reference LDR', 'dB', 'higher'),
    'ssim': ('SSIM vs reference LDR', '', 'higher'),
}
TMO_REF_METRICS = ('psnr', 'ssim')  # need --ref-ldr


class UsageError(Exception):
    """A set-up problem: reported as ``error: ...`` with exit status 2."""


# ------------------------------------------------------------------------------------------------ matching
def _stem_map(
    folder: str, suffix: str, role: str, extensions: tuple = EVAL_EXTENSIONS
) -> tuple[dict[str, str], list[str]]:
    """``stem (suffix removed) -> path`` of the ``extensions`` files of ``folder``; also the files whose stem is
    ambiguous."""
    if not osp.isdir(folder):
        raise UsageError(f'--{role} {folder!r} is not a folder')
    by_stem: dict[str, list[str]] = {}
    for path in list_images(folder, extensions):
        stem = osp.splitext(osp.basename(path))[0]
        if suffix and stem.endswith(suffix):
            stem = stem[: -len(suffix)]
        by_stem.setdefault(stem, []).append(path)
    dupes = [p for paths in by_stem.values() if len(paths) > 1 for p in paths]
    return {s: paths[0] for s, paths in by_stem.items() if len(paths) == 1}, dupes


def match_pairs(
    pred_dir: str, gt_dir: str, pred_suffix: str = '', gt_suffix: str = '', direction: str = 'ldr2hdr'
) -> tuple[list[tuple[str, str, str]], list[str], list[str]]:
    """Pair prediction and ground-truth files by stem.

    Args:
        pred_dir: folder of predicted HDR files (``direction='hdr2ldr'``: tone-mapped LDR files).
        gt_dir: folder of ground-truth HDR files (``'hdr2ldr'``: the source HDR files).
        pred_suffix: removed from the end of prediction stems (e.g. ``'_CycleHDR'``).
        gt_suffix: removed from the end of ground-truth stems.
        direction: ``'ldr2hdr'`` (HDR files in both folders) or ``'hdr2ldr'`` (LDR image files in ``pred_dir``).

    Returns:
        ``(pairs, unmatched_pred, unmatched_gt)``; ``pairs`` are ``(name, pred_path, gt_path)`` sorted by name.
        Files whose stem occurs twice in one folder (``a.exr`` and ``a.hdr``) count as unmatched.
    """
    preds, pred_dupes = _stem_map(
        pred_dir, pred_suffix, 'pred', LDR_EXTENSIONS if direction == 'hdr2ldr' else EVAL_EXTENSIONS
    )
    gts, gt_dupes = _stem_map(gt_dir, gt_suffix, 'gt')
    pairs = [(s, preds[s], gts[s]) for s in sorted(preds.keys() & gts.keys())]
    unmatched_pred = sorted([preds[s] for s in preds.keys() - gts.keys()] + pred_dupes)
    unmatched_gt = sorted([gts[s] for s in gts.keys() - preds.keys()] + gt_dupes)
    return pairs, unmatched_pred, unmatched_gt


# ------------------------------------------------------------------------------------------------- scoring
@dataclass
class EvalSettings:
    """Everything that determines the numbers (printed and stored with them)."""

    metrics: list[str]
    align: str = DEFAULT_ALIGN
    peak_nits: float = DEFAULT_PEAK_NITS
    percentile: float = DEFAULT_PERCENTILE
    crop_border: int = 0
    display: str = CVVDP_DISPLAY
    device: str = 'cpu'
    lpips_net: str = 'alex'
    lpips_weights: str | None = None
    ldr_dir: str | None = None
    direction: str = 'ldr2hdr'
    ref_ldr_dir: str | None = None

    def hdr_options(self) -> dict:
        """Options for :func:`compute_hdr_metrics`: only those that a selected metric accepts."""
        import llmhdr_basicsr.plugin  # noqa: F401  (basicsr before hdr_metric, which imports it)
        from llmhdr_basicsr.metrics.hdr_metric import HDR_METRICS

        opts = dict(align=self.align, crop_border=self.crop_border, peak_nits=self.peak_nits,
                    percentile=self.percentile, display=self.display, device=self.device)  # fmt: skip
        accepted = set()
        for name in self.metrics:
            if name in HDR_METRICS:
                accepted |= set(inspect.signature(HDR_METRICS[name].func).parameters)
        return {k: v for k, v in opts.items() if k in accepted}


@dataclass
class EvalResult:
    """Per-image rows, failures and the mean of each metric."""

    rows: list[dict] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
        out = {}
        for m in metrics:
            values = np.array([r[m] for r in self.rows if m in r], dtype=np.float64)
            values = values[~np.isnan(values)]  # clipped-region scores of images without clipped pixels
            if values.size:
                out[m] = {'mean': float(values.mean()), 'std': float(values.std()), 'n': int(values.size)}
        return out


def score_pair(pred: np.ndarray, gt: np.ndarray, settings: EvalSettings, lq: np.ndarray | None = None) -> dict:
    """All selected metrics of one pair, plus the alignment ``gain``.

    Args:
        pred: ``(H, W, 3)`` float32 linear HDR, relative scale.
        gt: ``(H, W, 3)`` float32 linear HDR, relative scale, same shape.
        settings: metric selection and protocol options.
        lq: the LDR input ``(H, W, 3)`` display-referred in [0, 1], for the clipped-region metrics.

    Returns:
        ``{'gain': factor applied to the prediction, metric: score, ...}``.
    """
    if pred.shape != gt.shape:
        raise ValueError(f'shapes differ: prediction {pred.shape} vs ground truth {gt.shape}')
    import llmhdr_basicsr.plugin  # noqa: F401  (basicsr before hdr_metric, which imports it)
    from llmhdr_basicsr.metrics.hdr_metric import HDR_METRICS, align_scale, compute_hdr_metrics

    hdr_names = [m for m in settings.metrics if m in HDR_METRICS]
    scores = {'gain': align_scale(pred.astype(np.float64), gt.astype(np.float64), settings.align)[1]}
    if hdr_names:
        scores.update(compute_hdr_metrics(pred, gt, hdr_names, lq=lq, **settings.hdr_options()))
    if LPIPS_NAME in settings.metrics:
        from llmhdr_basicsr.metrics.lpips_metric import calculate_lpips

        scores[LPIPS_NAME] = calculate_lpips(pred, gt, net=settings.lpips_net, weights=settings.lpips_weights,
                                             domain='hdr', align=settings.align, crop_border=settings.crop_border,
                                             device=settings.device)  # fmt: skip
    return scores


def score_tonemapped(ldr: np.ndarray, hdr: np.ndarray, settings: EvalSettings, ref: np.ndarray | None = None) -> dict:
    """The selected tone-mapping metrics of one tone-mapped image (``--direction hdr2ldr``).

    Args:
        ldr: ``(H, W, 3)`` float32 tone-mapped image, display-referred in [0, 1].
        hdr: ``(H, W, 3)`` float32 linear HDR it was made from, any scale, same size.
        settings: metric selection (:data:`TMO_METRIC_INFO` names) and ``crop_border``.
        ref: reference LDR ``(H, W, 3)`` in [0, 1], for PSNR and SSIM.

    Returns:
        ``{metric: score, ...}``.
    """
    if ldr.shape != hdr.shape:
        raise ValueError(f'shapes differ: tone-mapped image {ldr.shape} vs HDR {hdr.shape}')
    if ref is not None and ref.shape != ldr.shape:
        raise ValueError(f'shapes differ: tone-mapped image {ldr.shape} vs reference LDR {ref.shape}')
    import llmhdr_basicsr.plugin  # noqa: F401  (basicsr before tmqi_metric, which imports it)
    from llmhdr_basicsr.metrics.tmqi_metric import compute_tmo_metrics

    return compute_tmo_metrics(ldr, hdr, settings.metrics, ref=ref, crop_border=settings.crop_border)


def evaluate(pairs: Sequence[tuple[str, str, str]], settings: EvalSettings, progress: bool = True) -> EvalResult:
    """Score every ``(name, pred_path, gt_path)``; unreadable or mismatched pairs are recorded as failures."""
    from tqdm import tqdm

    result = EvalResult()
    bar = tqdm(pairs, unit='pair', disable=not progress, file=sys.stderr)
    for name, pred_path, gt_path in bar:
        bar.set_description(name)
        try:
            if settings.direction == 'hdr2ldr':
                ref = read_ldr(_ldr_path(settings.ref_ldr_dir, name, '--ref-ldr')) if settings.ref_ldr_dir else None
                scores = score_tonemapped(read_ldr(pred_path), read_hdr(gt_path), settings, ref)
            else:
                lq = read_ldr(_ldr_path(settings.ldr_dir, name)) if settings.ldr_dir else None
                scores = score_pair(read_hdr(pred_path), read_hdr(gt_path), settings, lq)
        except (OSError, ValueError, RuntimeError) as err:
            result.failed.append((name, f'{type(err).__name__}: {err}'))
            tqdm.write(f'WARNING: {name} not scored: {err}', file=sys.stderr)
            continue
        result.rows.append({'image': name, 'pred': pred_path, 'gt': gt_path, **scores})
    return result


def _ldr_path(ldr_dir: str, name: str, option: str = '--ldr') -> str:
    """The LDR image of the pair ``name`` in ``ldr_dir`` (matched by stem, any image extension)."""
    for path in list_images(ldr_dir, IMAGE_EXTENSIONS):
        if osp.splitext(osp.basename(path))[0] == name:
            return path
    need = 'PSNR and SSIM' if option == '--ref-ldr' else 'the clipped-region metrics'
    raise ValueError(f'{option} {ldr_dir}: no LDR image with the stem {name!r} (needed for {need})')


# -------------------------------------------------------------------------------------------------- output
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return 'not installed'


def protocol_lines(settings: EvalSettings) -> list[tuple[str, str]]:
    """The header describing how the numbers were obtained."""
    import llmhdr_basicsr.plugin  # noqa: F401  (basicsr before hdr_metric, which imports it)
    from llmhdr_basicsr.metrics.hdr_metric import ALIGN_MIN_REL, MAX_PSNR
    from llmhdr_basicsr.version import __version__

    if settings.direction == 'hdr2ldr':
        return _tmo_protocol_lines(settings, __version__, MAX_PSNR)
    align_text = {
        'geomean': f'prediction x exp(mean(log Y_gt - log Y_pred)) over pixels above {ALIGN_MIN_REL:g} x each max',
        'median': f'prediction x exp(median(log Y_gt - log Y_pred)) over pixels above {ALIGN_MIN_REL:g} x each max',
        'max': 'prediction x max(Y_gt) / max(Y_pred)',
        'none': 'none (prediction used as it is)',
    }[settings.align]
    lines = [
        ('llmhdr_basicsr', __version__),
        ('metrics', ', '.join(settings.metrics)),
        ('alignment', f'{settings.align}: {align_text}'),
        ('crop border', f'{settings.crop_border} px'),
    ]
    if {'psnr_mu', 'log_psnr'} & set(settings.metrics):
        lines.append(('PSNR-mu/log', f'relative to the GT maximum; mu = 5000; PSNRs capped at {MAX_PSNR:g} dB'))
    if {'pu21_psnr', 'pu21_ssim', 'cvvdp'} & set(settings.metrics):
        lines.append(('absolute', f'GT {settings.percentile:g}th luminance percentile -> {settings.peak_nits:g} cd/m2, '
                                  'same factor on the aligned prediction'))  # fmt: skip
    if {'pu21_psnr', 'pu21_ssim'} & set(settings.metrics):
        lines.append(('PU21', 'banding_glare; PSNR on RGB, SSIM on luminance, peak/range 256 (pu21_metric.m)'))
    if {'pu21_psnr_clip', 'log2_ratio_clip'} & set(settings.metrics):
        from llmhdr_basicsr.metrics.hdr_metric import CLIP_THRESHOLD

        lines.append(('clipped', f'pixels of the LDR input (--ldr {settings.ldr_dir}) with a channel >= '
                                 f'{CLIP_THRESHOLD:g}; same alignment and absolute scaling'))  # fmt: skip
    if 'cvvdp' in settings.metrics:
        lines.append(('cvvdp', f'{_version("cvvdp")}, display {settings.display}, device {settings.device}'))
    if LPIPS_NAME in settings.metrics:
        lines.append(('LPIPS', f'net {settings.lpips_net}, mu-law of GT-max-normalised images in [-1, 1], '
                               f'backbone {settings.lpips_weights or "$LLMHDR_LPIPS_BACKBONE"}'))  # fmt: skip
    return lines


def _tmo_protocol_lines(settings: EvalSettings, version: str, max_psnr: float) -> list[tuple[str, str]]:
    """The header of ``--direction hdr2ldr``."""
    lines = [
        ('llmhdr_basicsr', version),
        ('direction', 'hdr2ldr: tone-mapped LDR (--pred) against its source HDR (--gt)'),
        ('metrics', ', '.join(settings.metrics)),
        ('crop border', f'{settings.crop_border} px'),
    ]
    if {'tmqi', 'tmqi_s', 'tmqi_n'} & set(settings.metrics):
        lines.append(('TMQI', 'Yeganeh & Wang 2013: HDR Rec.709 luminance min-max normalised to [0, 2^32-1], LDR luma '
                              '0.2126R\'+0.7152G\'+0.0722B\' of 8-bit code values (sRGB-encoded); 5 scales, 11x11 '
                              'Gaussian window sigma 1.5; Q = 0.8012 S^0.3046 + 0.1988 N^0.7088'))  # fmt: skip
    if set(TMO_REF_METRICS) & set(settings.metrics):
        ref_text = (f'against the reference LDR (--ref-ldr {settings.ref_ldr_dir}), RGB in 8-bit units, peak/range '
                    f'255; SSIM Wang 2004 per channel; PSNR capped at {max_psnr:g} dB')  # fmt: skip
        lines.append(('PSNR/SSIM', ref_text))
    return lines


def _info(metric: str) -> tuple[str, str, str]:
    """``(label, unit, better)`` of a metric column of either direction."""
    return METRIC_INFO.get(metric) or TMO_METRIC_INFO.get(metric) or (metric, '', 'higher')


def format_table(summary: dict[str, dict[str, float]], metrics: Sequence[str]) -> str:
    """Summary table: one row per metric with mean, std, n and the better direction."""
    rows = [('metric', 'mean', 'std', 'n', 'better')]
    for m in metrics:
        if m in summary:
            label, unit, better = _info(m)
            s = summary[m]
            name = f'{label} [{unit}]' if unit else label
            rows.append((name, f'{s["mean"]:.4f}', f'{s["std"]:.4f}', str(s['n']), better))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ['  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def write_csv(path: str, result: EvalResult, metrics: Sequence[str]) -> None:
    """Per-image CSV: ``image, pred, gt, gain, <metrics...>`` (no ``gain`` column when the rows have none: hdr2ldr)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    gain = ['gain'] if result.rows and 'gain' in result.rows[0] else []
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['image', 'pred', 'gt', *gain, *metrics])
        for r in result.rows:
            writer.writerow([r['image'], r['pred'], r['gt'], *(f'{r[g]:.6g}' for g in gain),
                             *(f'{r[m]:.6f}' for m in metrics)])  # fmt: skip


def write_plot(path: str, result: EvalResult, metrics: Sequence[str]) -> None:
    """PU21-PSNR vs JOD scatter when both were computed, else per-image bars of the first metric (matplotlib Agg)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = [r['image'] for r in result.rows]
    if 'pu21_psnr' in metrics and 'cvvdp' in metrics:
        fig, ax = plt.subplots(figsize=(6, 5))
        x = [r['pu21_psnr'] for r in result.rows]
        y = [r['cvvdp'] for r in result.rows]
        ax.scatter(x, y)
        for xi, yi, n in zip(x, y, names):
            ax.annotate(n, (xi, yi), fontsize=7, xytext=(3, 3), textcoords='offset points')
        ax.set_xlabel('PU21-PSNR [dB]')
        ax.set_ylabel('ColorVideoVDP [JOD]')
    else:
        m = metrics[0]
        label, unit, _ = _info(m)
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.5))
        ax.barh(names, [r[m] for r in result.rows])
        ax.invert_yaxis()
        ax.set_xlabel(f'{label} [{unit}]' if unit else label)
    ax.set_title(f'{len(names)} image(s)')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``llmhdr-eval``."""
    p = argparse.ArgumentParser(
        prog='llmhdr-eval',
        description='Score predicted HDR images against ground truth (PU21, ColorVideoVDP, PSNR-mu, log-PSNR, LPIPS), '
        'or tone-mapped images against their source HDR (--direction hdr2ldr: TMQI, + PSNR/SSIM with --ref-ldr).',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument('--direction', choices=DIRECTIONS, default='ldr2hdr',
                   help='ldr2hdr: --pred holds predicted HDR files; hdr2ldr: --pred holds tone-mapped LDR images '
                        '(8/16-bit PNG, JPEG, TIFF) and --gt their source HDR files')  # fmt: skip
    p.add_argument('--pred', required=True, help='folder of predicted linear HDR files (hdr2ldr: tone-mapped LDR)')
    p.add_argument('--gt', required=True, help='folder of ground-truth linear HDR files (hdr2ldr: the source HDR)')
    p.add_argument('--pred-suffix', default='', help='removed from the end of prediction stems, e.g. _CycleHDR')
    p.add_argument('--gt-suffix', default='', help='removed from the end of ground-truth stems')
    p.add_argument('--ldr', help='folder of the LDR inputs (matched by stem): adds the clipped-region metrics')
    p.add_argument('--ref-ldr', help='hdr2ldr: folder of reference LDR images (matched by stem): adds psnr, ssim')
    p.add_argument('--metrics', default=None,
                   help=f'comma-separated subset of {",".join(METRIC_INFO)} (default: all HDR metrics, plus lpips '
                        f'when a backbone is given); hdr2ldr: of {",".join(TMO_METRIC_INFO)} (default: tmqi, tmqi_s, '
                        'tmqi_n, plus psnr and ssim with --ref-ldr)')  # fmt: skip
    p.add_argument('--align', choices=ALIGN_MODES, default=DEFAULT_ALIGN, help='global gain on the prediction')
    p.add_argument('--peak-nits', type=float, default=DEFAULT_PEAK_NITS, help='cd/m2 of the GT --percentile')
    p.add_argument('--percentile', type=float, default=DEFAULT_PERCENTILE, help='GT luminance percentile')
    p.add_argument('--crop-border', type=int, default=0, help='pixels removed on each side')
    p.add_argument('--display', default=CVVDP_DISPLAY, help='ColorVideoVDP display model (linear EOTF)')
    p.add_argument('--device', default='cpu', help='ColorVideoVDP / LPIPS device: cpu, auto, cuda, cuda:N')
    p.add_argument('--lpips-weights', default=None, help='local torchvision backbone checkpoint for LPIPS')
    p.add_argument('--lpips-net', default='alex', choices=('alex', 'vgg', 'squeeze'), help='LPIPS trunk')
    p.add_argument('--csv', help='per-image CSV file')
    p.add_argument('--json', help='JSON file with protocol, summary and per-image scores')
    p.add_argument('--plot', help='PNG: PU21-PSNR vs JOD scatter, or per-image bars of the first metric')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def _tmo_settings(args: argparse.Namespace) -> EvalSettings:
    """Settings of ``--direction hdr2ldr`` (the LDR -> HDR options --ldr and --lpips-weights are refused)."""
    if args.ldr:
        raise UsageError('--ldr is for --direction ldr2hdr; with hdr2ldr give reference LDR images as --ref-ldr')
    if args.lpips_weights:
        raise UsageError('--lpips-weights: LPIPS is not a --direction hdr2ldr metric')
    if args.metrics:
        metrics = list(dict.fromkeys(m.strip() for m in args.metrics.split(',') if m.strip()))
        unknown = [m for m in metrics if m not in TMO_METRIC_INFO]
        if unknown:
            raise UsageError(
                f'--metrics: unknown {unknown} for --direction hdr2ldr; choose from {list(TMO_METRIC_INFO)}'
            )
    else:
        metrics = [m for m in TMO_METRIC_INFO if args.ref_ldr or m not in TMO_REF_METRICS]
    needs_ref = [m for m in metrics if m in TMO_REF_METRICS]
    if needs_ref and not args.ref_ldr:
        raise UsageError(f'--metrics {",".join(needs_ref)} need reference LDR images: add --ref-ldr FOLDER')
    if args.ref_ldr and not osp.isdir(args.ref_ldr):
        raise UsageError(f'--ref-ldr {args.ref_ldr!r} is not a folder')
    if args.crop_border < 0:
        raise UsageError('need --crop-border >= 0')
    return EvalSettings(metrics, crop_border=args.crop_border, device='cpu', direction='hdr2ldr',
                        ref_ldr_dir=args.ref_ldr)  # fmt: skip


def _settings(args: argparse.Namespace) -> EvalSettings:
    if args.direction == 'hdr2ldr':
        return _tmo_settings(args)
    if args.ref_ldr:
        raise UsageError('--ref-ldr is for --direction hdr2ldr (reference LDR renderings of the HDR files)')
    import llmhdr_basicsr.plugin  # noqa: F401  (basicsr before hdr_metric, which imports it)
    from llmhdr_basicsr.metrics.hdr_metric import HDR_METRICS
    from llmhdr_basicsr.utils.device import select_device

    lpips_given = bool(args.lpips_weights or os.environ.get('LLMHDR_LPIPS_BACKBONE', '').strip())
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
        unknown = [m for m in metrics if m not in METRIC_INFO]
        if unknown:
            raise UsageError(f'--metrics: unknown {unknown}; choose from {list(METRIC_INFO)}')
        metrics = list(dict.fromkeys(metrics))
    else:
        metrics = [m for m, spec in HDR_METRICS.items() if args.ldr or not spec.needs_lq]
        metrics += [LPIPS_NAME] if lpips_given else []
    needs_ldr = [m for m in metrics if m in HDR_METRICS and HDR_METRICS[m].needs_lq]
    if needs_ldr and not args.ldr:
        raise UsageError(f'--metrics {",".join(needs_ldr)} need the LDR inputs: add --ldr FOLDER')
    if args.ldr and not osp.isdir(args.ldr):
        raise UsageError(f'--ldr {args.ldr!r} is not a folder')
    if args.peak_nits <= 0 or not 0 < args.percentile <= 100 or args.crop_border < 0:
        raise UsageError('need --peak-nits > 0, --percentile in (0, 100] and --crop-border >= 0')
    try:
        device = str(select_device(args.device))
    except ValueError as err:
        raise UsageError(str(err)) from err
    settings = EvalSettings(metrics, args.align, args.peak_nits, args.percentile, args.crop_border, args.display,
                            device, args.lpips_net, args.lpips_weights, args.ldr)  # fmt: skip
    if LPIPS_NAME in metrics:  # fail before the loop, with the message that says which file to provide
        try:
            from llmhdr_basicsr.metrics.lpips_metric import get_lpips
        except ImportError as err:
            raise UsageError(f'LPIPS is not available ({err}); drop lpips from --metrics') from err
        try:
            get_lpips(args.lpips_net, args.lpips_weights, device, option='--lpips-weights')
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from err
    if 'cvvdp' in metrics:
        import llmhdr_basicsr.plugin  # noqa: F401  (basicsr before hdr_metric, which imports it)
        from llmhdr_basicsr.metrics.hdr_metric import get_cvvdp

        try:
            get_cvvdp(args.display, device)
        except (ImportError, ValueError) as err:
            raise UsageError(f'{err}; or drop cvvdp from --metrics') from err
    return settings


def run(args: argparse.Namespace) -> int:
    """Run ``llmhdr-eval`` with parsed arguments; returns the exit status (raises :class:`UsageError`)."""
    settings = _settings(args)
    pairs, unmatched_pred, unmatched_gt = match_pairs(args.pred, args.gt, args.pred_suffix, args.gt_suffix,
                                                      settings.direction)  # fmt: skip
    header = [('pred', f'{args.pred}' + (f' (stem suffix {args.pred_suffix!r} removed)' if args.pred_suffix else '')),
              ('gt', f'{args.gt}' + (f' (stem suffix {args.gt_suffix!r} removed)' if args.gt_suffix else '')),
              ('pairs', f'{len(pairs)} matched, {len(unmatched_pred)} prediction(s) and {len(unmatched_gt)} '
                        'ground truth(s) unmatched'),
              *protocol_lines(settings)]  # fmt: skip
    width = max(len(k) for k, _ in header)
    for k, v in header:
        print(f'{k:<{width}} : {v}')
    if unmatched_pred or unmatched_gt:
        stream = sys.stdout if not pairs else sys.stderr
        print('Unmatched files (matched by stem):', file=stream)
        for path in unmatched_pred:
            print(f'  prediction without ground truth: {path}', file=stream)
        for path in unmatched_gt:
            print(f'  ground truth without prediction: {path}', file=stream)
    if not pairs:
        print(f'{"llmhdr-eval"}: error: no prediction matched a ground-truth file by stem', file=sys.stderr)
        return 1
    result = evaluate(pairs, settings, progress=not args.quiet)
    summary = result.summary(settings.metrics)
    print()
    print(format_table(summary, settings.metrics))
    if result.failed:
        print(f'\nNot scored ({len(result.failed)}):')
        for name, reason in result.failed:
            print(f'  {name}: {reason}')
    if not result.rows:
        return 1
    if args.csv:
        write_csv(args.csv, result, settings.metrics)
        print(f'per-image scores: {args.csv}')
    if args.json:
        payload = {
            'protocol': dict(protocol_lines(settings)),
            'settings': settings.__dict__,
            'pred': args.pred,
            'gt': args.gt,
            'summary': summary,
            'per_image': result.rows,
            'failed': [{'image': n, 'reason': r} for n, r in result.failed],
            'unmatched_pred': unmatched_pred,
            'unmatched_gt': unmatched_gt,
        }
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(payload, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
        print(f'summary: {args.json}')
    if args.plot:
        write_plot(args.plot, result, settings.metrics)
        print(f'plot: {args.plot}')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``llmhdr-eval``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
