"""scripts/prepare_data.py (split / crop / synth / example) and llmhdr_basicsr/utils/camera.py on tiny data."""

import json
import os
import os.path as osp
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from llmhdr_basicsr.utils import camera as cam
from llmhdr_basicsr.utils.hdr_io import read_hdr, write_hdr, write_ldr

EV_REGEX = r'^(?P<scene>.+?)(_ev[-+]?\d+)?$'


def fake_hdr(rng, h=12, w=16):
    """Linear HDR with a bright spot: log-normal background, a region 20x brighter."""
    img = np.exp(rng.normal(-1.0, 1.0, size=(h, w, 3))).astype(np.float32)
    img[: h // 3, : w // 3] *= 20.0
    return img


@pytest.fixture()
def paired_data(tmp_path):
    """8 paired scenes (2 exposures each, scene_ev-1 / scene_ev+1), 2 LDR-only, 1 HDR-only."""
    rng = np.random.default_rng(0)
    ldr_dir, hdr_dir = tmp_path / 'ldr', tmp_path / 'hdr'
    for i in range(8):
        write_hdr(str(hdr_dir / f's{i}.exr'), fake_hdr(rng))
        for ev in ('-1', '+1'):
            write_ldr(str(ldr_dir / f's{i}_ev{ev}.png'), rng.random((12, 16, 3)))
    for name in ('photo_a', 'photo_b'):
        write_ldr(str(ldr_dir / f'{name}.png'), rng.random((12, 16, 3)))
    write_hdr(str(hdr_dir / 'lonely.exr'), fake_hdr(rng))
    return ldr_dir, hdr_dir


def scene_of(name):
    return re.match(EV_REGEX, osp.splitext(name)[0]).group('scene')


def run_split(prep, ldr_dir, hdr_dir, out, *extra):
    argv = ['split', '--ldr', str(ldr_dir), '--hdr', str(hdr_dir), '--out', str(out), '--scene-regex', EV_REGEX]
    return prep.main(argv + ['--test-fraction', '0.25', *extra])


def test_split_halves_are_disjoint(prep, paired_data, tmp_path):
    ldr_dir, hdr_dir = paired_data
    out = tmp_path / 'out'
    assert run_split(prep, ldr_dir, hdr_dir, out, '--seed', '3') == 0
    listing = {p: sorted(os.listdir(out / p)) for p in ('train_ldr', 'train_hdr', 'test_ldr', 'test_gt')}
    ldr_scenes = {scene_of(n) for n in listing['train_ldr']}
    hdr_scenes = {scene_of(n) for n in listing['train_hdr']}
    test_scenes = {scene_of(n) for n in listing['test_ldr']}
    assert not ldr_scenes & hdr_scenes and not ldr_scenes & test_scenes and not hdr_scenes & test_scenes
    assert len(test_scenes) == 2  # round(0.25 * 8 paired scenes)
    assert {'photo_a', 'photo_b'} <= ldr_scenes and 'lonely' in hdr_scenes  # unpaired files go to their own side
    assert ldr_scenes | hdr_scenes | test_scenes == {f's{i}' for i in range(8)} | {'photo_a', 'photo_b', 'lonely'}
    # both exposures of a scene travel together
    for s in ldr_scenes - {'photo_a', 'photo_b'}:
        assert f'{s}_ev-1.png' in listing['train_ldr'] and f'{s}_ev+1.png' in listing['train_ldr']
    # meta info = folder contents; test pairs name existing files; GT bytes equal the source
    assert (out / 'meta_info_train_ldr.txt').read_text().split() == listing['train_ldr']
    assert (out / 'meta_info_train_hdr.txt').read_text().split() == listing['train_hdr']
    pairs = [line.split() for line in (out / 'meta_info_test.txt').read_text().splitlines()]
    assert len(pairs) == 4 and sorted(p[0] for p in pairs) == listing['test_ldr']
    for ldr_name, gt_name in pairs:
        assert osp.splitext(ldr_name)[0] == osp.splitext(gt_name)[0]
        src = hdr_dir / f'{scene_of(ldr_name)}.exr'
        assert (out / 'test_gt' / gt_name).read_bytes() == src.read_bytes()
    record = json.loads((out / 'split.json').read_text())
    assert record['seed'] == 3 and record['counts']['train_hdr'] == len(listing['train_hdr'])


def test_split_is_reproducible_and_seeded(prep, paired_data, tmp_path):
    ldr_dir, hdr_dir = paired_data
    scenes = []
    for name, seed in (('a', '5'), ('b', '5'), ('c', '6')):
        assert run_split(prep, ldr_dir, hdr_dir, tmp_path / name, '--seed', seed) == 0
        scenes.append(json.loads((tmp_path / name / 'split.json').read_text())['scenes'])
    assert scenes[0] == scenes[1]
    assert scenes[0] != scenes[2]


def test_split_refuses_stale_output_and_links(prep, paired_data, tmp_path, capsys):
    ldr_dir, hdr_dir = paired_data
    out = tmp_path / 'out'
    assert run_split(prep, ldr_dir, hdr_dir, out) == 0
    assert run_split(prep, ldr_dir, hdr_dir, out) == 2
    assert '--overwrite' in capsys.readouterr().err
    assert run_split(prep, ldr_dir, hdr_dir, out, '--overwrite', '--mode', 'symlink') == 0
    first = sorted(os.listdir(out / 'train_hdr'))[0]
    assert osp.islink(out / 'train_hdr' / first)
    assert prep.main(['split', '--ldr', str(tmp_path / 'nope'), '--hdr', str(hdr_dir), '--out', str(out)]) == 2
    assert 'nope' in capsys.readouterr().err


def test_split_synthesises_missing_ldr_outside_hdr_half(prep, tmp_path):
    rng = np.random.default_rng(1)
    hdr_dir = tmp_path / 'hdr'
    for i in range(6):
        write_hdr(str(hdr_dir / f'h{i}.exr'), fake_hdr(rng))
    out = tmp_path / 'out'
    argv = ['split', '--hdr', str(hdr_dir), '--out', str(out), '--synth-missing-ldr', '--test-fraction', '0.34']
    assert prep.main(argv) == 0
    record = json.loads((out / 'split.json').read_text())
    synth_sources = {osp.basename(f['src']) for f in record['files']['train_ldr']}
    hdr_names = set(os.listdir(out / 'train_hdr'))
    assert synth_sources and not synth_sources & hdr_names
    assert all(f['synthesised'] for f in record['files']['train_ldr'] + record['files']['test_ldr'])
    cameras = json.loads((out / 'cameras.json').read_text())
    assert set(cameras) == set(os.listdir(out / 'train_ldr')) | set(os.listdir(out / 'test_ldr'))


def test_synth_records_cameras_that_reproduce_the_png(prep, tmp_path):
    rng = np.random.default_rng(2)
    hdr_dir = tmp_path / 'hdr'
    for i in range(3):
        write_hdr(str(hdr_dir / f'h{i}.exr'), fake_hdr(rng, 20, 24))
    out, gt = tmp_path / 'ldr', tmp_path / 'gt'
    argv = ['synth', '--hdr', str(hdr_dir), '--out', str(out), '--gt-out', str(gt), '--per-image', '2', '--seed', '7']
    assert prep.main(argv + ['--jpeg-prob', '0.5', '--wb-jitter', '0.1']) == 0
    record = json.loads((tmp_path / 'ldr_cameras.json').read_text())
    assert sorted(record) == sorted(os.listdir(out)) and len(record) == 6
    assert (tmp_path / 'ldr_cameras.csv').read_text().count('\n') == 7
    crfs = set()
    for name, row in record.items():
        params = cam.CameraParams.from_dict(row)
        assert params.exposure is not None and 0.02 <= params.clip_fraction <= 0.16
        crfs.add(params.crf)
        png = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)[..., ::-1]
        again = cam.apply_camera(read_hdr(row['source']), params, dtype=np.uint8)
        assert np.array_equal(png, again)
        assert (gt / name.replace('.png', '.exr')).read_bytes() == Path(row['source']).read_bytes()
    assert crfs == {'gamma', 'sigmoid'}
    # same seed -> same bytes; another seed -> different images
    again = ['synth', '--hdr', str(hdr_dir), '--out', str(tmp_path / 'again'), '--per-image', '2', '--seed', '7']
    assert prep.main(again + ['--jpeg-prob', '0.5', '--wb-jitter', '0.1']) == 0
    assert prep.main(['synth', '--hdr', str(hdr_dir), '--out', str(tmp_path / 'other'), '--seed', '8']) == 0
    for name in record:
        assert (tmp_path / 'again' / name).read_bytes() == (out / name).read_bytes()
    assert (tmp_path / 'other' / 'h0.png').read_bytes() != (out / 'h0_c0.png').read_bytes()


