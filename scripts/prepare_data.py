#!/usr/bin/env python
"""Data preparation for llmhdr_basicsr: unpaired splits, sub-image crops and LDR synthesised from HDR.

Sub-commands (``python scripts/prepare_data.py <command> -h`` for the options):

- ``split``: a paired LDR/HDR dataset -> the unpaired training layout (this project's recipe; the paper gives none: two
  DISJOINT halves of the scenes, LDRs from one and HDRs from the other) plus a held-out paired test set::

      OUT/train_ldr/   LDR images of the LDR-half scenes (and of scenes that only have an LDR)
      OUT/train_hdr/   HDR images of the HDR-half scenes (and of scenes that only have an HDR)
      OUT/test_ldr/    LDR inputs of the held-out scenes
      OUT/test_gt/     their ground-truth HDR, named after the LDR stem (one copy per LDR of the scene)
      OUT/meta_info_train_ldr.txt, meta_info_train_hdr.txt   one file name per line (BasicSR reads token 0)
      OUT/meta_info_test.txt                                 "<ldr file> <gt file>" per line
      OUT/split.json   seed, options, the scenes and the source -> destination of every file
      OUT/cameras.json, cameras.csv   cameras of synthesised LDRs (--synth-missing-ldr only)

  A scene is identified by its key: the file stem, or the named group ``scene`` (else group 1) of a regular expression
  matched against the path relative to the group's folder without extension (``--scene-regex``), so multi-exposure
  names like ``scene_ev-2`` stay together. A scene never appears in two of train_ldr / train_hdr / test.
- ``crop``: sub-images (tiles) of large images, as BasicSR's ``scripts/data_preparation/extract_subimages.py``
  (size, step, threshold size) but float-safe: HDR tiles are written as float32 OpenEXR by default (never
  quantised), LDR tiles keep their 8/16-bit code values (PNG by default).
- ``store``: a prepared training store (:mod:`llmhdr_basicsr.data.training_store`): tiles as ``crop`` plus, per
  source frame, the statistics the datasets compute on the whole frame (``hdr_norm`` scale, virtual-camera exposure
  statistic, digest, whole-frame LDR thumbnail) and a meta-info file; resumable. ``dataroot_hdr`` / ``dataroot_ldr``
  pointed at it make every tile behave as its whole frame (docs/datasets.md).
- ``synth``: LDR images synthesised from an HDR folder with random virtual cameras
  (:mod:`llmhdr_basicsr.utils.camera`: random exposure so 2-16 % of the pixels clip, gamma / sigmoid camera curves,
  8-bit quantisation, optional white-balance jitter and JPEG), the parameters of each image in a JSON + CSV record;
  ``--gt-out`` also places the source HDR next to each LDR as ground truth (a paired test folder).
- ``convert``: a paper-scale dataset as distributed (``--format hdrtv|ntire|hdr-real|hdr-synth|gta-hdr``,
  :mod:`llmhdr_basicsr.data.hdr_datasets`) -> the project's layout ``OUT/hdr/<name>.exr`` (linear float32, BT.709,
  decoded from 16-bit PQ / alignment-ratio PNGs; float HDR files are placed as they are) + ``OUT/ldr/<name>.<ext>``
  (the LDR inputs as they are) + ``OUT/convert.json``; ``split --ldr OUT/ldr --hdr OUT/hdr`` or
  ``example --data OUT`` take it from there (docs/datasets.md).
- ``example``: all of the above on the curated sample images (``--data``, default ``../shared/data`` relative to the
  repository root): the LDR photographs + half of the HDR scenes for unpaired training, LDRs synthesised from the
  other half (scenes NOT in train_hdr), and a paired held-out test folder (synthesised LDR + GT HDR).

Per-image randomness is drawn from ``numpy.random.default_rng([seed, crc32(output name)])``: the same seed gives the
same camera for the same file, independent of the order or of the other files in the folder.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import glob
import json
import os
import os.path as osp
import re
import shutil
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from llmhdr_basicsr.data import hdr_datasets as hd
from llmhdr_basicsr.data import training_store as ts
from llmhdr_basicsr.data.hdr_transforms import DEFAULT_HDR_NORM, parse_hdr_norm
from llmhdr_basicsr.data.training_store import tile_starts, write_tiles  # noqa: F401 (tile_starts: public here too)
from llmhdr_basicsr.utils import camera as cam
from llmhdr_basicsr.utils.hdr_io import (
    HDR_EXTENSIONS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    read_hdr,
    read_image_raw,
    sanitize_hdr,
    write_hdr,
    write_ldr,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PARTS = ('train_ldr', 'train_hdr', 'test_ldr', 'test_gt')
VAL_PARTS = ('val_ldr', 'val_gt')
LINK_MODES = ('copy', 'symlink', 'hardlink')


# ----------------------------------------------------------------------------------------------------------------------
# Dataset layout presets
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """Where a dataset keeps its LDR and HDR files, relative to ``--root``.

    ``ldr`` / ``hdr`` are ``(group, glob)`` pairs; files of a non-empty group get the group as a name prefix and
    a scene-key namespace (so ``HDR-Synth/.../0001`` and ``HDR-Real/.../0001`` are different scenes). The regexes give
    the scene key (module docstring). These layouts are ASSUMPTIONS about the public releases (the paper gives only
    the names); check them against your copy and override with --scene-regex or plain --ldr/--hdr folders.
    """

    name: str
    ldr: tuple[tuple[str, str], ...]
    hdr: tuple[tuple[str, str], ...]
    ldr_regex: str | None
    hdr_regex: str | None
    layout: str


PRESETS = {
    p.name: p
    for p in (
        Preset(
            'hdr-synth-real',
            (('real', 'HDR-Real/LDR_in/*'),),
            (('synth', 'HDR-Synth/**/*'), ('real', 'HDR-Real/HDR_gt/*')),
            None,
            None,
            'SingleHDR (Liu et al. CVPR 2020): ROOT/HDR-Real/{LDR_in,HDR_gt}/<id>.{jpg,hdr} paired by stem; '
            'ROOT/HDR-Synth/<collection>/.../<name>.{hdr,exr} (HDR only: add --synth-missing-ldr to draw its LDRs with '
            'random cameras; HDR-Synth names repeat across collections: convert --format hdr-synth names them by path)',
        ),
        Preset(
            'hdrtv',
            (('', 'training_set/train_sdr/*'),),
            (('', 'training_set/train_hdr/*'),),
            None,
            None,
            'HDRTV1K (Chen et al. ICCV 2021): ROOT/training_set/{train_sdr,train_hdr}/<id>.png paired by stem. The HDR '
            'files are 16-bit PQ / BT.2020 PNGs (HDR10), not linear float: split copies them as they are, so run '
            'convert --format hdrtv --root ROOT --out DIR first (linear BT.709 EXR) and split --ldr DIR/ldr --hdr '
            'DIR/hdr. The official test set: convert --format hdrtv --subset test',
        ),
        Preset(
            'ntire',
            (('', '*_medium.png'),),
            (('', '*_gt.png'),),
            r'^(?P<scene>.+)_medium$',
            r'^(?P<scene>.+)_gt$',
            'NTIRE 2021 HDR challenge, single-frame track: ROOT/<id>_medium.png (LDR input) and ROOT/<id>_gt.png '
            '(16-bit PNG; linear HDR = (png / <id>_alignratio.npy) ** 2.24). The *_alignratio.npy files are copied '
            'next to the GT files they belong to; convert --format ntire decodes them to linear EXR instead',
        ),
        Preset(
            'drtmo',
            (('', 'LDR/*'),),
            (('', 'HDR/*'),),
            r'^(?P<scene>.+?)(_ev[-+]?\d+(\.\d+)?)?$',
            None,
            'DrTMO (Endo et al. SIGGRAPH Asia 2017): ROOT/HDR/<scene>.{hdr,exr} and ROOT/LDR/<scene>_ev<EV>.{png,jpg} '
            '(several exposures per scene, kept together)',
        ),
        Preset(
            'gta-hdr',
            (('', 'LDR/*'),),
            (('', 'HDR/*'),),
            r'^(?P<scene>.+)_[^_]+$',
            None,
            'GTA-HDR (Barua et al. WACV 2025): ROOT/HDR/<scene>.{hdr,exr} and ROOT/LDR/<scene>_<variant>.{png,jpg} '
            '(several LDR variants per scene, kept together)',
        ),
    )
}
SIDECARS = {'ntire': ('{scene}_alignratio.npy',)}


def _preset_help() -> str:
    return '\n'.join(f'  {p.name}: {p.layout}' for p in PRESETS.values())


# ----------------------------------------------------------------------------------------------------------------------
# Collecting files and scenes
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One image file: ``path`` (source), ``name`` (output file name), ``scene`` (scene key), ``kind``."""

    path: str
    name: str
    scene: str
    kind: str  # 'ldr' | 'hdr'


