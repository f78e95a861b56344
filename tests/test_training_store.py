"""The prepared training store (scripts/prepare_data.py store, llmhdr_basicsr.data.training_store) on tiny frames."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from llmhdr_basicsr.data import training_store as ts
from llmhdr_basicsr.data.dataset_util import global_view_np, image_digest
from llmhdr_basicsr.data.hdr_transforms import hdr_norm_scale, normalize_hdr_np
from llmhdr_basicsr.data.paired_hdr_dataset import PairedLDRHDRDataset
from llmhdr_basicsr.data.unpaired_hdr_dataset import UnpairedLDRHDRDataset
from llmhdr_basicsr.utils import camera as cam
from llmhdr_basicsr.utils import hdr_io

FH, FW = 40, 56  # frame size; tiles of 24 every 16 px: 2 x 3 tiles per frame
TILING = ['--crop-size', '24', '--step', '16']


def hdr_frame(seed: int, h: int = FH, w: int = FW) -> np.ndarray:
    """Log-normal linear HDR with a 50x brighter top-left block: tiles of it have very different percentiles."""
    rng = np.random.default_rng(seed)
    img = np.exp(rng.normal(-1.0, 1.0, size=(h, w, 3))).astype(np.float32)
    img[: h // 3, : w // 4] *= 50.0
    return img


def coord_ldr(offset: int, h: int = FH, w: int = FW) -> np.ndarray:
    """Display-referred frame whose 16-bit codes encode the position: R = (x+1)*1000, G = (y+1)*1000."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x + 1) * 1000, (y + 1) * 1000, np.full_like(x, 5000 * (offset + 1))], axis=-1)
    return img.astype(np.float64) / 65535.0


@pytest.fixture
def frames(tmp_path):
    """3 HDR frames and 2 LDR frames (16-bit PNG) in their own folders."""
    hdr_dir, ldr_dir = tmp_path / 'hdr', tmp_path / 'ldr'
    for i in range(3):
        hdr_io.write_hdr(str(hdr_dir / f'frame{i}.exr'), hdr_frame(i))
    for i in range(2):
        hdr_io.write_ldr(str(ldr_dir / f'photo{i}.png'), coord_ldr(i), bit_depth=16)
    return hdr_dir, ldr_dir


def build(prep, src, out, *extra) -> int:
    return prep.main(['store', '--input', str(src), '--output', str(out), *TILING, *extra])


@pytest.fixture
def stores(prep, frames, tmp_path):
    hdr_dir, ldr_dir = frames
    hdr_store, ldr_store = tmp_path / 'hdr_store', tmp_path / 'ldr_store'
    assert build(prep, hdr_dir, hdr_store, '--samples', '65') == 0
    assert build(prep, ldr_dir, ldr_store) == 0
    return hdr_dir, ldr_dir, hdr_store, ldr_store


def unpaired_opt(ldr, hdr, **kw) -> dict:
    opt = dict(
        name='store', type='UnpairedLDRHDRDataset', phase='val', io_backend={'type': 'disk'},
        dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), crop_size=None,
    )  # fmt: skip
    opt.update(kw)
    return opt