def test_tile_starts_follow_basicsr_rule(prep):
    assert prep.tile_starts(37, 16, 12, 0) == [0, 12, 21]  # 37 - 28 = 9 px left over -> flush last tile
    assert prep.tile_starts(37, 16, 12, 10) == [0, 12]  # 9 <= thresh: dropped, as BasicSR does
    assert prep.tile_starts(10, 16, 12, 0) == [0]  # smaller than a tile: whole axis


@pytest.mark.parametrize('workers', ['1', '2'])
def test_crop_covers_and_preserves_values(prep, tmp_path, workers):
    rng = np.random.default_rng(3)
    src = tmp_path / 'src'
    hdr = (np.exp(rng.normal(0, 3, size=(37, 45, 3))) * np.float32(1.2345)).astype(np.float32)
    write_hdr(str(src / 'big.exr'), hdr)
    codes16 = rng.integers(0, 65536, size=(30, 20, 3), dtype=np.uint16)
    write_ldr(str(src / 'photo.png'), codes16 / 65535.0, bit_depth=16)
    out = tmp_path / 'tiles'
    argv = [
        'crop',
        '--input',
        str(src),
        '--output',
        str(out),
        '--crop-size',
        '16',
        '--step',
        '12',
        '--workers',
        workers,
    ]
    assert prep.main(argv) == 0
    tiles = json.loads((tmp_path / 'tiles_crops.json').read_text())['tiles']
    assert sorted(t['tile'] for t in tiles) == sorted(os.listdir(out))
    sources = {'big.exr': hdr, 'photo.png': codes16}
    for name, ref in sources.items():
        covered = np.zeros(ref.shape[:2], bool)
        for t in (t for t in tiles if osp.basename(t['source']) == name):
            y, x, h, w = t['y'], t['x'], t['h'], t['w']
            covered[y : y + h, x : x + w] = True
            if name.endswith('.exr'):
                tile = read_hdr(str(out / t['tile']))
                assert tile.dtype == np.float32 and t['tile'].endswith('.exr')
            else:
                tile = cv2.imread(str(out / t['tile']), cv2.IMREAD_UNCHANGED)[..., ::-1]
                assert tile.dtype == np.uint16
            assert np.array_equal(tile, ref[y : y + h, x : x + w])
        assert covered.all()
    assert len([t for t in tiles if t['source'].endswith('big.exr')]) == 3 * 4  # rows 0,12,21 x cols 0,12,24,29


