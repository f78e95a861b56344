"""Put a trained ``options/llmhdr_cpu.yml`` run into the package as the model that ships with it.

Copies both generators of the run (``net_g_<iter>.pth``: G_Y, ``net_g_hdr2ldr_<iter>.pth``: G_X) into
``llmhdr_basicsr/pretrained/`` as inference checkpoints (``{'params', 'arch'}``: no optimiser, no EMA, float32), and
writes ``cyclehdr_cpu.json`` with the recipe's digest, the training command, the iteration and what was measured
(``--scores``: an ``llmhdr-eval --json`` file; ``--note KEY=VALUE``: anything else, e.g. the wall time).

Usage (from the repository root, after training)::

    python -m llmhdr_basicsr.train -opt options/llmhdr_cpu.yml
    llmhdr-infer -i datasets/example/val_ldr -o results/bundled --weights experiments/llmhdr_cpu/models/net_g_latest.pth
    llmhdr-eval --pred results/bundled --gt datasets/example/val_hdr --ldr datasets/example/val_ldr --json val.json
    python scripts/bundle_model.py --experiment experiments/llmhdr_cpu --scores val.json --note train_minutes=19.5

A test compares the recorded digest with the current option file: after a change of the recipe, retrain and rerun
this script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import os.path as osp
import sys

import torch
import yaml

from llmhdr_basicsr.infer import load_checkpoint, save_inference_checkpoint
from llmhdr_basicsr.pretrained import CHECKPOINTS, HERE, METADATA, recipe_digest

NETWORK_FILES = {'ldr2hdr': 'net_g', 'hdr2ldr': 'net_g_hdr2ldr'}


def parse_note(text: str) -> tuple[str, object]:
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(f'--note {text!r}: expected KEY=VALUE')
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--experiment', required=True, help='the run folder (experiments/<name>)')
    p.add_argument('--opt', default='options/llmhdr_cpu.yml', help='the option file it was trained with')
    p.add_argument('--iter', default='latest', help='checkpoint iteration (latest or a number)')
    p.add_argument('--command', default='python -m llmhdr_basicsr.train -opt options/llmhdr_cpu.yml')
    p.add_argument('--scores', help='llmhdr-eval --json file of the bundled G_Y on the validation set')
    p.add_argument('--note', type=parse_note, action='append', default=[], help='KEY=VALUE recorded as measured')
    p.add_argument('--out', default=HERE, help='destination folder (default: the package)')
    args = p.parse_args(argv)

    with open(args.opt, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    os.makedirs(args.out, exist_ok=True)
    for direction, stem in NETWORK_FILES.items():
        src = osp.join(args.experiment, 'models', f'{stem}_{args.iter}.pth')
        if not osp.isfile(src):
            print(f'error: {src} does not exist; train first (--experiment, --iter)', file=sys.stderr)
            return 1
        state, arch, _ = load_checkpoint(src, 'params')
        if arch is None:
            print(f'error: {src} does not record its architecture (train with this plugin)', file=sys.stderr)
            return 1
        arch_opt = {'type': arch['type'], **(arch.get('kwargs') or {})}
        save_inference_checkpoint(osp.join(args.out, CHECKPOINTS[direction]), state, arch_opt)
        print(f'{src} -> {osp.join(args.out, CHECKPOINTS[direction])}')

    if args.iter == 'latest':  # the newest complete training state names the iteration of the *_latest files
        states = osp.join(args.experiment, 'training_states')
        names = [f.rsplit('.', 1)[0] for f in os.listdir(states)] if osp.isdir(states) else []
        iteration = max((int(n) for n in names if n.isdigit()), default=None)
    else:
        iteration = int(args.iter)
    meta = {
        'recipe': args.opt,
        'recipe_digest': recipe_digest(opt),
        'command': args.command,
        'iteration': iteration,
        'data': 'datasets/example (train_ldr, train_hdr; licences in datasets/example/LICENSES_*.md)',
        'bundled': datetime.date.today().isoformat(),
        'torch': torch.__version__,
        **dict(args.note),
    }
    if args.scores:
        with open(args.scores, encoding='utf-8') as f:
            meta['scores'] = json.load(f).get('summary')
    with open(osp.join(args.out, METADATA), 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write('\n')
    print(f'wrote {osp.join(args.out, METADATA)} (recipe digest {meta["recipe_digest"]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
