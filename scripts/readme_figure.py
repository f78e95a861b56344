"""Make the README picture: LDR input | reconstruction by a trained G_Y | linearised input | ground truth.

Every HDR panel is shown with the same tone operator (Reinhard 2002 global, key 0.18, sRGB) after the scale alignment
the metrics use (geometric-mean luminance gain, :func:`llmhdr_basicsr.metrics.hdr_metric.align_scale`), so the panels
differ only in what the methods did. The reconstruction runs through ``llmhdr-infer``'s code path (untiled, CPU), as
the benchmark scores it.

Usage (after ``benchmarks/quality.py``, which saves its trained networks and options)::

    python scripts/readme_figure.py --weights <work>/experiments/quality_benchmark/models/net_g_latest.pth \\
        -opt <work>/experiments/quality_benchmark/options.yml \\
        --ldr <work>/split/test_ldr/openexr_Cannon.png --gt <work>/split/test_gt/openexr_Cannon.hdr \\
        --out docs/readme_example.jpg
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
import torch

from llmhdr_basicsr.infer import Reconstructor, load_network
from llmhdr_basicsr.metrics.hdr_metric import align_scale
from llmhdr_basicsr.utils.hdr_io import read_hdr, read_ldr, write_ldr
from llmhdr_basicsr.utils.tonemap import srgb_decode, tonemap_preview


def preview(hdr: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` linear HDR -> ``(H, W, 3)`` display-referred [0, 1] (Reinhard 2002, sRGB)."""
    return tonemap_preview(torch.from_numpy(hdr).permute(2, 0, 1)[None], 'reinhard')[0].permute(1, 2, 0).numpy()


def label(img: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of a display-referred ``(H, W, 3)`` image (white on a dark band)."""
    out = img.copy()
    scale = max(0.4, img.shape[1] / 900)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    out[: h + base + 8, : w + 12] *= 0.35
    cv2.putText(out, text, (6, h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (1.0, 1.0, 1.0), 1, cv2.LINE_AA)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--weights', required=True, help='net_g checkpoint (G_Y)')
    p.add_argument('-opt', help='option file the checkpoint was trained with (architecture)')
    p.add_argument('--ldr', required=True, help='LDR input image')
    p.add_argument('--gt', help='HDR ground truth of the same scene (optional panel)')
    p.add_argument('--out', required=True, help='output image (.jpg or .png)')
    p.add_argument('--width', type=int, default=480, help='width of each panel in pixels')
    p.add_argument('--cols', type=int, default=2, help='panels per row')
    args = p.parse_args(argv)

    ldr = read_ldr(args.ldr)
    rec = Reconstructor(load_network('ldr2hdr', args.weights, args.opt), 'ldr2hdr', torch.device('cpu'), tile=0)
    with torch.no_grad():
        pred = rec(ldr)
    linear = srgb_decode(torch.from_numpy(ldr)).numpy()
    panels = [(ldr, 'LDR input')]
    ref = read_hdr(args.gt) if args.gt else pred
    panels.append((preview(align_scale(pred, ref)[0]), 'CycleHDR (ours)'))
    panels.append((preview(align_scale(linear, ref)[0]), 'linearised (inverse sRGB)'))
    if args.gt:
        panels.append((preview(ref), 'ground truth'))
    h = round(ldr.shape[0] * args.width / ldr.shape[1])
    tiles = [
        label(cv2.resize(img.astype(np.float32), (args.width, h), interpolation=cv2.INTER_AREA), t) for img, t in panels
    ]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % args.cols)
    rows = [np.concatenate(tiles[i : i + args.cols], axis=1) for i in range(0, len(tiles), args.cols)]
    row = np.concatenate(rows, axis=0)
    write_ldr(args.out, np.clip(row, 0, 1))
    print(f'wrote {args.out} ({row.shape[1]}x{row.shape[0]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