def test_example_on_tiny_data(prep, tmp_path, capsys):
    rng = np.random.default_rng(4)
    data = tmp_path / 'data'
    for i in range(8):
        write_hdr(str(data / 'hdr' / f'scene{i}.hdr'), fake_hdr(rng))
    for i in range(3):
        write_ldr(str(data / 'ldr' / f'photo{i}.png'), rng.random((10, 10, 3)))
    out = tmp_path / 'ex'
    assert prep.main(['example', '--data', str(data), '--out', str(out), '--crop-size', '8']) == 0
    text = capsys.readouterr().out
    assert 'synthesised from' in text and str(out / 'train_hdr') in text
    train_ldr, train_hdr = set(os.listdir(out / 'train_ldr')), set(os.listdir(out / 'train_hdr'))
    assert {f'photo{i}.png' for i in range(3)} <= train_ldr
    synth_stems = {osp.splitext(n)[0] for n in train_ldr} - {f'photo{i}' for i in range(3)}
    hdr_stems = {osp.splitext(n)[0] for n in train_hdr}
    test_stems = {osp.splitext(n)[0] for n in os.listdir(out / 'test_gt')}
    val_stems = {osp.splitext(n)[0] for n in os.listdir(out / 'val_gt')}
    assert synth_stems and hdr_stems and test_stems and val_stems
    assert not synth_stems & hdr_stems and not test_stems & (synth_stems | hdr_stems | val_stems)
    assert synth_stems | hdr_stems | test_stems | val_stems == {f'scene{i}' for i in range(8)}
    assert {osp.splitext(n)[0] for n in os.listdir(out / 'test_ldr')} == test_stems
    assert os.listdir(out / 'train_hdr_sub') and os.listdir(out / 'train_ldr_sub')