def _is_image(path: str) -> bool:
    return (
        osp.isfile(path)
        and not osp.basename(path).startswith('.')
        and osp.splitext(path)[1].lower() in IMAGE_EXTENSIONS
    )


def scene_key(rel_noext: str, regex: re.Pattern | None) -> str:
    """Scene key of a file: group ``scene`` (else group 1, else the whole match) of ``regex`` on the relative path
    without extension; the path's stem when there is no regex or it does not match."""
    if regex is not None:
        m = regex.search(rel_noext)
        if m:
            groups = m.groupdict()
            key = groups.get('scene') if 'scene' in groups else (m.group(1) if m.re.groups else m.group(0))
            if key:
                return key
    return osp.basename(rel_noext)


def collect(groups: Sequence[tuple[str, str]], root: str, kind: str, regex: re.Pattern | None) -> list[Item]:
    """Files matched by ``(group, glob)`` pairs under ``root`` (sorted), with output names and scene keys."""
    items = []
    for group, pattern in groups:
        full = osp.join(root, pattern)
        base = osp.dirname(full.split('*')[0]) if '*' in full else full
        if osp.isdir(full):
            full, base = osp.join(full, '*'), full
        for path in sorted(glob.glob(full, recursive=True)):
            if not _is_image(path):
                continue
            rel = osp.relpath(path, base).replace(os.sep, '/')
            key = scene_key(osp.splitext(rel)[0], regex)
            name = osp.basename(path)
            items.append(Item(path, f'{group}_{name}' if group else name, f'{group}:{key}' if group else key, kind))
    _check_unique(items)
    return items


def _check_unique(items: Sequence[Item]) -> None:
    seen: dict[str, str] = {}
    for it in items:
        if it.name in seen:
            raise ValueError(f'Two inputs map to the same output name {it.name!r}: {seen[it.name]} and {it.path}')
        seen[it.name] = it.path


def _compile(regex: str | None, option: str) -> re.Pattern | None:
    if not regex:
        return None
    try:
        return re.compile(regex)
    except re.error as err:
        raise ValueError(f'{option}: invalid regular expression {regex!r}: {err}') from err


def group_by_scene(items: Sequence[Item]) -> dict[str, list[Item]]:
    scenes: dict[str, list[Item]] = {}
    for it in items:
        scenes.setdefault(it.scene, []).append(it)
    return scenes


# ----------------------------------------------------------------------------------------------------------------------
# Writing files
# ----------------------------------------------------------------------------------------------------------------------


def place(src: str, dst: str, mode: str = 'copy') -> None:
    """Copy, symlink (absolute target) or hard-link ``src`` to ``dst`` (parent folders created, ``dst`` replaced)."""
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    if osp.lexists(dst):
        os.remove(dst)
    if mode == 'copy':
        shutil.copyfile(src, dst)
    elif mode == 'symlink':
        os.symlink(osp.abspath(src), dst)
    elif mode == 'hardlink':
        try:
            os.link(src, dst)
        except OSError as err:
            raise OSError(f'Cannot hard-link {src} -> {dst} ({err}); use --mode copy or symlink') from err
    else:
        raise ValueError(f'Unknown --mode {mode!r}; choose one of {LINK_MODES}')


def write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(f'{line}\n' for line in lines)


