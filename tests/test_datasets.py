"""Tests of the HDR datasets (llmhdr_basicsr.data): tiny images generated in tmp_path, CPU only."""

from __future__ import annotations

import logging
import os.path as osp
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from llmhdr_basicsr.data import hdr_transforms as T
from llmhdr_basicsr.data.dataset_util import MAX_CONSECUTIVE_READ_FAILURES
from llmhdr_basicsr.data.paired_hdr_dataset import PairedLDRHDRDataset
from llmhdr_basicsr.data.single_image_dataset import SingleHDRDataset, SingleLDRDataset
from llmhdr_basicsr.data.unpaired_hdr_dataset import UnpairedLDRHDRDataset
from llmhdr_basicsr.perception.cache import PerceptionCache
from llmhdr_basicsr.utils import hdr_io
from llmhdr_basicsr.utils.ldr_view import (
    FLIP_PROBE,
    LDRGlobalView,
    apply_flip_code_np,
    cut_windows,
    flip_code_from_probe,
)
from llmhdr_basicsr.utils.tonemap import luminance_np, normalize_hdr

H, W = 24, 32  # tiny images; crops of 16


# ---------------------------------------------------------------------------------------------------- helpers
def coord_ldr(h: int = H, w: int = W, offset: int = 0) -> np.ndarray:
    """Display-referred image whose 16-bit code values encode the pixel position: R = (x+1)*1000, G = (y+1)*1000."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x + 1) * 1000, (y + 1) * 1000, np.full_like(x, 100 * (offset + 1))], axis=-1)
    return img.astype(np.float64) / 65535.0


def decode_ldr_coords(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(3, h, w) tensor from coord_ldr -> integer (x, y) arrays of the source pixel of every output pixel."""
    a = t.numpy().astype(np.float64) * 65535.0
    return np.round(a[0] / 1000).astype(int) - 1, np.round(a[1] / 1000).astype(int) - 1