def test_preset_ntire_pairs_by_id_and_copies_align_ratio(prep, tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / 'ntire'
    for i in range(4):
        write_ldr(str(root / f'{i:04d}_medium.png'), rng.random((8, 8, 3)))
        write_ldr(str(root / f'{i:04d}_gt.png'), rng.random((8, 8, 3)), bit_depth=16)
        np.save(root / f'{i:04d}_alignratio.npy', np.float32(1000.0 + i))
    out = tmp_path / 'out'
    assert (
        prep.main(['split', '--preset', 'ntire', '--root', str(root), '--out', str(out), '--test-fraction', '0.25'])
        == 0
    )
    record = json.loads((out / 'split.json').read_text())
    assert len(record['scenes']['paired']) == 4
    for gt in os.listdir(out / 'train_hdr'):
        if gt.endswith('_gt.png'):
            assert (out / 'train_hdr' / gt.replace('_gt.png', '_alignratio.npy')).is_file()
    assert [n for n in os.listdir(out / 'test_gt') if n.endswith('_alignratio.npy')]


# --- utils/camera.py ------------------------------------------------------------------------------------------------


def test_random_camera_is_seeded_and_json_round_trips():
    a = cam.random_camera(np.random.default_rng(11), jpeg_prob=0.5, wb_jitter=0.1)
    b = cam.random_camera(np.random.default_rng(11), jpeg_prob=0.5, wb_jitter=0.1)
    assert a == b
    assert cam.CameraParams.from_dict(json.loads(a.to_json())) == a
    draws = [cam.random_camera(np.random.default_rng(s)) for s in range(200)]
    gammas = [d.gamma for d in draws if d.crf == 'gamma']
    assert 60 < len(gammas) < 140 and 1.8 <= min(gammas) and max(gammas) <= 2.6
    assert all(0.02 <= d.clip_fraction <= 0.16 for d in draws)
    assert not any(d.crf == 'logistic' for d in draws)  # off by default: the in-family test sets never use it
    wide = [cam.random_camera(np.random.default_rng(s), logistic_prob=0.4) for s in range(200)]
    assert 50 < sum(d.crf == 'logistic' for d in wide) < 110
    for a, b in zip(draws, wide):  # the extra family does not shift the other draws
        if b.crf != 'logistic':
            assert a == b


def test_exposure_hits_the_clip_fraction_and_crfs_invert():
    hdr = np.exp(np.random.default_rng(12).normal(0, 2, size=(64, 64, 3))).astype(np.float32)
    for target in (0.02, 0.1, 0.16):
        params = cam.resolve_camera(hdr, cam.CameraParams(clip_fraction=target, bit_depth=None))
        assert params.measured_clip_fraction == pytest.approx(target, abs=2.0 / hdr[..., 0].size)
        ldr = cam.apply_camera(hdr, params)
        assert np.mean(ldr.max(axis=2) >= 1.0) == pytest.approx(target, abs=1e-3)
    x = np.linspace(0, 1, 101)
    for params in (
        cam.CameraParams(crf='gamma', gamma=2.4),
        cam.CameraParams(crf='sigmoid', gamma=None, sigmoid_exponent=0.9, sigmoid_beta=0.6),
    ):
        y = cam.crf_encode(x, params)
        assert y[0] == 0 and y[-1] == pytest.approx(1.0) and np.all(np.diff(y) > 0)
        assert np.allclose(cam.crf_decode(y, params), x, atol=1e-9)
    # the logistic S-curve: 0 -> 0, white -> 1, monotone, a toe (slope < 1 at black) and a shoulder, invertible
    # above its 14-stop floor
    logistic = cam.CameraParams(crf='logistic', gamma=None, logistic_slope=0.8, logistic_pivot=-2.0)
    x = np.geomspace(2.0**-13, 1.0, 200)
    y = cam.crf_encode(x, logistic)
    assert cam.crf_encode(np.zeros(1), logistic)[0] == 0 and y[-1] == pytest.approx(1.0)
    assert np.all(np.diff(y) > 0) and y[0] < x[0]  # a toe: the deepest shadows get darker
    assert (1 - cam.crf_encode(np.array([0.9]), logistic)[0]) / 0.1 < 0.5  # a shoulder: highlights compressed
    assert np.allclose(cam.crf_decode(y, logistic), x, rtol=1e-6)
    with pytest.raises(ValueError, match='logistic'):
        cam.CameraParams(crf='logistic', gamma=None, logistic_slope=0.8, logistic_pivot=1.0)
    with pytest.raises(ValueError, match='jpeg_quality'):
        cam.CameraParams(jpeg_quality=90, bit_depth=16)


# --- example: the three-way split and the out-of-family renderings -------------------------------------------------


def test_example_three_way_split_never_shares_a_scene(prep, tmp_path):
    data = tmp_path / 'data'
    rng = np.random.default_rng(3)
    for i in range(10):  # two sources, as in the curated data
        write_hdr(str(data / 'hdr' / f'{"alpha" if i < 4 else "beta"}_{i}.hdr'), fake_hdr(rng, 24, 32))
    for i in range(3):
        write_ldr(str(data / 'ldr' / f'photo_{i}.png'), rng.random((24, 32, 3)))
    out = tmp_path / 'out'
    assert prep.main(['example', '--data', str(data), '--out', str(out), '--test-fraction', '0.3',
                      '--val-fraction', '0.2', '--seed', '1']) == 0  # fmt: skip
    record = json.loads((out / 'split.json').read_text())
    sc = record['scenes']
    parts = {name: set(sc[name]) for name in ('train_ldr', 'train_hdr', 'val', 'test')}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not parts[a] & parts[b], (a, b)
    assert len(sc['test']) == 3 and len(sc['val']) == 2
    assert {s.split('_')[0] for s in sc['test']} == {'alpha', 'beta'}  # stratified by source
    stems = {
        p: sorted(Path(f).stem for f in os.listdir(out / p))
        for p in ('train_ldr', 'train_hdr', 'val_ldr', 'val_ood_ldr', 'val_gt', 'test_ldr', 'test_ood_ldr', 'test_gt')
    }
    assert stems['test_ldr'] == stems['test_ood_ldr'] == stems['test_gt'] == sorted(sc['test'])
    assert stems['val_ldr'] == stems['val_ood_ldr'] == stems['val_gt'] == sorted(sc['val'])
    assert not set(stems['train_hdr']) & (set(stems['test_gt']) | set(stems['val_gt']))
    # the out-of-family LDRs are renderings of the same scenes with other curves than the in-family ones
    renders = json.loads((out / 'test_ood_ldr.json').read_text())
    assert {r['curve'] for r in renders.values()} <= {'hable', 'aces', 'drago', 'reinhard_lum'}
    for stem in sc['test']:
        a = cv2.imread(str(out / 'test_ldr' / f'{stem}.png'))
        b = cv2.imread(str(out / 'test_ood_ldr' / f'{stem}.png'))
        assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() > 1


def test_display_contrast_is_a_monotone_s_curve_and_keeps_old_camera_streams():
    """The virtual camera's display contrast: 0 -> 0, 1 -> 1, monotone, darker below mid-grey and brighter above
    (weight 0 returns the input); cameras drawn without it keep the random stream they had before it existed."""
    y = np.linspace(0.0, 1.0, 101)
    boosted = cam.display_contrast(y, 0.5)
    assert boosted[0] == pytest.approx(0.0) and boosted[-1] == pytest.approx(1.0)
    assert np.all(np.diff(boosted) > 0)
    assert np.all(boosted[1:50] < y[1:50]) and np.all(boosted[51:100] > y[51:100])
    assert cam.display_contrast(y, 0.0) is y
    with_draws = np.random.default_rng(3)
    params = cam.random_camera(with_draws, contrast_prob=1.0, contrast_range=(0.2, 0.3))
    assert 0.2 <= params.contrast <= 0.3
    plain, off = np.random.default_rng(3), np.random.default_rng(3)
    assert cam.random_camera(plain) == cam.random_camera(off, contrast_prob=0.0)
    assert plain.random() == off.random()  # same number of draws
    hdr = np.random.default_rng(0).uniform(0.0, 4.0, (8, 8, 3))
    flat = cam.apply_camera(hdr, cam.CameraParams(exposure=1.0, bit_depth=None))
    punchy = cam.apply_camera(hdr, cam.CameraParams(exposure=1.0, bit_depth=None, contrast=0.4))
    assert np.allclose(punchy, cam.display_contrast(flat.astype(np.float64), 0.4), atol=1e-6)
    with pytest.raises(ValueError, match='contrast'):
        cam.CameraParams(contrast=1.5)