def meta_rows(store: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    lines = [x for x in (store / ts.STORE_META).read_text().splitlines() if not x.startswith('#')]
    return [(p, f, tuple(int(v) for v in b.split(','))) for p, f, b in (x.split('\t') for x in lines)]


def clipped_fraction(img: np.ndarray, exposure: float) -> float:
    return float((img.max(axis=2) * exposure >= 1.0).mean())


# ---------------------------------------------------------------------------------------------------- building
def test_store_layout_tiles_and_frame_stats(stores):
    hdr_dir, _, hdr_store, ldr_store = stores
    info = json.loads((hdr_store / ts.STORE_INFO).read_text())
    assert info['kind'] == 'hdr' and info['frames'] == 3 and info['tiles'] == 18
    assert info['options']['crop_size'] == 24 and info['options']['hdr_norm'] == 99.5
    rows = meta_rows(hdr_store)
    assert len(rows) == 18 and {f for _, f, _ in rows} == {'frame0', 'frame1', 'frame2'}
    assert {b for _, f, b in rows if f == 'frame1'} == {(y, x, y + 24, x + 24) for y in (0, 16) for x in (0, 16, 32)}
    frame = hdr_io.read_hdr(str(hdr_dir / 'frame1.exr'))
    for path, f, (y0, x0, y1, x1) in rows:
        if f == 'frame1':  # float32 EXR tiles hold the frame's exact values
            np.testing.assert_array_equal(hdr_io.read_hdr(str(hdr_store / path)), frame[y0:y1, x0:x1])
    stats = ts.read_frame_stats(ts.frame_stats_path(str(hdr_store), 'frame1'), 'frame1')
    assert (stats.height, stats.width) == (FH, FW) and stats.digest == image_digest(frame)
    assert stats.norm_scale == hdr_norm_scale(frame, 99.5) == normalize_hdr_np(frame, 99.5)[1]
    assert stats.peak_sample.shape == (65, 3)
    ldr_info = json.loads((ldr_store / ts.STORE_INFO).read_text())
    assert ldr_info['kind'] == 'ldr' and ldr_info['tiles'] == 12
    assert not list(hdr_store.rglob('.tmp_*'))  # atomic writes leave no temporary files


def test_mixed_kinds_and_bad_options_are_refused(prep, frames, tmp_path, capsys):
    hdr_dir, ldr_dir = frames
    os.link(ldr_dir / 'photo0.png', hdr_dir / 'photo0.png')
    assert build(prep, hdr_dir, tmp_path / 'mixed') == 2
    err = capsys.readouterr().err
    assert 'mix HDR frames' in err and '--output' in err and len(err.strip().splitlines()) == 1
    assert prep.main(['store', '--input', str(ldr_dir), '--output', str(tmp_path / 's'), '--step', '0']) == 2
    assert '--step' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- loader
def test_tiles_of_one_frame_share_the_whole_frame_normalisation(stores):
    hdr_dir, ldr_dir, hdr_store, _ = stores
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr_dir, hdr_store))
    assert len(ds.hdr_paths) == 18
    frame = hdr_io.read_hdr(str(hdr_dir / 'frame0.exr'))
    whole, whole_scale = normalize_hdr_np(frame, 99.5)
    per_tile_scales = set()
    for index, path in enumerate(ds.hdr_paths):
        tile = ds.hdr_store.tile(path)
        if tile.frame != 'frame0':
            continue
        s = ds[index]  # val phase: hdr partner index % len(HDR), the whole tile
        assert s['hdr_path'] == path
        assert float(s['hdr_scale']) == pytest.approx(whole_scale, rel=1e-7)
        y0, x0, y1, x1 = tile.box
        np.testing.assert_array_equal(s['hdr'].numpy().transpose(1, 2, 0), whole[y0:y1, x0:x1])
        per_tile_scales.add(normalize_hdr_np(hdr_io.read_hdr(path), 99.5)[1])
    assert len(per_tile_scales) > 1  # without the store the tiles would be normalised differently
    # the same frames without a store: identical scale for the whole frame
    plain = UnpairedLDRHDRDataset(unpaired_opt(ldr_dir, hdr_dir))
    assert float(plain[0]['hdr_scale']) == pytest.approx(whole_scale, rel=1e-7)


def test_exposure_from_stored_stats_matches_the_whole_frame(stores):
    """Fixed clip fraction 5 %: every tile's camera exposure is the whole frame's, within 1/(K-1) clipped fraction."""
    _, ldr_dir, hdr_store, _ = stores
    opt = unpaired_opt(ldr_dir, hdr_store, phase='train', crop_size=16, virtual_camera={'clip_range': [0.05, 0.05]})
    ds = UnpairedLDRHDRDataset(opt)
    tolerance = 1 / 64 + 1 / (FH * FW)  # store built with --samples 65
    np.random.seed(0)
    seen = set()
    for i in range(12):
        s = ds[i % len(ds)]
        tile = ds.hdr_store.tile(s['hdr_path'])
        frame = hdr_io.read_hdr(str(hdr_store.parent / 'hdr' / f'{tile.frame}.exr'))
        normed, _ = normalize_hdr_np(frame, 99.5)
        truth = cam.exposure_for_clip_fraction(normed, 0.05)  # whole frame, stride 1
        got = float(s['cam_exposure'])
        assert abs(clipped_fraction(normed, got) - clipped_fraction(normed, truth)) <= tolerance
        assert abs(np.log2(got / truth)) < 0.1
        seen.add(tile.frame)
    assert len(seen) > 1