def coord_maps(h: int = H, w: int = W) -> np.ndarray:
    """(3, H, W) float16 maps in [0, 1] encoding position: ch0 = (x+1)/100, ch1 = (y+1)/100, ch2 = 0.5."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x + 1) / 100, (y + 1) / 100, np.full(x.shape, 0.5)]).astype(np.float16)


def decode_map_coords(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    a = t.numpy().astype(np.float64)
    return np.round(a[0] * 100).astype(int) - 1, np.round(a[1] * 100).astype(int) - 1


def coord_hdr(h: int = H, w: int = W, gain: float = 1.0) -> np.ndarray:
    """Linear HDR whose values encode position: R = (x+1)*gain, G = (y+1)*gain, B = gain (exact in float32 EXR)."""
    y, x = np.mgrid[0:h, 0:w]
    return (np.stack([x + 1, y + 1, np.ones_like(x)], axis=-1) * gain).astype(np.float32)


def make_ldr_folder(folder, n: int = 4, h: int = H, w: int = W) -> list[str]:
    paths = []
    for i in range(n):
        p = osp.join(str(folder), f'ldr_{i}.png')
        hdr_io.write_ldr(p, coord_ldr(h, w, i), bit_depth=16)
        paths.append(p)
    return paths


def make_hdr_folder(folder, n: int = 4, h: int = H, w: int = W) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = osp.join(str(folder), f'hdr_{i}.exr')
        hdr_io.write_hdr(p, rng.gamma(1.0, 2.0 ** (i - 1), size=(h, w, 3)).astype(np.float32))
        paths.append(p)
    return paths


def unpaired_opt(ldr, hdr, **kw) -> dict:
    opt = dict(
        name='unpaired', type='UnpairedLDRHDRDataset', phase='train', io_backend={'type': 'disk'},
        dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), crop_size=16,
    )  # fmt: skip
    opt.update(kw)
    return opt


@pytest.fixture
def folders(tmp_path):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    return make_ldr_folder(ldr), make_hdr_folder(hdr), ldr, hdr


@pytest.fixture
def logs(caplog):
    """Capture the plugin's log records (BasicSR's logger does not propagate to the root logger)."""
    log = logging.getLogger('basicsr.llmhdr')
    propagate = log.propagate
    log.addHandler(caplog.handler)
    log.propagate = False  # each record reaches caplog exactly once
    caplog.set_level(logging.INFO, logger='basicsr.llmhdr')
    yield caplog
    log.removeHandler(caplog.handler)
    log.propagate = propagate


# ---------------------------------------------------------------------------------------------------- unpaired
def test_unpaired_train_shapes_ranges(folders):
    ldr_paths, hdr_paths, ldr, hdr = folders
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr))
    assert len(ds) == len(ldr_paths)
    np.random.seed(0)
    for i in range(len(ds)):
        s = ds[i]
        assert s['ldr'].shape == (3, 16, 16) and s['hdr'].shape == (3, 16, 16)
        assert s['ldr'].dtype == torch.float32 and s['hdr'].dtype == torch.float32
        assert 0 <= s['ldr'].min() and s['ldr'].max() <= 1
        assert s['hdr'].min() >= 0 and torch.isfinite(s['hdr']).all()
        assert s['ldr_path'] == ldr_paths[i] and s['hdr_path'] in hdr_paths
        assert 'ldr_maps' not in s


def test_unpaired_val_full_size_fixed_partner(folders):
    ldr_paths, hdr_paths, ldr, hdr = folders
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, phase='val'))
    for i in range(len(ds)):
        s = ds[i]
        assert s['ldr'].shape == (3, H, W) and s['hdr'].shape == (3, H, W)
        assert s['hdr_path'] == hdr_paths[i % len(hdr_paths)]
        x, y = decode_ldr_coords(s['ldr'])  # no crop, no flip in val
        assert (x == np.arange(W)[None]).all() and (y == np.arange(H)[:, None]).all()
    assert torch.equal(ds[1]['hdr'], ds[1]['hdr'])


def test_pairing_random_and_reproducible(folders):
    *_, ldr, hdr = folders
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr))
    np.random.seed(123)
    first = [(ds[0]['hdr_path'], ds[0]['hdr'].sum().item()) for _ in range(12)]
    assert len({p for p, _ in first}) > 1, 'the HDR partner of one LDR index must change between draws'
    np.random.seed(123)
    again = [(ds[0]['hdr_path'], ds[0]['hdr'].sum().item()) for _ in range(12)]
    assert first == again


def test_crop_window_and_maps_share_ldr_transform(tmp_path):
    ldr, hdr, maps = tmp_path / 'ldr', tmp_path / 'hdr', tmp_path / 'maps'
    ldr_paths = make_ldr_folder(ldr, n=2)
    make_hdr_folder(hdr, n=2)
    PerceptionCache(str(maps), prompt='test prompt', model='stub').put(ldr_paths[0], coord_maps())  # none for ldr_1
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, maps_cache=str(maps), use_rot=True))
    np.random.seed(0)
    seen_windows = set()
    for _ in range(10):
        s = ds[0]
        assert s['ldr_path'] == ldr_paths[0] and float(s['ldr_maps_valid']) == 1.0
        x, y = decode_ldr_coords(s['ldr'])
        mx, my = decode_map_coords(s['ldr_maps'])
        assert (x == mx).all() and (y == my).all(), 'maps must be cut and flipped exactly like the LDR image'
        assert x.min() >= 0 and x.max() < W and y.min() >= 0 and y.max() < H
        assert x.max() - x.min() == 15 and y.max() - y.min() == 15  # a 16x16 window of the source
        assert torch.allclose(s['ldr_maps'][2], torch.full((16, 16), 0.5))
        seen_windows.add((x.min(), y.min()))
    assert len(seen_windows) > 1
    s = ds[1]
    assert float(s['ldr_maps_valid']) == 0.0 and s['ldr_maps'].shape == (3, 16, 16) and s['ldr_maps'].abs().sum() == 0


def test_corrupt_maps_entry_gives_zeros_and_warns(tmp_path, logs):
    ldr, hdr, maps = tmp_path / 'ldr', tmp_path / 'hdr', tmp_path / 'maps'
    ldr_paths = make_ldr_folder(ldr, n=1)
    make_hdr_folder(hdr, n=1)
    entry = PerceptionCache(str(maps), prompt='test prompt', model='stub').put(ldr_paths[0], np.zeros((3, 5, 5)))
    Path(entry).write_bytes(b'not an npz archive')
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, maps_cache=str(maps), phase='val'))
    s = ds[0]
    assert float(s['ldr_maps_valid']) == 0.0 and s['ldr_maps'].shape == (3, H, W) and s['ldr_maps'].abs().sum() == 0
    assert any(r.levelno == logging.WARNING for r in logs.records)


def test_missing_maps_cache_folder_is_an_error(tmp_path):
    make_ldr_folder(tmp_path / 'ldr', n=1)
    make_hdr_folder(tmp_path / 'hdr', n=1)
    with pytest.raises(FileNotFoundError, match='nowhere'):
        UnpairedLDRHDRDataset(unpaired_opt(tmp_path / 'ldr', tmp_path / 'hdr', maps_cache=str(tmp_path / 'nowhere')))


def test_flips():
    rng = np.random.default_rng(0)
    img = coord_hdr(4, 4)
    outs = {T.random_flip_rot([img], rng, hflip=True, rot=True)[0].tobytes() for _ in range(200)}
    assert len(outs) == 8  # the 8 dihedral transforms
    outs = {T.random_flip_rot([img], rng, hflip=True, rot=False)[0].tobytes() for _ in range(50)}
    assert outs == {img.tobytes(), img[:, ::-1].tobytes()}
    assert all(T.random_flip_rot([img], rng, hflip=False)[0].tobytes() == img.tobytes() for _ in range(20))


def test_dataset_hflip_option(folders):
    *_, ldr, hdr = folders
    for use_hflip in (True, False):
        ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, crop_size=None, use_hflip=use_hflip))
        np.random.seed(1)
        flipped = set()
        for _ in range(12):
            x, _ = decode_ldr_coords(ds[0]['ldr'])
            flipped.add(bool(x[0, 0] > x[0, -1]))
        assert flipped == ({True, False} if use_hflip else {False})


def test_hdr_norm_modes(tmp_path):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    make_ldr_folder(ldr, n=1)
    rng = np.random.default_rng(3)
    raw = rng.lognormal(0.0, 2.0, size=(H, W, 3)).astype(np.float32)
    hdr_io.write_hdr(str(hdr / 'scene.exr'), raw)
    lum_raw = luminance_np(raw)[..., 0]

    def load(mode):
        s = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, phase='val', hdr_norm=mode))[0]
        return s['hdr'].permute(1, 2, 0).numpy(), float(s['hdr_scale'])

    out, scale = load('none')
    np.testing.assert_array_equal(out, raw)
    assert scale == 1.0
    out, scale = load('max')
    assert luminance_np(out).max() == pytest.approx(1.0, rel=1e-5) and scale == pytest.approx(lum_raw.max(), rel=1e-5)
    for pct in (99.5, 50):
        out, scale = load(pct)
        assert np.percentile(luminance_np(out), pct) == pytest.approx(1.0, rel=1e-4)
        np.testing.assert_allclose(out * scale, raw, rtol=1e-5)
        assert out.max() > 1.0  # values above the percentile are kept, not clipped
        ref, ref_scale = normalize_hdr(torch.from_numpy(raw).permute(2, 0, 1)[None].double(), pct)  # tonemap semantics
        assert scale == pytest.approx(float(ref_scale), rel=1e-5)
    out, _ = load(99.5)  # the default
    default_out = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, phase='val'))[0]['hdr'].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out, default_out)
    with pytest.raises(ValueError, match='hdr_norm'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, hdr_norm='median'))


def test_normalize_mostly_black_falls_back_to_max():
    img = np.zeros((40, 40, 3), np.float32)
    img[0, 0] = 4.0  # one star: the 99.5th luminance percentile is 0
    out, scale = T.normalize_hdr_np(img, 99.5)
    assert scale == pytest.approx(4.0) and out.max() == pytest.approx(1.0)
    out, scale = T.normalize_hdr_np(np.zeros((4, 4, 3), np.float32), 99.5)
    assert scale == 1.0 and np.isfinite(out).all()


def test_exposure_aug_range(tmp_path):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    make_ldr_folder(ldr, n=1)
    hdr_io.write_hdr(str(hdr / 'scene.exr'), coord_hdr(gain=0.5))
    base = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, phase='val'))[0]
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, crop_size=None, use_hflip=False, hdr_exposure_aug=[-1, 1]))
    np.random.seed(0)
    gains = []
    for _ in range(20):
        s = ds[0]
        gain = (s['hdr'] / base['hdr']).flatten()
        assert torch.allclose(gain, gain[0].expand_as(gain), rtol=1e-5)  # one global factor
        assert float(s['hdr_scale'] * gain[0]) == pytest.approx(float(base['hdr_scale']), rel=1e-5)
        gains.append(float(gain[0]))
    assert 0.5 <= min(gains) < 0.8 and 1.25 < max(gains) <= 2.0
    for bad in ([1, -1], [1], 'x'):
        with pytest.raises(ValueError, match='hdr_exposure_aug'):
            UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, hdr_exposure_aug=bad))


def test_meta_info_lists(tmp_path):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    ldr_paths = make_ldr_folder(ldr / 'sub', n=3)
    make_hdr_folder(hdr, n=3)
    meta = tmp_path / 'meta_ldr.txt'
    meta.write_text('# listed images\nsub/ldr_2.png (24,32,3)\n\nsub/ldr_0.png\n')
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, meta_info_ldr=str(meta), phase='val'))
    assert len(ds) == 2 and [ds[i]['ldr_path'] for i in range(2)] == [ldr_paths[2], ldr_paths[0]]
    meta.write_text('sub/ldr_0.png\nsub/missing.png\n')
    with pytest.raises(FileNotFoundError, match='missing.png'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, meta_info_ldr=str(meta)))


def test_unreadable_file_skipped_in_train_raises_in_val(folders, logs):
    *_, ldr, hdr = folders
    bad = ldr / 'ldr_0.png'
    bad.write_bytes(b'not a png at all')
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr))
    np.random.seed(0)
    for _ in range(3):
        s = ds[0]
        assert s['ldr_path'] != str(bad) and s['ldr'].shape == (3, 16, 16)
    assert ds.num_skipped == 1  # remembered: warned and counted once
    warnings = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert sum('ldr_0.png' in m for m in warnings) == 1
    val = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, phase='val'))
    with pytest.raises(hdr_io.ImageReadError, match='ldr_0.png'):
        val[0]


def test_all_files_unreadable_raises(tmp_path, logs):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    make_hdr_folder(hdr, n=1)
    ldr.mkdir()
    for i in range(MAX_CONSECUTIVE_READ_FAILURES + 2):
        (ldr / f'broken_{i}.png').write_bytes(b'\x89PNG garbage')
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr))
    np.random.seed(0)
    with pytest.raises(RuntimeError, match='consecutive ldr samples could not be read'):
        ds[0]
    ldr2 = tmp_path / 'ldr2'
    ldr2.mkdir()
    (ldr2 / 'only.png').write_bytes(b'garbage')
    with pytest.raises(RuntimeError, match='only.png'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr2, hdr))[0]


def test_nan_hdr_sanitised(tmp_path, logs):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    make_ldr_folder(ldr, n=1)
    raw = coord_hdr()
    raw[0, 0, 0], raw[1, 1, 1], raw[2, 2, 2] = np.nan, np.inf, -3.0
    hdr_io.write_hdr(str(hdr / 'nan.exr'), raw)
    for phase in ('train', 'val'):
        s = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, phase=phase))[0]
        assert torch.isfinite(s['hdr']).all() and s['hdr'].min() >= 0
    assert any('nan.exr' in r.getMessage() and 'NaN' in r.getMessage() for r in logs.records)


def test_small_image_reflect_padded(tmp_path):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    make_ldr_folder(ldr, n=1, h=10, w=12)
    make_hdr_folder(hdr, n=1, h=7, w=20)
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, use_hflip=False))
    np.random.seed(0)
    s = ds[0]
    assert s['ldr'].shape == (3, 16, 16) and s['hdr'].shape == (3, 16, 16)
    x, y = decode_ldr_coords(s['ldr'])
    assert set(np.unique(x)) == set(range(12)) and set(np.unique(y)) == set(range(10))
    assert (np.abs(np.diff(x, axis=1)) == 1).all()  # reflect: neighbours stay neighbours, no repeated edge pixel
    padded = T.pad_to_size(np.arange(3, dtype=np.float32).reshape(1, 3, 1), 1, 7)
    assert padded[0, :, 0].tolist() == [2, 1, 0, 1, 2, 1, 0]


def test_empty_and_missing_folders(tmp_path):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    make_hdr_folder(hdr, n=1)
    ldr.mkdir()
    with pytest.raises(ValueError, match=str(ldr)):
        UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr))
    hdr_io.write_hdr(str(ldr / 'wrong_domain.exr'), coord_hdr())
    with pytest.raises(ValueError, match='wrong_domain.exr'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr))
    with pytest.raises(FileNotFoundError, match='nowhere'):
        UnpairedLDRHDRDataset(unpaired_opt(tmp_path / 'nowhere', hdr))
    with pytest.raises(ValueError, match='dataroot_ldr'):
        UnpairedLDRHDRDataset(dict(name='x', phase='train', dataroot_hdr=str(hdr)))


def test_grey_png(tmp_path):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    ldr.mkdir()
    grey = (np.arange(H * W).reshape(H, W) % 251).astype(np.uint8)
    assert cv2.imwrite(str(ldr / 'grey.png'), grey)
    make_hdr_folder(hdr, n=1)
    s = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, phase='val'))[0]
    assert s['ldr'].shape == (3, H, W)
    assert torch.equal(s['ldr'][0], s['ldr'][1]) and torch.equal(s['ldr'][1], s['ldr'][2])
    np.testing.assert_allclose(s['ldr'][0].numpy(), grey / 255.0, atol=1e-6)


def test_unknown_option_warning_and_io_backend(folders, logs):
    *_, ldr, hdr = folders
    UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, crop_szie=32, batch_size_per_gpu=2, dataset_enlarge_ratio=1))
    msgs = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING and 'unknown option' in r.getMessage()]
    assert len(msgs) == 1 and 'crop_szie' in msgs[0] and 'batch_size_per_gpu' not in msgs[0].split('known')[0]
    with pytest.raises(ValueError, match='io_backend'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, io_backend={'type': 'lmdb'}))
    with pytest.raises(ValueError, match='crop_size'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, crop_size=0))


def test_cache_images_gives_identical_samples(folders):
    *_, ldr, hdr = folders
    plain = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, hdr_exposure_aug=[-1, 1]))
    cached = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, hdr_exposure_aug=[-1, 1], cache_images=True))
    assert len(cached._cache) == 8
    for ds in (plain, cached):
        np.random.seed(5)
        ds.samples = [ds[i % 4] for i in range(6)]
    for a, b in zip(plain.samples, cached.samples):
        assert a['hdr_path'] == b['hdr_path'] and torch.equal(a['ldr'], b['ldr']) and torch.equal(a['hdr'], b['hdr'])
    s = cached[0]
    s['hdr'].mul_(0)  # an in-place edit of a sample must not touch the cache
    assert all(v[0].max() > 0 for k, v in cached._cache.items() if k[0] == 'hdr')


# ---------------------------------------------------------------------------------------------------- paired / single
def test_paired_stem_matching_and_crop(tmp_path):
    lq, gt = tmp_path / 'lq', tmp_path / 'gt'
    names = ['c', 'a', 'b']
    for i, n in enumerate(names):
        hdr_io.write_ldr(str(lq / f'{n}.png'), coord_ldr(offset=i), bit_depth=16)
        ext = '.hdr' if n == 'b' else '.exr'  # mixed extensions: sorted order differs from stem order
        hdr_io.write_hdr(str(gt / f'{n}{ext}'), coord_hdr(gain=1.0) + i * 100)
    opt = dict(name='paired', phase='val', dataroot_lq=str(lq), dataroot_gt=str(gt), hdr_norm='none')
    ds = PairedLDRHDRDataset(opt)
    assert len(ds) == 3
    for i in range(3):
        s = ds[i]
        stem = osp.splitext(osp.basename(s['lq_path']))[0]
        assert osp.splitext(osp.basename(s['gt_path']))[0] == stem
        k = names.index(stem)
        lq_id = round(float(s['lq'][2, 0, 0]) * 65535 / 100) - 1
        assert lq_id == k and float(s['gt'][2, 0, 0]) == pytest.approx(1 + 100 * k, rel=0.02)
        assert s['lq'].shape == s['gt'].shape == (3, H, W) and float(s['gt_scale']) == 1.0
    ds_train = PairedLDRHDRDataset(dict(opt, phase='train', crop_size=16, use_rot=True))
    np.random.seed(0)
    for _ in range(5):
        s = ds_train[0]
        x, y = decode_ldr_coords(s['lq'])
        k = names.index(osp.splitext(osp.basename(s['lq_path']))[0])
        gx = np.round(s['gt'][0].numpy() - 100 * k).astype(int) - 1
        gy = np.round(s['gt'][1].numpy() - 100 * k).astype(int) - 1
        assert s['lq'].shape == (3, 16, 16) and (x == gx).all() and (y == gy).all()  # same window and flips


def test_paired_mismatch_error(tmp_path):
    lq, gt = tmp_path / 'lq', tmp_path / 'gt'
    hdr_io.write_ldr(str(lq / 'a.png'), coord_ldr())
    hdr_io.write_ldr(str(lq / 'orphan_ldr.png'), coord_ldr())
    hdr_io.write_hdr(str(gt / 'a.exr'), coord_hdr())
    hdr_io.write_hdr(str(gt / 'orphan_hdr.exr'), coord_hdr())
    with pytest.raises(ValueError, match='orphan_ldr.png.*orphan_hdr.exr'):
        PairedLDRHDRDataset(dict(name='p', phase='val', dataroot_lq=str(lq), dataroot_gt=str(gt)))


def test_paired_size_mismatch_names_files(tmp_path):
    lq, gt = tmp_path / 'lq', tmp_path / 'gt'
    hdr_io.write_ldr(str(lq / 'a.png'), coord_ldr())
    hdr_io.write_hdr(str(gt / 'a.exr'), coord_hdr(h=H + 2))
    ds = PairedLDRHDRDataset(dict(name='p', phase='test', dataroot_lq=str(lq), dataroot_gt=str(gt)))
    with pytest.raises(ValueError, match='a.png.*a.exr'):
        ds[0]


def test_single_datasets(tmp_path, logs):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    ldr_paths, hdr_paths = make_ldr_folder(ldr, n=2), make_hdr_folder(hdr, n=3)
    ds = SingleLDRDataset(dict(name='s', phase='test', dataroot_lq=str(ldr), io_backend={'type': 'disk'}))
    s = ds[1]
    assert len(ds) == 2 and set(s) == {'lq', 'lq_path'} and s['lq_path'] == ldr_paths[1]
    assert s['lq'].shape == (3, H, W) and s['lq'].dtype == torch.float32 and 0 <= s['lq'].min() <= s['lq'].max() <= 1
    for key in ('dataroot_hdr', 'dataroot_lq'):
        ds = SingleHDRDataset({'name': 'h', 'phase': 'test', key: str(hdr)})
        s = ds[2]
        assert len(ds) == 3 and set(s) == {'hdr', 'hdr_path', 'hdr_scale'} and s['hdr_path'] == hdr_paths[2]
        assert s['hdr'].shape == (3, H, W) and s['hdr'].min() >= 0
        lum = luminance_np(s['hdr'].permute(1, 2, 0).numpy())
        assert np.percentile(lum, 99.5) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match='no HDR images'):
        SingleHDRDataset({'name': 'h', 'phase': 'test', 'dataroot_hdr': str(ldr)})


# ---------------------------------------------------------------------------------------------------- BasicSR
def test_build_dataset_and_dataloader_with_workers(tmp_path):
    from basicsr.data import build_dataloader, build_dataset

    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    make_ldr_folder(ldr, n=6)
    make_hdr_folder(hdr, n=4)
    opt = unpaired_opt(ldr, hdr, type='UnpairedLDRHDRDataset', num_worker_per_gpu=2, batch_size_per_gpu=2)

    def run_epochs(n_epochs=2):
        torch.manual_seed(7)
        np.random.seed(7)
        ds = build_dataset(opt)
        loader = build_dataloader(ds, opt, num_gpu=1, dist=False, sampler=None, seed=7)
        epochs = []
        for _ in range(n_epochs):
            pairs, hdr_stream = {}, []
            for batch in loader:
                assert batch['ldr'].shape == (2, 3, 16, 16) and batch['hdr'].shape == (2, 3, 16, 16)
                assert batch['hdr_scale'].shape == (2,)
                for lp, hp, h in zip(batch['ldr_path'], batch['hdr_path'], batch['hdr']):
                    pairs[lp] = (hp, round(h.sum().item(), 3))
                    hdr_stream.append(pairs[lp])
            assert len(pairs) == 6
            epochs.append((pairs, hdr_stream))
        return epochs

    first = run_epochs()
    assert first[0][0] != first[1][0], 'HDR partners and crops must change between epochs'
    # BasicSR's worker_init_fn re-seeds np.random identically every epoch; the HDR draws must still differ.
    assert first[0][1] != first[1][1], 'the HDR sample stream of the workers must not repeat every epoch'
    assert run_epochs() == first, 'same seeds must reproduce the samples'


# ---------------------------------------------------------------------------------------------------- whole-image view
def _expected_coords(window: torch.Tensor, h: int, w: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source-pixel (x, y) of every crop pixel, as the window claims: the cut of rows/cols, then the flip code."""
    top, left = round(float(window[0]) * h), round(float(window[1]) * w)
    assert float(window[2]) * h - top == pytest.approx(size) and float(window[3]) * w - left == pytest.approx(size)
    y, x = np.mgrid[top : top + size, left : left + size]
    xy = apply_flip_code_np(np.stack([x, y], axis=-1), int(window[4]))
    return xy[..., 0], xy[..., 1]