def image_rng(seed: int, name: str) -> np.random.Generator:
    """Generator for one output file: depends only on the seed and the file name."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode('utf-8'))])


def camera_kwargs(args: argparse.Namespace) -> dict:
    """The :func:`~llmhdr_basicsr.utils.camera.random_camera` options from the command line."""
    return {
        'clip_range': tuple(args.clip_range),
        'gamma_range': tuple(args.gamma_range),
        'sigmoid_prob': args.sigmoid_prob,
        'wb_jitter': args.wb_jitter,
        'jpeg_prob': args.jpeg_prob,
        'jpeg_quality': tuple(args.jpeg_quality),
        'bit_depth': args.bit_depth,
    }


def synthesize_one(hdr_path: str, ldr_path: str, seed: int, cam_kwargs: dict) -> dict:
    """Photograph one HDR file with a random camera and write the LDR; return the record row (camera + files)."""
    hdr = read_hdr(hdr_path)
    name = osp.basename(ldr_path)
    params = cam.resolve_camera(hdr, cam.random_camera(image_rng(seed, name), **cam_kwargs))
    write_ldr(ldr_path, cam.apply_camera(hdr, params), bit_depth=params.bit_depth or 8)
    return {'file': name, 'source': osp.abspath(hdr_path), **params.to_dict()}


def write_camera_record(rows: Sequence[dict], json_path: str) -> None:
    """``rows`` as JSON (``{file: row}``) and as CSV next to it (same stem, ``.csv``)."""
    os.makedirs(osp.dirname(osp.abspath(json_path)), exist_ok=True)
    with open(json_path, 'w', encoding='utf-8') as f:
        json.dump({r['file']: r for r in rows}, f, indent=1, sort_keys=True)
    fields = ['file', 'source'] + [f.name for f in dataclasses.fields(cam.CameraParams)]
    fields += sorted({k for r in rows for k in r} - set(fields))
    with open(osp.splitext(json_path)[0] + '.csv', 'w', encoding='utf-8', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (' '.join(map(repr, v)) if isinstance(v, list) else v) for k, v in r.items()})


def _prepare_out(out: str, overwrite: bool, parts: Sequence[str]) -> None:
    busy = [p for p in parts if osp.isdir(osp.join(out, p)) and os.listdir(osp.join(out, p))]
    if busy and not overwrite:
        raise FileExistsError(
            f'{out} already holds {", ".join(busy)}; stale files would break the split. Use another --out or '
            f'--overwrite (removes those folders first).'
        )
    for p in parts:
        target = osp.join(out, p)
        if osp.isdir(target):
            shutil.rmtree(target)
        os.makedirs(target)


# ----------------------------------------------------------------------------------------------------------------------
# split
# ----------------------------------------------------------------------------------------------------------------------


def _interleave_strata(pool: Sequence[str], seed: int, stratum) -> list[str]:
    """The scenes in a seeded random order in which every prefix holds each stratum in proportion to its size."""
    groups: dict[str, list[str]] = {}
    for key in sorted(pool):
        groups.setdefault(stratum(key), []).append(key)
    rng = np.random.default_rng(seed)
    ranked = []
    for name in sorted(groups):
        members = [groups[name][i] for i in rng.permutation(len(groups[name]))]
        ranked += [((i + 0.5) / len(members), name, key) for i, key in enumerate(members)]
    return [key for _, _, key in sorted(ranked)]


def scene_prefix(key: str) -> str:
    """Stratum of a scene key: its group namespace (``group:``) or the part of its name before the first ``_``."""
    return key.split(':', 1)[0] if ':' in key else key.split('_', 1)[0]


def assign_scenes(
    pool: Sequence[str],
    test_fraction: float,
    ldr_fraction: float,
    seed: int,
    val_fraction: float = 0.0,
    stratify: bool = False,
) -> dict[str, list[str]]:
    """Shuffle the pairable scenes (seeded) and cut them into test / validation / LDR half / HDR half.

    ``n_test = round(test_fraction * n)`` (at least 1 when ``test_fraction > 0``), ``n_val = round(val_fraction * n)``
    (at least 1 when ``val_fraction > 0``), the rest split ``round(ldr_fraction * rest)`` / remainder. With
    ``stratify`` the order interleaves the scene sources (:func:`scene_prefix`), so test and validation draw from
    every source in proportion. Returns sorted lists under ``'test'``, ``'val'``, ``'ldr'``, ``'hdr'``: no scene is in
    two of them.
    """
    for name, value in (('--test-fraction', test_fraction), ('--val-fraction', val_fraction),
                        ('--ldr-fraction', ldr_fraction)):  # fmt: skip
        if not 0 <= value <= 1:
            raise ValueError(f'{name} must be in [0, 1], got {value}')
    if test_fraction + val_fraction > 1:
        raise ValueError(f'--test-fraction + --val-fraction must not exceed 1, got {test_fraction} + {val_fraction}')
    if stratify:
        order = _interleave_strata(pool, seed, scene_prefix)
    else:
        pool = sorted(pool)
        order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]

    def count(fraction: float, available: int) -> int:
        return min(available, max(int(fraction > 0 and available > 0), round(fraction * len(order))))

    n_test = count(test_fraction, len(order))
    n_val = count(val_fraction, len(order) - n_test)
    rest = order[n_test + n_val :]
    n_ldr = round(ldr_fraction * len(rest))
    return {
        'test': sorted(order[:n_test]),
        'val': sorted(order[n_test : n_test + n_val]),
        'ldr': sorted(rest[:n_ldr]),
        'hdr': sorted(rest[n_ldr:]),
    }


def run_split(
    ldr_items: Sequence[Item],
    hdr_items: Sequence[Item],
    out: str,
    *,
    test_fraction: float = 0.1,
    ldr_fraction: float = 0.5,
    seed: int = 0,
    val_fraction: float = 0.0,
    stratify: bool = False,
    mode: str = 'copy',
    synth_missing_ldr: bool = False,
    cam_kwargs: dict | None = None,
    overwrite: bool = False,
    sidecars: Sequence[str] = (),
    options: dict | None = None,
) -> dict:
    """Write the unpaired split (module docstring) and return its record (also saved as ``OUT/split.json``)."""
    if mode not in LINK_MODES:
        raise ValueError(f'Unknown --mode {mode!r}; choose one of {LINK_MODES}')
    ldr_by, hdr_by = group_by_scene(ldr_items), group_by_scene(hdr_items)
    paired = sorted(set(ldr_by) & set(hdr_by))
    ldr_only = sorted(set(ldr_by) - set(hdr_by))
    hdr_only = sorted(set(hdr_by) - set(ldr_by))
    pool = paired + (hdr_only if synth_missing_ldr else [])
    parts = assign_scenes(pool, test_fraction, ldr_fraction, seed, val_fraction, stratify)
    scenes = {
        'train_ldr': sorted(parts['ldr'] + ldr_only),
        'train_hdr': sorted(parts['hdr'] + ([] if synth_missing_ldr else hdr_only)),
        'val': parts['val'],
        'test': parts['test'],
    }
    all_parts = PARTS + (VAL_PARTS if parts['val'] else ())
    _prepare_out(out, overwrite, all_parts)
    cam_kwargs = cam_kwargs or {}
    files: dict[str, list[dict]] = {p: [] for p in all_parts}
    cameras: list[dict] = []
    pairs: dict[str, list[str]] = {'test': [], 'val': []}

    used: dict[str, set[str]] = {p: set() for p in all_parts}

    def claim(folder: str, name: str, src: str) -> None:
        if name in used[folder]:
            raise ValueError(f'{folder}/{name} would be written twice (last source {src}); check --scene-regex')
        used[folder].add(name)

    def synth(hdr_item: Item, folder: str, stem: str) -> str:
        name = f'{stem}.png'
        claim(folder, name, hdr_item.path)
        row = synthesize_one(hdr_item.path, osp.join(out, folder, name), seed, cam_kwargs)
        cameras.append({**row, 'part': folder})
        files[folder].append({'src': hdr_item.path, 'dst': name, 'scene': hdr_item.scene, 'synthesised': True})
        return name

    def put(item: Item, folder: str, name: str | None = None) -> str:
        name = name or item.name
        claim(folder, name, item.path)
        place(item.path, osp.join(out, folder, name), mode)
        files[folder].append({'src': item.path, 'dst': name, 'scene': item.scene, 'synthesised': False})
        for pattern in sidecars:
            side = osp.join(osp.dirname(item.path), pattern.format(scene=item.scene.split(':')[-1]))
            if osp.isfile(side):
                place(side, osp.join(out, folder, osp.basename(side)), mode)
        return name

    for s in scenes['train_ldr']:
        if s in ldr_by:
            for it in ldr_by[s]:
                put(it, 'train_ldr')
        else:  # an HDR-only scene drawn into the LDR half: synthesise its LDR(s)
            for it in hdr_by[s]:
                synth(it, 'train_ldr', osp.splitext(it.name)[0])
    for s in scenes['train_hdr']:
        for it in hdr_by[s]:
            put(it, 'train_hdr')
    for held_out in ('test', 'val'):  # paired held-out parts: LDR input(s) + the scene's one ground truth
        for s in scenes[held_out]:
            if len(hdr_by[s]) != 1:
                raise ValueError(
                    f'{held_out} scene {s!r} has {len(hdr_by[s])} HDR files ({", ".join(i.path for i in hdr_by[s])}); '
                    f'a paired {held_out} set needs exactly one ground truth per scene: fix --scene-regex'
                )
            gt = hdr_by[s][0]
            gt_ext = osp.splitext(gt.name)[1]
            sources = ldr_by.get(s)
            if sources:
                ldr_names = [put(it, f'{held_out}_ldr') for it in sources]
            else:
                ldr_names = [synth(gt, f'{held_out}_ldr', osp.splitext(gt.name)[0])]
            for ldr_name in ldr_names:
                gt_name = osp.splitext(ldr_name)[0] + gt_ext
                put(gt, f'{held_out}_gt', gt_name)
                pairs[held_out].append(f'{ldr_name} {gt_name}')

    write_lines(osp.join(out, 'meta_info_train_ldr.txt'), sorted(f['dst'] for f in files['train_ldr']))
    write_lines(osp.join(out, 'meta_info_train_hdr.txt'), sorted(f['dst'] for f in files['train_hdr']))
    write_lines(osp.join(out, 'meta_info_test.txt'), sorted(pairs['test']))
    if scenes['val']:
        write_lines(osp.join(out, 'meta_info_val.txt'), sorted(pairs['val']))
    if cameras:
        write_camera_record(cameras, osp.join(out, 'cameras.json'))
    record = {
        'seed': seed,
        'test_fraction': test_fraction,
        'val_fraction': val_fraction,
        'stratify': stratify,
        'ldr_fraction': ldr_fraction,
        'mode': mode,
        'synth_missing_ldr': synth_missing_ldr,
        'camera': {k: list(v) if isinstance(v, tuple) else v for k, v in cam_kwargs.items()},
        'options': options or {},
        'scenes': {**scenes, 'paired': paired, 'ldr_only': ldr_only, 'hdr_only': hdr_only},
        'files': files,
        'counts': {p: len(files[p]) for p in all_parts},
    }
    with open(osp.join(out, 'split.json'), 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1)
    return record


def _split_inputs(args: argparse.Namespace) -> tuple[list[Item], list[Item], Sequence[str]]:
    base_ldr = _compile(args.ldr_scene_regex or args.scene_regex, '--ldr-scene-regex/--scene-regex')
    base_hdr = _compile(args.hdr_scene_regex or args.scene_regex, '--hdr-scene-regex/--scene-regex')
    if args.preset:
        preset = PRESETS[args.preset]
        if not args.root or not osp.isdir(args.root):
            raise FileNotFoundError(
                f'--preset {args.preset} needs --root pointing at the dataset folder, got {args.root}'
            )
        ldr_re = base_ldr or _compile(preset.ldr_regex, 'preset')
        hdr_re = base_hdr or _compile(preset.hdr_regex, 'preset')
        ldr = collect(preset.ldr, args.root, 'ldr', ldr_re)
        hdr = collect(preset.hdr, args.root, 'hdr', hdr_re)
        sidecars = SIDECARS.get(preset.name, ())
    else:
        if not args.hdr:
            raise ValueError('split needs --hdr DIR (and usually --ldr DIR), or --preset NAME --root DIR')
        for opt, folder in (('--ldr', args.ldr), ('--hdr', args.hdr)):
            if folder and not osp.isdir(folder):
                raise FileNotFoundError(f'{opt}: folder does not exist: {folder}')
        ldr = collect([('', args.ldr)], '', 'ldr', base_ldr) if args.ldr else []
        hdr = collect([('', args.hdr)], '', 'hdr', base_hdr)
        sidecars = ()
    if not hdr and not ldr:
        raise ValueError('split: no images found (check --ldr/--hdr or --preset/--root)')
    return ldr, hdr, sidecars


def cmd_split(args: argparse.Namespace) -> int:
    ldr, hdr, sidecars = _split_inputs(args)
    record = run_split(
        ldr,
        hdr,
        args.out,
        test_fraction=args.test_fraction,
        ldr_fraction=args.ldr_fraction,
        seed=args.seed,
        mode=args.mode,
        synth_missing_ldr=args.synth_missing_ldr,
        cam_kwargs=camera_kwargs(args),
        overwrite=args.overwrite,
        sidecars=sidecars,
        options={k: v for k, v in vars(args).items() if k != 'func'},
    )
    print_split_summary(record, args.out)
    return 0


def print_split_summary(record: dict, out: str) -> None:
    sc = record['scenes']
    print(
        f'scenes: {len(sc["paired"])} paired, {len(sc["ldr_only"])} LDR-only, {len(sc["hdr_only"])} HDR-only '
        f'(seed {record["seed"]})'
    )
    for part in record['files']:
        entries = record['files'][part]
        n_syn = sum(e['synthesised'] for e in entries)
        extra = f' ({n_syn} synthesised with random cameras)' if n_syn else ''
        print(f'  {osp.join(out, part)}: {len(entries)} files{extra}')
        for e in entries:
            how = 'synthesised from' if e['synthesised'] else '<-'
            print(f'      {e["dst"]}  {how}  {e["src"]}')
    print(f'  record: {osp.join(out, "split.json")}; meta_info_*.txt next to it')


# ----------------------------------------------------------------------------------------------------------------------
# crop
# ----------------------------------------------------------------------------------------------------------------------


def _crop_one(task: tuple) -> list[dict]:
    path, out_dir, crop, step, thresh, hdr_ext, ldr_ext = task
    stem, ext = osp.splitext(osp.basename(path))
    raw = _read_native(path)
    out_ext = (hdr_ext if np.issubdtype(raw.dtype, np.floating) else ldr_ext) or ext
    rows = write_tiles(raw, stem, out_dir, crop, step, thresh, out_ext)
    return [{'tile': r['tile'], 'source': osp.abspath(path), **{k: r[k] for k in 'yxhw'}} for r in rows]


def _read_native(path: str) -> np.ndarray:
    """``(H, W, 3)`` RGB: float32 linear for HDR files, the stored uint8/uint16 codes for LDR files."""
    raw = read_image_raw(path)
    return sanitize_hdr(raw, path) if np.issubdtype(raw.dtype, np.floating) else raw


def run_crop(
    inputs: Sequence[str],
    out_dir: str,
    crop_size: int = 512,
    step: int = 256,
    thresh_size: int = 0,
    workers: int = 1,
    hdr_ext: str | None = '.exr',
    ldr_ext: str | None = '.png',
    record_path: str | None = None,
) -> list[dict]:
    """Cut every image of ``inputs`` into tiles in ``out_dir``; return (and save as JSON) one row per tile."""
    if crop_size <= 0 or step <= 0 or thresh_size < 0:
        raise ValueError(
            f'crop: need --crop-size > 0, --step > 0, --thresh-size >= 0; got {crop_size}, {step}, {thresh_size}'
        )
    if hdr_ext and hdr_ext.lower() not in HDR_EXTENSIONS:
        raise ValueError(f'--hdr-ext must be one of {HDR_EXTENSIONS}, got {hdr_ext!r}')
    os.makedirs(out_dir, exist_ok=True)
    tasks = [(p, out_dir, crop_size, step, thresh_size, hdr_ext, ldr_ext) for p in inputs]
    if workers > 1 and len(tasks) > 1:
        with Pool(min(workers, len(tasks))) as pool:
            results = pool.map(_crop_one, tasks)
    else:
        results = [_crop_one(t) for t in tasks]
    rows = [r for res in results for r in res]
    _check_unique([Item(r['source'], r['tile'], '', '') for r in rows])
    record_path = record_path or out_dir.rstrip('/\\') + '_crops.json'
    with open(record_path, 'w', encoding='utf-8') as f:
        json.dump({'crop_size': crop_size, 'step': step, 'thresh_size': thresh_size, 'tiles': rows}, f, indent=1)
    return rows


def _list_inputs(folder: str) -> list[str]:
    if not osp.isdir(folder):
        raise FileNotFoundError(f'Input folder does not exist: {folder}')
    return [osp.join(folder, n) for n in sorted(os.listdir(folder)) if _is_image(osp.join(folder, n))]


def cmd_crop(args: argparse.Namespace) -> int:
    inputs = _list_inputs(args.input)
    if args.pattern:
        inputs = [p for p in inputs if fnmatch.fnmatch(osp.basename(p), args.pattern)]
    if not inputs:
        raise ValueError(f'crop: no images in {args.input}')
    rows = run_crop(
        inputs,
        args.output,
        args.crop_size,
        args.step,
        args.thresh_size,
        args.workers,
        None if args.hdr_ext == 'same' else args.hdr_ext,
        None if args.ldr_ext == 'same' else args.ldr_ext,
        args.record,
    )
    print(f'{len(inputs)} images -> {len(rows)} tiles of <= {args.crop_size} px in {args.output}')
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# store
# ----------------------------------------------------------------------------------------------------------------------


def cmd_store(args: argparse.Namespace) -> int:
    inputs = _list_inputs(args.input)
    if args.pattern:
        inputs = [p for p in inputs if fnmatch.fnmatch(osp.basename(p), args.pattern)]
    if not inputs:
        raise ValueError(f'store: no images in --input {args.input}')
    info = ts.build_store(
        inputs,
        args.output,
        crop_size=args.crop_size,
        step=args.step,
        thresh_size=args.thresh_size,
        hdr_norm=parse_hdr_norm(args.hdr_norm, '--hdr-norm'),
        samples=args.samples,
        thumbnail_size=args.thumbnail_size,
        hdr_ext=args.hdr_ext,
        ldr_ext=args.ldr_ext,
        workers=args.workers,
        source=args.input,
    )
    print(
        f'{info["kind"].upper()} training store {args.output}: {info["frames"]} frames ({info["built"]} built, '
        f'{info["skipped"]} already done), {info["tiles"]} tiles of <= {args.crop_size} px; '
        f'point dataroot_{info["kind"]} at it'
    )
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# synth
# ----------------------------------------------------------------------------------------------------------------------


def run_synth(
    hdr_paths: Sequence[str],
    out_dir: str,
    seed: int = 0,
    per_image: int = 1,
    cam_kwargs: dict | None = None,
    gt_out: str | None = None,
    mode: str = 'copy',
    record_path: str | None = None,
) -> list[dict]:
    """Synthesise ``per_image`` LDR PNGs per HDR file; optionally place the HDR as GT named after each LDR."""
    if per_image < 1:
        raise ValueError(f'--per-image must be >= 1, got {per_image}')
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for path in hdr_paths:
        stem = osp.splitext(osp.basename(path))[0]
        for k in range(per_image):
            name = f'{stem}.png' if per_image == 1 else f'{stem}_c{k}.png'
            rows.append(synthesize_one(path, osp.join(out_dir, name), seed, cam_kwargs or {}))
            if gt_out:
                place(path, osp.join(gt_out, osp.splitext(name)[0] + osp.splitext(path)[1]), mode)
    write_camera_record(rows, record_path or out_dir.rstrip('/\\') + '_cameras.json')
    return rows


def cmd_synth(args: argparse.Namespace) -> int:
    paths = [p for p in _list_inputs(args.hdr) if osp.splitext(p)[1].lower() in HDR_EXTENSIONS]
    if not paths:
        raise ValueError(f'synth: no HDR files ({", ".join(HDR_EXTENSIONS)}) in {args.hdr}')
    record = args.record or args.out.rstrip('/\\') + '_cameras.json'
    rows = run_synth(paths, args.out, args.seed, args.per_image, camera_kwargs(args), args.gt_out, args.mode, record)
    print(f'{len(paths)} HDR files -> {len(rows)} LDR images in {args.out}; cameras in {record}')
    if args.gt_out:
        print(f'ground truth ({args.mode}) in {args.gt_out}')
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------------------------------------------------


def _convert_one(task: tuple) -> dict:
    pair, fmt, out, hdr_ext, mode, read_opts = task
    if hd.get_format(fmt).coded:  # integer-coded HDR: decode to linear float and write it
        hdr_name = pair.name + hdr_ext
        write_hdr(osp.join(out, 'hdr', hdr_name), hd.read_hdr_frame(pair.hdr, fmt, pair.sidecar, **read_opts))
    else:  # already float HDR: placed as it is
        hdr_name = pair.name + osp.splitext(pair.hdr)[1].lower()
        place(pair.hdr, osp.join(out, 'hdr', hdr_name), mode)
    row = {'name': pair.name, 'hdr': hdr_name, 'hdr_src': osp.abspath(pair.hdr), 'decoded': hd.get_format(fmt).coded}
    if pair.sidecar:
        row['sidecar_src'] = osp.abspath(pair.sidecar)
    if pair.ldr:
        ldr_name = pair.name + osp.splitext(pair.ldr)[1].lower()
        place(pair.ldr, osp.join(out, 'ldr', ldr_name), mode)
        row.update(ldr=ldr_name, ldr_src=osp.abspath(pair.ldr))
    return row


def run_convert(
    root: str,
    fmt: str,
    out: str,
    *,
    subset: str | None = None,
    hdr_ext: str = '.exr',
    mode: str = 'copy',
    workers: int = 1,
    overwrite: bool = False,
    white_nits: float = 203.0,
    keep_bt2020: bool = False,
) -> dict:
    """A dataset in format ``fmt`` at ``root`` -> ``OUT/hdr`` + ``OUT/ldr`` + ``OUT/convert.json`` (module docstring).

    HDR files of coded formats (HDRTV, NTIRE) are decoded with :func:`~llmhdr_basicsr.data.hdr_datasets.read_hdr_frame`
    and written as ``hdr_ext`` (float32 EXR by default: no further loss); float HDR files and all LDR files are placed
    (``mode``) unchanged. Output names are the dataset's scene names, so ``OUT/hdr/<name>.*`` pairs with
    ``OUT/ldr/<name>.*``. Returns the record saved as ``convert.json``.
    """
    spec = hd.get_format(fmt)
    if mode not in LINK_MODES:
        raise ValueError(f'Unknown --mode {mode!r}; choose one of {LINK_MODES}')
    if hdr_ext.lower() not in HDR_EXTENSIONS:
        raise ValueError(f'--hdr-ext must be one of {HDR_EXTENSIONS}, got {hdr_ext!r}')
    if not white_nits > 0:
        raise ValueError(f'--white-nits must be > 0, got {white_nits}')
    pairs = hd.list_pairs(root, fmt, subset)
    _check_unique([Item(p.hdr, p.name, p.name, 'hdr') for p in pairs])
    has_ldr = any(p.ldr for p in pairs)
    _prepare_out(out, overwrite, ('hdr', 'ldr') if has_ldr else ('hdr',))
    read_opts = {'white_nits': white_nits, 'keep_bt2020': keep_bt2020} if fmt == 'hdrtv' else {}
    tasks = [(p, fmt, out, hdr_ext.lower(), mode, read_opts) for p in pairs]
    if workers > 1 and len(tasks) > 1:
        with Pool(min(workers, len(tasks))) as pool:
            rows = pool.map(_convert_one, tasks)
    else:
        rows = [_convert_one(t) for t in tasks]
    record = {
        'format': fmt,
        'title': spec.title,
        'subset': subset or spec.subsets[0],
        'root': osp.abspath(root),
        'hdr_encoding': spec.hdr,
        'ldr_encoding': spec.ldr,
        'options': {'hdr_ext': hdr_ext, 'mode': mode, **read_opts},
        'files': rows,
    }
    with open(osp.join(out, 'convert.json'), 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1)
    return record


def cmd_convert(args: argparse.Namespace) -> int:
    record = run_convert(
        args.root,
        args.format,
        args.out,
        subset=args.subset,
        hdr_ext=args.hdr_ext,
        mode=args.mode,
        workers=args.workers,
        overwrite=args.overwrite,
        white_nits=args.white_nits,
        keep_bt2020=args.keep_bt2020,
    )
    rows = record['files']
    n_ldr = sum('ldr' in r for r in rows)
    how = 'decoded to linear' if hd.get_format(args.format).coded else 'placed as they are'
    print(f'{args.format} ({record["subset"]}): {len(rows)} HDR files {how} in {osp.join(args.out, "hdr")}')
    if n_ldr:
        print(f'  {n_ldr} LDR inputs ({args.mode}) in {osp.join(args.out, "ldr")}')
        print(f'  next: split --ldr {osp.join(args.out, "ldr")} --hdr {osp.join(args.out, "hdr")} --out DIR')
    else:
        print(f'  HDR only: synth --hdr {osp.join(args.out, "hdr")} --out DIR draws LDRs with random cameras')
    print(f'  record: {osp.join(args.out, "convert.json")}')
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# example
# ----------------------------------------------------------------------------------------------------------------------


def render_out_of_family(gt_dir: Path, out_dir: Path, seed: int) -> list[dict]:
    """One LDR per ground-truth HDR in ``gt_dir``, rendered by a camera outside the training family
    (:mod:`llmhdr_basicsr.utils.renderings`: filmic / ACES / Drago / Reinhard curves, contrast and saturation boosts,
    sensor noise, JPEG), named after the GT file; the parameters of each in ``<out_dir>.json``."""
    from llmhdr_basicsr.utils.renderings import apply_rendering, random_rendering, resolve_rendering

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for gt in sorted(p for p in gt_dir.iterdir() if p.suffix.lower() in HDR_EXTENSIONS):
        hdr = read_hdr(str(gt))
        name = f'{gt.stem}.png'
        params = resolve_rendering(hdr, random_rendering(image_rng(seed, 'ood/' + name)))
        write_ldr(str(out_dir / name), apply_rendering(hdr, params))
        rows.append({'file': name, 'source': str(gt), **params.to_dict()})
    with open(str(out_dir) + '.json', 'w', encoding='utf-8') as f:
        json.dump({r['file']: r for r in rows}, f, indent=1, sort_keys=True)
    return rows


def cmd_example(args: argparse.Namespace) -> int:
    """Split the curated sample data (DATA/ldr photos, DATA/hdr scenes) by scene into OUT/train_ldr (the LDR photos +
    LDRs synthesised from HDR scenes that are NOT in train_hdr), OUT/train_hdr, a paired validation set OUT/val_ldr +
    OUT/val_gt and a paired held-out test set OUT/test_ldr + OUT/test_gt (no scene in two of them; test and validation
    drawn from every source in proportion). The *_ldr inputs of val/test are synthesised with the training camera
    family; OUT/val_ood_ldr and OUT/test_ood_ldr hold the same scenes rendered by cameras outside that family
    (llmhdr_basicsr.utils.renderings). Optionally crops the training folders. Prints what went where."""
    data = Path(args.data)
    data = (data if data.is_absolute() else REPO_ROOT / data).resolve()
    out = (Path(args.out) if osp.isabs(args.out) else REPO_ROOT / args.out).resolve()
    ldr_dir, hdr_dir = data / 'ldr', data / 'hdr'
    for d in (ldr_dir, hdr_dir):
        if not d.is_dir():
            raise FileNotFoundError(f'--data {data}: expected sub-folders ldr/ and hdr/, missing {d}')
    print(f'data: {data}\nout:  {out}')
    extra_parts = ['test_ood_ldr'] + (['val_ood_ldr'] if args.val_fraction > 0 else [])
    _prepare_out(str(out), args.overwrite, extra_parts + (['train_ldr_sub', 'train_hdr_sub'] if args.crop_size else []))
    ldr = collect([('', str(ldr_dir))], '', 'ldr', None)
    hdr = collect([('', str(hdr_dir))], '', 'hdr', None)
    record = run_split(
        ldr,
        hdr,
        str(out),
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        stratify=True,
        ldr_fraction=args.ldr_fraction,
        seed=args.seed,
        mode=args.mode,
        synth_missing_ldr=True,
        cam_kwargs=camera_kwargs(args),
        overwrite=args.overwrite,
        options={k: str(v) for k, v in vars(args).items() if k != 'func'},
    )
    print_split_summary(record, str(out))
    for held_out in ('test', 'val'):
        if record['scenes'][held_out]:
            rows = render_out_of_family(out / f'{held_out}_gt', out / f'{held_out}_ood_ldr', args.seed)
            curves = ', '.join(sorted({r['curve'] for r in rows}))
            print(f'  {out / held_out}_ood_ldr: {len(rows)} LDRs rendered outside the camera family ({curves})')
    if args.crop_size:
        for part in ('train_ldr', 'train_hdr'):
            rows = run_crop(
                _list_inputs(str(out / part)), str(out / f'{part}_sub'), args.crop_size, args.crop_size // 2
            )
            print(f'  {out / part}_sub: {len(rows)} tiles of <= {args.crop_size} px')
    print(
        'train_ldr (LDR photos + LDRs synthesised from scenes outside train_hdr), train_hdr, val and test show '
        'disjoint scenes; val_*/test_* are paired (LDR + GT HDR), *_ood_ldr rendered outside the camera family.'
    )
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------


def _camera_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group('virtual camera (llmhdr_basicsr.utils.camera.random_camera)')
    g.add_argument(
        '--clip-range',
        nargs=2,
        type=float,
        default=list(cam.DEFAULT_CLIP_RANGE),
        metavar=('LO', 'HI'),
        help='target fraction of clipped pixels, uniform (default 0.02 0.16)',
    )
    g.add_argument(
        '--gamma-range',
        nargs=2,
        type=float,
        default=list(cam.DEFAULT_GAMMA_RANGE),
        metavar=('LO', 'HI'),
        help='encoding gamma of the gamma CRF, uniform (default 1.8 2.6)',
    )
    g.add_argument('--sigmoid-prob', type=float, default=0.5, help='probability of the GlowGAN sigmoid CRF (0.5)')
    g.add_argument('--wb-jitter', type=float, default=0.0, help='red/blue gain jitter, e.g. 0.1 = +-10%% (off)')
    g.add_argument('--jpeg-prob', type=float, default=0.0, help='probability of JPEG compression (0)')
    g.add_argument(
        '--jpeg-quality',
        nargs=2,
        type=int,
        default=list(cam.DEFAULT_JPEG_QUALITY),
        metavar=('LO', 'HI'),
        help='JPEG quality range, inclusive (70 95)',
    )
    g.add_argument('--bit-depth', type=int, choices=(8, 16), default=8, help='PNG bit depth of synthesised LDRs (8)')
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='prepare_data.py',
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest='command', required=True)
    camera = _camera_parser()
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        'split',
        parents=[camera],
        formatter_class=fmt,
        help='paired dataset -> disjoint unpaired train halves + paired test set',
        description='Paired LDR/HDR dataset -> OUT/{train_ldr,train_hdr,test_ldr,test_gt} + meta_info_*.txt + '
        'split.json. train_ldr and train_hdr hold DISJOINT halves of the scenes.\n\nLayout presets (--preset NAME '
        '--root DIR; assumed layouts, check them against your copy):\n' + _preset_help(),
    )
    p.add_argument('--ldr', help='folder of LDR images (paired with --hdr by scene key)')
    p.add_argument('--hdr', help='folder of HDR images')
    p.add_argument('--preset', choices=sorted(PRESETS), help='dataset layout preset (needs --root)')
    p.add_argument('--root', help='dataset root folder for --preset')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--scene-regex', help="regex on the relative path without extension; group 'scene' (or 1) = key")
    p.add_argument('--ldr-scene-regex', help='scene regex for LDR files only (overrides --scene-regex)')
    p.add_argument('--hdr-scene-regex', help='scene regex for HDR files only (overrides --scene-regex)')
    p.add_argument('--test-fraction', type=float, default=0.1, help='fraction of paired scenes held out (0.1)')
    p.add_argument('--ldr-fraction', type=float, default=0.5, help='fraction of the other scenes in the LDR half')
    p.add_argument(
        '--synth-missing-ldr',
        action='store_true',
        help='HDR-only scenes join the draw; in the LDR half and the test set their LDRs are synthesised',
    )
    p.add_argument('--mode', choices=LINK_MODES, default='copy', help='how files are placed (copy)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--overwrite', action='store_true', help='replace existing OUT/{train_*,test_*} folders')
    p.set_defaults(func=cmd_split)

    p = sub.add_parser(
        'crop',
        help='cut images into (float-safe) tiles',
        formatter_class=fmt,
        description='Sub-images as BasicSR extract_subimages.py: tiles every --step px plus a last tile '
        'flush with the border when more than --thresh-size px remain. HDR stays float32.',
    )
    p.add_argument('--input', required=True, help='folder of images (LDR and/or HDR)')
    p.add_argument('--output', required=True, help='folder for the tiles (<stem>_s001.<ext>, ...)')
    p.add_argument('--crop-size', type=int, default=512)
    p.add_argument('--step', type=int, default=256)
    p.add_argument('--thresh-size', type=int, default=0)
    p.add_argument('--workers', type=int, default=1, help='processes (1 = none)')
    p.add_argument('--pattern', help='only files matching this glob, e.g. "*.exr"')
    p.add_argument('--hdr-ext', default='.exr', help="HDR tile format: .exr (float32, exact), .pfm, .hdr or 'same'")
    p.add_argument('--ldr-ext', default='.png', help="LDR tile format: .png (lossless), .tif or 'same'")
    p.add_argument('--record', help='JSON of tile positions (default <output>_crops.json)')
    p.set_defaults(func=cmd_crop)

    p = sub.add_parser(
        'store',
        help='prepared training store: tiles + per-frame statistics (docs/datasets.md)',
        formatter_class=fmt,
        description='Tiles as crop (BasicSR extract_subimages.py rule) plus, per source frame, the statistics the '
        'datasets compute on the whole frame: the hdr_norm scale and virtual-camera exposure statistic (HDR), the '
        'digest and a whole-frame thumbnail (LDR). OUTPUT/{store.json, meta_info_store.txt, tiles/, frames/}; one '
        'kind (HDR or LDR) per store; resumable (frames already done are skipped). Point dataroot_hdr / '
        'dataroot_ldr at OUTPUT.',
    )
    p.add_argument('--input', required=True, help='folder of source frames (all HDR or all LDR)')
    p.add_argument('--output', required=True, help='the store folder (created; an existing one is resumed)')
    p.add_argument('--crop-size', type=int, default=512)
    p.add_argument('--step', type=int, default=256)
    p.add_argument('--thresh-size', type=int, default=0)
    p.add_argument(
        '--hdr-norm',
        default=str(DEFAULT_HDR_NORM),
        help="the datasets' hdr_norm the scales are computed for: a percentile, max or none (99.5)",
    )
    p.add_argument(
        '--samples',
        type=int,
        default=cam.DEFAULT_RANK_SAMPLES,
        help='rows K of the exposure statistic per HDR frame: the clipped fraction holds within 1/(K-1) (8193)',
    )
    p.add_argument(
        '--thumbnail-size',
        type=int,
        default=ts.DEFAULT_THUMBNAIL_SIZE,
        help="side of the whole-frame LDR view; >= the datasets' global_size (224)",
    )
    p.add_argument('--hdr-ext', default='.exr', help='HDR tile format: .exr (float32, exact), .pfm or .hdr')
    p.add_argument('--ldr-ext', default='.png', help='LDR tile format: .png (lossless) or .tif')
    p.add_argument('--pattern', help='only files matching this glob, e.g. "*.exr"')
    p.add_argument('--workers', type=int, default=1, help='processes (1 = none)')
    p.set_defaults(func=cmd_store)

    p = sub.add_parser(
        'synth',
        parents=[camera],
        help='LDR from HDR with random cameras',
        formatter_class=fmt,
        description='One PNG per HDR file (or --per-image), the camera of each in <out>_cameras.json/.csv'
        '; --gt-out places the HDR next to each LDR as ground truth (paired test folder).',
    )
    p.add_argument('--hdr', required=True, help='folder of HDR files')
    p.add_argument('--out', required=True, help='folder for the LDR PNGs')
    p.add_argument('--gt-out', help='folder for the GT HDR, named after each LDR')
    p.add_argument('--per-image', type=int, default=1, help='LDRs per HDR (names <stem>_c<k>.png when > 1)')
    p.add_argument('--mode', choices=LINK_MODES, default='copy', help='how GT files are placed (copy)')
    p.add_argument('--record', help='camera record JSON (default <out>_cameras.json; CSV next to it)')
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        'convert',
        help='a dataset as distributed (HDRTV, NTIRE, HDR-Real, HDR-Synth) -> OUT/hdr (linear) + OUT/ldr',
        formatter_class=fmt,
        description='Decode a paper-scale dataset into the project layout: OUT/hdr/<name>.exr (linear float32 RGB, '
        'BT.709, reference white = 1.0) + OUT/ldr/<name>.<ext> (LDR inputs as they are) + OUT/convert.json. See '
        'docs/datasets.md.\n\nFormats (--format NAME --root DIR):\n'
        + '\n'.join(f'  {f.name}: {f.title}. Layout: {f.layout}. HDR: {f.hdr}.' for f in hd.DATASET_FORMATS.values()),
    )
    p.add_argument('--format', required=True, help=f'dataset format: {", ".join(hd.DATASET_FORMATS)}')
    p.add_argument('--root', required=True, help='the dataset folder as unpacked')
    p.add_argument('--out', required=True, help='output folder (gets hdr/, ldr/, convert.json)')
    p.add_argument(
        '--subset', help='official part where the format has several (hdrtv: train | test; default the first)'
    )
    p.add_argument('--hdr-ext', default='.exr', help='format of decoded HDRs: .exr (float32, default), .hdr or .pfm')
    p.add_argument('--white-nits', type=float, default=203.0, help='hdrtv: PQ luminance that becomes 1.0 (203)')
    p.add_argument('--keep-bt2020', action='store_true', help='hdrtv: keep BT.2020 primaries (default: BT.709)')
    p.add_argument('--mode', choices=LINK_MODES, default='copy', help='how unchanged files are placed (copy)')
    p.add_argument('--workers', type=int, default=1, help='processes (1 = none)')
    p.add_argument('--overwrite', action='store_true', help='replace existing OUT/hdr and OUT/ldr')
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        'example',
        parents=[camera],
        help='run the whole preparation on the curated sample data',
        formatter_class=fmt,
        description=cmd_example.__doc__ or '',
    )
    p.add_argument('--data', default='../shared/data', help='folder with ldr/ and hdr/ (relative to the repo root)')
    p.add_argument('--out', default='datasets/shared_unpaired', help='output folder (relative to the repo root)')
    p.add_argument('--test-fraction', type=float, default=0.25, help='fraction of HDR scenes held out (0.25)')
    p.add_argument('--val-fraction', type=float, default=0.2, help='fraction of HDR scenes for validation (0.2)')
    p.add_argument('--ldr-fraction', type=float, default=0.5, help='fraction of the other scenes synthesised (0.5)')
    p.add_argument('--crop-size', type=int, default=0, help='also cut train_* into <part>_sub tiles (0 = no)')
    p.add_argument('--mode', choices=LINK_MODES, default='copy')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--overwrite', action='store_true')
    p.set_defaults(func=cmd_example)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input with a message on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImageReadError, OSError) as err:
        print(f'prepare_data.py {args.command}: error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