@pytest.mark.parametrize('count', [257, 4097])
def test_rank_sample_exposure_tolerance(count):
    rng = np.random.default_rng(3)
    img = np.exp(rng.normal(0.0, 1.5, size=(150, 200, 3))).astype(np.float32)
    sample = cam.peak_rank_sample(img, count)
    assert sample.shape == (count, 3) and np.all(np.diff(sample.max(axis=1)) >= 0)
    n = img.shape[0] * img.shape[1]
    for fraction in (0.0, 0.001, 0.02, 0.05, 0.16, 0.5):
        truth = cam.exposure_for_clip_fraction(img, fraction)
        got = cam.exposure_from_rank_sample(sample, fraction)
        assert abs(clipped_fraction(img, got) - clipped_fraction(img, truth)) <= 1 / (count - 1) + 1 / n
    assert cam.exposure_from_rank_sample(sample, 0.0) == cam.exposure_for_clip_fraction(img, 0.0)
    gains = [1.1, 1.0, 0.9]  # white-balanced camera: a rank-stratified sample, still close
    truth = cam.exposure_for_clip_fraction(img, 0.05, gains)
    got = cam.exposure_from_rank_sample(sample, 0.05, gains)
    balanced = img * np.asarray(gains, dtype=np.float32)
    assert abs(clipped_fraction(balanced, got) - clipped_fraction(balanced, truth)) <= 0.01
    assert cam.exposure_from_rank_sample(np.zeros((5, 3), np.float32), 0.1) == 1.0  # all black


def test_whole_image_view_comes_from_the_frame_thumbnail(stores):
    _, ldr_dir, hdr_store, ldr_store = stores
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr_store, hdr_store))
    plain = UnpairedLDRHDRDataset(unpaired_opt(ldr_dir, hdr_store))
    frame = hdr_io.read_ldr(str(ldr_dir / 'photo1.png'))
    expected_view = global_view_np(frame, 224).transpose(2, 0, 1).astype(np.float32) / 255.0
    keys = set()
    for index, path in enumerate(ds.ldr_paths):
        tile = ds.ldr_store.tile(path)
        if tile.frame != 'photo1':
            continue
        s = ds[index]
        keys.add(s['ldr_image_key'])
        np.testing.assert_array_equal(s['ldr_global'].numpy(), expected_view)
        y0, x0, y1, x1 = tile.box
        np.testing.assert_allclose(s['ldr_window'].numpy(), [y0 / FH, x0 / FW, y1 / FH, x1 / FW, 0], rtol=1e-6)
    # the same key as the whole frame read without a store: CLIP/SAM caches carry over
    assert keys == {image_digest(frame)} == {plain[1]['ldr_image_key']}
    assert len(ds) == 12


def test_train_crop_window_is_in_frame_coordinates(stores):
    _, _, hdr_store, ldr_store = stores
    ds = UnpairedLDRHDRDataset(unpaired_opt(ldr_store, hdr_store, phase='train', crop_size=16, use_hflip=False))
    np.random.seed(1)
    for i in range(len(ds)):
        s = ds[i]
        codes = s['ldr'].numpy().astype(np.float64) * 65535.0
        x0, y0 = round(codes[0, 0, 0] / 1000) - 1, round(codes[1, 0, 0] / 1000) - 1  # frame position of pixel (0, 0)
        np.testing.assert_allclose(s['ldr_window'].numpy(), [y0 / FH, x0 / FW, (y0 + 16) / FH, (x0 + 16) / FW, 0],
                                   rtol=1e-6)  # fmt: skip