def test_flip_probe_identifies_every_random_flip_rot():
    rng = np.random.default_rng(3)
    img = coord_hdr(5, 7)
    seen = set()
    for _ in range(64):
        out, probe = T.random_flip_rot([img, FLIP_PROBE], rng, hflip=True, rot=True)
        code = flip_code_from_probe(probe)
        assert np.array_equal(out, apply_flip_code_np(img, code)), code
        seen.add(code)
    assert seen == set(range(8))
    with pytest.raises(ValueError, match='FLIP_PROBE'):
        flip_code_from_probe(np.zeros((2, 2, 1), np.float32))


def test_global_view_image_key_and_window(tmp_path):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    ldr_paths = make_ldr_folder(ldr, n=2)
    make_hdr_folder(hdr, n=1)
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, use_rot=True, global_size=12))
    np.random.seed(0)
    keys, windows, codes = {0: set(), 1: set()}, set(), set()
    for _ in range(12):
        for i in (0, 1):
            s = ds[i]
            g = s['ldr_global']
            assert g.shape == (3, 12, 12) and g.dtype == torch.float32 and 0 <= g.min() and g.max() <= 1
            assert s['ldr_window'].shape == (5,) and s['ldr_window'].dtype == torch.float32
            x, y = decode_ldr_coords(s['ldr'])
            ex, ey = _expected_coords(s['ldr_window'], H, W, 16)
            assert (x == ex).all() and (y == ey).all(), 'ldr_window must say where the crop came from and how it turned'
            keys[i].add(s['ldr_image_key'])
            windows.add(tuple(s['ldr_window'][:4].tolist()))
            codes.add(int(s['ldr_window'][4]))
    assert len(keys[0]) == len(keys[1]) == 1 and keys[0] != keys[1], 'one key per image, whatever the crop'
    assert len(windows) > 4 and len(codes) > 2
    # the global view is the whole image, area-resized and 8-bit quantised
    full = hdr_io.read_ldr(ldr_paths[1])
    expected = cv2.resize(full, (12, 12), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    np.testing.assert_allclose(ds[1]['ldr_global'].numpy(), expected, atol=0.5 / 255 + 1e-6)
    assert ds._global_views.hits > 0 and len(ds._image_keys) == 2  # memoised per path
    # the key names the pixels, not the file: a copy elsewhere has the same key, another image another one
    copy_dir = tmp_path / 'copy'
    copy_dir.mkdir()
    (copy_dir / 'renamed.png').write_bytes(Path(ldr_paths[1]).read_bytes())
    other = UnpairedLDRHDRDataset(unpaired_opt(copy_dir, hdr, global_size=12))
    assert other[0]['ldr_image_key'] == next(iter(keys[1]))


def test_window_cut_reproduces_the_crop(tmp_path):
    """cut_windows (what SAMSemanticLoss does to whole-image masks) on a coordinate map gives the crop's coordinates."""
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    make_ldr_folder(ldr, n=1)
    make_hdr_folder(hdr, n=1)
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, use_rot=True, global_size=8))
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    coord_map = torch.from_numpy(np.stack([x, y]))[None]  # (1, 2, H, W) over the whole image
    np.random.seed(1)
    samples = [ds[0] for _ in range(16)]
    windows = torch.stack([s['ldr_window'] for s in samples])
    cut = cut_windows(coord_map.expand(len(samples), -1, -1, -1), windows, (16, 16))
    for s, c in zip(samples, cut):
        x, y = decode_ldr_coords(s['ldr'])
        np.testing.assert_allclose(c[0].numpy(), x, atol=1e-4)
        np.testing.assert_allclose(c[1].numpy(), y, atol=1e-4)
    assert len({int(w[4]) for w in windows}) > 2


