"""``llmhdr-tonemap``: tone-map HDR images to 8/16-bit sRGB PNGs, with the trained G_X or a classical operator.

Usage::

    llmhdr-tonemap -i scenes/ -o ldr/                                        # G_X of the model bundled with the package
    llmhdr-tonemap -i scenes/ -o ldr/ --weights net_g_hdr2ldr_200000.pth -opt options/llmhdr.yml   # the paper's TMO
    llmhdr-tonemap -i scenes/ -o ldr/ --operator reinhard --stops 0.5                             # classical

(also ``python -m llmhdr_basicsr.tonemap_cli``). With a network this is exactly ``llmhdr-infer --direction hdr2ldr``
(same options; inputs normalised as in training, 99.5th luminance percentile -> 1, then mu-law with the generator's
headroom; see :mod:`llmhdr_basicsr.infer`). ``--operator reinhard|exposure|mu`` runs the classical operators of
:func:`llmhdr_basicsr.utils.tonemap.tonemap_preview` instead (Reinhard et al. 2002 global with key 0.18; exposure
with the 99th luminance percentile at white; mu-law of the max-normalised image), all scale-invariant, so the input's
absolute scale does not matter. Outputs: ``<stem><suffix>.png`` (or ``.tif``), display-referred sRGB.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from llmhdr_basicsr import infer
from llmhdr_basicsr.infer import SkipImage, UsageError
from llmhdr_basicsr.utils.defaults import PREVIEW_OPERATORS
from llmhdr_basicsr.utils.hdr_io import read_image, write_ldr


def build_parser() -> argparse.ArgumentParser:
    """``llmhdr-infer``'s parser with the direction fixed to hdr2ldr, plus ``--operator`` / ``--stops``."""
    p = infer.build_parser(prog='llmhdr-tonemap', tonemap=True)
    op = p.add_argument_group('classical operator (instead of a network)')
    op.add_argument('--operator', choices=PREVIEW_OPERATORS, help='tone-map with this operator; no network needed')
    op.add_argument('--stops', type=float, default=0.0, help='exposure shift in stops (with --operator)')
    return p


def operator_handler(args: argparse.Namespace) -> Callable[[str, str], list[str]]:
    """Per-file function: read float HDR, apply ``args.operator``, write ``<stem>.<ext>``."""
    import torch

    from llmhdr_basicsr.utils.tonemap import tonemap_preview

    def handle(path: str, stem: str) -> list[str]:
        img, is_hdr = read_image(path)
        if not is_hdr:
            raise SkipImage('is an 8/16-bit LDR image; tone mapping needs float HDR input (.hdr, .exr, .pfm, .tif)')
        target = f'{stem}.{args.ext}'
        infer.check_not_input(target, path)
        x = torch.from_numpy(img).permute(2, 0, 1)[None]
        ldr = tonemap_preview(x, args.operator, args.stops)[0].permute(1, 2, 0).numpy()
        write_ldr(target, ldr, bit_depth=args.bit_depth)
        return [target]

    return handle


def run(args: argparse.Namespace) -> int:
    """Run ``llmhdr-tonemap``; returns the exit status (raises :class:`~llmhdr_basicsr.infer.UsageError`)."""
    args.direction = 'hdr2ldr'
    if not args.operator:
        if args.stops:
            raise UsageError('--stops applies to --operator only (the network has no exposure parameter)')
        return infer.run(args)
    if args.weights or args.opt or args.arch:
        raise UsageError('--operator runs a classical tone curve: do not pass --weights, -opt or --arch with it')
    inputs = infer.collect_inputs(args.input, 'hdr2ldr')
    infer.print_header([
        ('direction', 'hdr2ldr'),
        ('operator', f'{args.operator} (llmhdr_basicsr.utils.tonemap.tonemap_preview), {args.stops:+g} stops'),
        ('output', f'sRGB {args.bit_depth}-bit .{args.ext}'),
        ('inputs', f'{len(inputs)} file(s) from {args.input}'),
    ])  # fmt: skip
    os.makedirs(args.output, exist_ok=True)
    summary = infer.process_files(inputs, args.output, args.suffix, operator_handler(args), args.quiet)
    return infer.report(summary, len(inputs), args.output)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``llmhdr-tonemap``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    try:
        return run(args)
    except (UsageError, ValueError) as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