def test_paired_dataset_reads_stores(prep, frames, tmp_path):
    hdr_dir, _ = frames
    ldr_dir = tmp_path / 'ldr_same_names'
    for i in range(3):
        hdr_io.write_ldr(str(ldr_dir / f'frame{i}.png'), coord_ldr(i))
    assert build(prep, hdr_dir, tmp_path / 'gt') == 0
    assert build(prep, ldr_dir, tmp_path / 'lq') == 0
    opt = dict(name='p', phase='val', dataroot_lq=str(tmp_path / 'lq'), dataroot_gt=str(tmp_path / 'gt'))
    ds = PairedLDRHDRDataset(opt)
    assert len(ds) == 18
    scale = hdr_norm_scale(hdr_io.read_hdr(str(hdr_dir / 'frame2.exr')), 99.5)
    scales = {float(ds[i]['gt_scale']) for i in range(len(ds)) if 'frame2_' in ds.pairs[i][1]}
    assert len(scales) == 1 and scales.pop() == pytest.approx(scale, rel=1e-7)


# ---------------------------------------------------------------------------------------------------- resume/errors
def test_resume_skips_done_frames(prep, frames, tmp_path, capsys):
    hdr_dir, _ = frames
    store = tmp_path / 'store'
    assert build(prep, hdr_dir, store) == 0
    assert '3 built, 0 already done' in capsys.readouterr().out
    stats = {p.name: p.stat().st_mtime_ns for p in (store / 'frames').iterdir()}
    assert build(prep, hdr_dir, store) == 0
    assert '0 built, 3 already done' in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (store / 'frames').iterdir()} == stats
    (store / 'frames' / 'frame1.npz').unlink()  # an interrupted run: one frame missing
    src = hdr_dir / 'frame2.exr'
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))  # a changed source frame
    assert build(prep, hdr_dir, store) == 0
    assert '2 built, 1 already done' in capsys.readouterr().out
    assert (store / 'frames' / 'frame0.npz').stat().st_mtime_ns == stats['frame0.npz']
    assert build(prep, hdr_dir, store, '--hdr-norm', 'max') == 0  # other options: every frame again
    assert '3 built, 0 already done' in capsys.readouterr().out


def test_missing_stats_file_is_a_one_line_error(stores):
    _, ldr_dir, hdr_store, _ = stores
    missing = hdr_store / 'frames' / 'frame2.npz'
    missing.unlink()
    with pytest.raises(FileNotFoundError) as info:
        UnpairedLDRHDRDataset(unpaired_opt(ldr_dir, hdr_store))
    msg = str(info.value)
    assert '\n' not in msg and str(missing) in msg and 'dataroot_hdr' in msg
    assert 'prepare_data.py store --input' in msg and str(hdr_store) in msg


def test_option_mismatches_and_unfinished_store_are_named(stores):
    _, ldr_dir, hdr_store, ldr_store = stores
    with pytest.raises(ValueError, match=r'hdr_norm is 100.0 .* built with hdr_norm 99.5.*--hdr-norm 100.0'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr_dir, hdr_store, hdr_norm='max'))
    UnpairedLDRHDRDataset(unpaired_opt(ldr_dir, hdr_store, hdr_norm='none'))  # file values: no statistic needed
    with pytest.raises(ValueError, match=r'global_size 256 exceeds .*--thumbnail-size 256'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr_store, hdr_store, global_size=256))
    small = UnpairedLDRHDRDataset(unpaired_opt(ldr_store, hdr_store, global_size=32))
    assert small[0]['ldr_global'].shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r'meta_info_hdr cannot be used with the training store'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr_dir, hdr_store, meta_info_hdr='list.txt'))
    with pytest.raises(ValueError, match=r'store of ldr frames'):
        UnpairedLDRHDRDataset(unpaired_opt(hdr_store, hdr_store))
    (hdr_store / ts.STORE_INFO).unlink()
    with pytest.raises(ValueError, match=r'unfinished training store .*prepare_data.py store'):
        UnpairedLDRHDRDataset(unpaired_opt(ldr_dir, hdr_store))