def test_window_of_a_reflect_padded_image(tmp_path):
    ldr, hdr = tmp_path / 'ldr', tmp_path / 'hdr'
    make_ldr_folder(ldr, n=1, h=10, w=12)
    make_hdr_folder(hdr, n=1)
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, use_hflip=False))
    np.random.seed(0)
    s = ds[0]
    y0, x0, y1, x1, code = s['ldr_window'].tolist()
    assert code == 0 and y0 < 0 < 1 < y1 and x0 < 0 < 1 < x1  # the window reaches into the padding
    assert (y1 - y0) * 10 == pytest.approx(16) and (x1 - x0) * 12 == pytest.approx(16)
    x, y = decode_ldr_coords(s['ldr'])
    top, left = round(y0 * 10), round(x0 * 12)
    rows, cols = np.arange(16) + top, np.arange(16) + left
    inside_r, inside_c = (rows >= 0) & (rows < 10), (cols >= 0) & (cols < 12)
    assert (y[inside_r][:, inside_c] == rows[inside_r][:, None]).all()  # unpadded pixels sit where the window says
    assert (x[inside_r][:, inside_c] == cols[inside_c][None]).all()


def test_global_view_options_val_phase_and_cache_images(folders):
    *_, ldr, hdr = folders
    s = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, phase='val'))[1]
    assert s['ldr_global'].shape == (3, 224, 224)  # default global_size
    assert s['ldr_window'].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]  # val: the whole image, unflipped
    for off in (0, None):
        s = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, global_size=off))[0]
        assert not {'ldr_global', 'ldr_image_key', 'ldr_window'} & set(s) and 'ldr_key' in s
    for bad in (-1, 2.5, True, '224'):
        with pytest.raises(ValueError, match='global_size'):
            UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, global_size=bad))
    plain = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, global_size=10, use_rot=True))
    cached = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, global_size=10, use_rot=True, cache_images=True))
    assert len(cached._global_views) == 4  # every view memoised at construction
    for ds in (plain, cached):
        np.random.seed(2)
        ds.samples = [ds[i % 4] for i in range(6)]
    for a, b in zip(plain.samples, cached.samples):
        assert a['ldr_image_key'] == b['ldr_image_key'] and torch.equal(a['ldr_window'], b['ldr_window'])
        assert torch.equal(a['ldr_global'], b['ldr_global'])


def test_global_view_collates_with_batch_two(folders):
    from torch.utils.data import DataLoader

    *_, ldr, hdr = folders
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, global_size=20, use_rot=True))
    np.random.seed(0)
    batch = next(iter(DataLoader(ds, batch_size=2, shuffle=False)))
    assert batch['ldr_global'].shape == (2, 3, 20, 20) and batch['ldr_window'].shape == (2, 5)
    assert isinstance(batch['ldr_image_key'], list) and len(set(batch['ldr_image_key'])) == 2
    view = LDRGlobalView.from_batch(batch)
    assert len(view) == 2 and view.size == 20 and view.cache_keys[0].startswith('image:')
    assert view.same_image().tolist() == [[True, False], [False, True]]
    assert LDRGlobalView.from_batch({k: v for k, v in batch.items() if k != 'ldr_global'}) is None
    with pytest.raises(KeyError, match='ldr_window'):
        LDRGlobalView.from_batch({k: v for k, v in batch.items() if k != 'ldr_window'})


# ---------------------------------------------------------------------------------------------- virtual camera
def test_virtual_camera_photographs_the_hdr_crop(folders):
    """cam_ldr is an 8-bit photo of exactly the returned HDR crop: a pixel clips iff hdr * cam_exposure >= 1 in some
    channel, and the photo is monotone in the scene's values."""
    _, _, ldr, hdr = folders
    ds = UnpairedLDRHDRDataset(
        unpaired_opt(ldr, hdr, virtual_camera={'clip_range': [0.1, 0.3]}, hdr_exposure_aug=[-1, 1])
    )
    np.random.seed(0)
    for i in range(len(ds)):
        s = ds[i]
        cam, scene = s['cam_ldr'], s['hdr'] * s['cam_exposure']
        assert cam.shape == s['hdr'].shape and cam.dtype == torch.float32 and s['cam_exposure'] > 0
        assert torch.equal(torch.round(cam * 255), cam * 255)  # 8-bit quantised
        clipped = scene.max(0).values >= 1
        assert (cam.max(0).values[clipped] == 1).all()
        assert (cam.max(0).values[scene.max(0).values < 0.9] < 1).all()
        order = scene[1].flatten().argsort()
        assert (cam[1].flatten()[order].diff() >= 0).all()  # monotone CRF
    val = UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, virtual_camera=True, phase='val'))
    assert 'cam_ldr' not in val[0]


def test_virtual_camera_bad_option_is_named(folders):
    _, _, ldr, hdr = folders
    with pytest.raises(ValueError, match='virtual_camera'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, virtual_camera={'gamma_range': [2.6, 1.8]}))
    with pytest.raises(ValueError, match='virtual_camera'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr, hdr, virtual_camera='on'))
