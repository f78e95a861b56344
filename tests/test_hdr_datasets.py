"""Transfer functions (utils/transfer.py), integer-coded HDR reading (hdr_io.read_coded_hdr), the dataset readers of
data/hdr_datasets.py and ``prepare_data.py convert``, on tiny files written in each dataset's exact encoding.

Tolerances: a 16-bit file holds code values rounded to the nearest 1/65535, so a decoded pixel can be off by at most
what half a code step is worth at its code value: ``|decode(code + 0.5/65535) - decode(code)|`` (the curves are
monotonic and convex, so the upper side is the larger). Through the BT.2020 -> BT.709 matrix M the bound of each
output channel is ``|M| @ bound_2020``. Every comparison below uses that per-pixel bound (plus 1e-6 relative for
float32 rounding); a wrong curve, constant, white scale or channel order is off by far more.
"""

import json
import os

import cv2
import numpy as np
import pytest

from llmhdr_basicsr.data import hdr_datasets as hd
from llmhdr_basicsr.utils import transfer as tf
from llmhdr_basicsr.utils.hdr_io import ImageReadError, read_coded_hdr, read_hdr, read_image_raw, write_hdr, write_ldr

Q16 = 0.5 / 65535.0  # half a 16-bit code step


def linear_709(h=6, w=9, lo=1e-3, hi=40.0, seed=0):
    """Linear BT.709 RGB (white = 1.0) over ~4.6 decades, distinct channels (a red pixel catches RGB/BGR swaps)."""
    rng = np.random.default_rng(seed)
    img = np.exp(rng.uniform(np.log(lo), np.log(hi), (h, w, 3)))
    img[0, 0] = (0.9 * hi, 0.1 * hi, 10 * lo)
    return img


def write_u16(path, code):
    """Code values in [0, 1], (H, W, 3) RGB -> 16-bit PNG/TIFF through cv2.imwrite (BGR on disk)."""
    q = np.round(np.clip(code, 0, 1) * 65535).astype(np.uint16)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(q[..., ::-1]))
    return q.astype(np.float64) / 65535.0  # the stored codes


def bound(code, transfer, matrix=None, **kw):
    """Half-code-step error bound of each decoded value (module docstring), mapped through ``|matrix|``."""
    err = np.abs(tf.decode_transfer(code + Q16, transfer, **kw) - tf.decode_transfer(code, transfer, **kw))
    return err if matrix is None else err @ np.abs(matrix).T


def assert_within(out, ref, tol):
    excess = np.abs(out.astype(np.float64) - ref) - (tol + 1e-6 * np.abs(ref))
    assert excess.max() <= 0, f'worst excess {excess.max():.3g} at {np.unravel_index(excess.argmax(), excess.shape)}'


# --- transfer functions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize('transfer', ['pq', 'hlg', 'srgb', 'linear'])
def test_decode_encode_round_trip(transfer):
    code = np.linspace(1e-5, 1.0, 20001)  # PQ maps codes below c1**m2 = 7.3e-7 to 0 cd/m², hence the floor
    back = tf.encode_transfer(tf.decode_transfer(code, transfer), transfer)
    # 1e-8, not 1e-12: BT.2100's 8-digit HLG constants decode code 1.0 to E = 1 + 2e-8, which encoding clips to 1
    assert np.abs(back - code).max() < 1e-8


def test_pq_matches_published_code_values():
    # SMPTE ST 2084 / BT.2100: 100 cd/m² -> 0.5081, 203 -> 0.5807, 1000 -> 0.7518, 10000 -> 1 (10-bit 520/595/769/1023)
    np.testing.assert_allclose(
        tf.linear_to_pq([100.0, 203.0, 1000.0, 10000.0]), [0.5081, 0.5807, 0.7518, 1.0], atol=1e-4
    )
    assert tf.pq_to_linear(1.0) == pytest.approx(10000.0) and tf.pq_to_linear(0.0) == 0.0
    assert tf.decode_transfer(tf.linear_to_pq(203.0), 'pq') == pytest.approx(1.0, rel=1e-9)  # white_nits 203 -> 1.0


def test_hlg_is_continuous_and_reference_white_is_75_percent():
    assert tf.linear_to_hlg(1.0 / 12.0) == pytest.approx(0.5, abs=1e-7)  # the two branches meet
    assert tf.hlg_to_linear(0.5) == pytest.approx(1.0 / 12.0, abs=1e-9)
    assert tf.hlg_to_linear(1.0) == pytest.approx(1.0, abs=1e-6)  # nominal peak (8-digit constants)
    assert tf.HLG_REFERENCE_WHITE == pytest.approx(0.265, abs=1e-3)
    assert tf.decode_transfer(0.75, 'hlg') == pytest.approx(1.0)


def test_primaries_matrices_invert_keep_white_and_match_bt2087():
    np.testing.assert_allclose(tf.BT2020_TO_BT709 @ tf.BT709_TO_BT2020, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(tf.BT2020_TO_BT709 @ np.ones(3), np.ones(3), atol=1e-12)
    np.testing.assert_allclose(tf.BT709_TO_BT2020 @ np.ones(3), np.ones(3), atol=1e-12)
    bt2087 = [[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]]  # ITU-R BT.2087, 4 dp
    np.testing.assert_allclose(tf.BT709_TO_BT2020, bt2087, atol=6e-5)
    saturated_2020_green = tf.convert_primaries([0.0, 1.0, 0.0], 'bt2020', 'bt709')
    assert saturated_2020_green.min() < 0  # out of the BT.709 gamut: kept negative here, clipped by the readers


# --- read_coded_hdr on files in the exact encodings ---------------------------------------------------------------


def test_pq_bt2020_16bit_png_decodes_to_linear_bt709(tmp_path):
    ref = linear_709()
    path = tmp_path / 'pq.png'
    code = write_u16(path, tf.encode_transfer(tf.convert_primaries(ref, 'bt709', 'bt2020'), 'pq'))
    out = read_coded_hdr(str(path))  # defaults: PQ, BT.2020 -> BT.709, 203 cd/m² = 1.0
    assert out.dtype == np.float32 and out.shape == ref.shape and out.min() >= 0
    assert_within(out, ref, bound(code, 'pq', tf.BT2020_TO_BT709))
    kept = read_coded_hdr(str(path), out_primaries='bt2020')
    assert_within(kept, tf.convert_primaries(ref, 'bt709', 'bt2020'), bound(code, 'pq'))
    at_100 = read_coded_hdr(str(path), white_nits=100.0)  # the relative scale follows white_nits
    np.testing.assert_allclose(at_100, out * 2.03, rtol=1e-5, atol=1e-7)


def test_hlg_bt2020_16bit_png_decodes_to_scene_linear(tmp_path):
    ref = linear_709(lo=1e-3, hi=3.5)  # HLG's scene-linear range: peak = 1 / 0.265 = 3.77 x reference white
    path = tmp_path / 'hlg.png'
    code = write_u16(path, tf.encode_transfer(tf.convert_primaries(ref, 'bt709', 'bt2020'), 'hlg'))
    out = read_coded_hdr(str(path), transfer='hlg')
    assert_within(out, ref, bound(code, 'hlg', tf.BT2020_TO_BT709))


def test_srgb_16bit_tiff_decodes_to_linear(tmp_path):
    ref = linear_709(lo=1e-3, hi=1.0)
    path = tmp_path / 'srgb.tif'
    code = write_u16(path, tf.linear_to_srgb(ref))
    out = read_coded_hdr(str(path), transfer='srgb', primaries='bt709')
    assert_within(out, ref, bound(code, 'srgb'))
    assert read_image_raw(str(path)).dtype == np.uint16  # the raw helper keeps the stored codes


def test_bit_depth_option_and_its_errors(tmp_path):
    codes10 = np.arange(0, 1024, 4, dtype=np.uint16)[:243].reshape(9, 9, 3)  # 10-bit codes stored unshifted
    path = tmp_path / 'ten.png'
    cv2.imwrite(str(path), codes10)
    out = read_coded_hdr(str(path), transfer='linear', primaries='bt709', bit_depth=10)
    np.testing.assert_allclose(out.max(), codes10.max() / 1023.0, rtol=1e-6)
    big = tmp_path / 'big.png'
    cv2.imwrite(str(big), np.full((2, 2, 3), 4000, np.uint16))
    with pytest.raises(ImageReadError, match=r'big\.png.*bit_depth 10'):
        read_coded_hdr(str(big), bit_depth=10)
    eight = tmp_path / 'eight.png'
    write_ldr(str(eight), np.full((2, 2, 3), 0.5))
    with pytest.raises(ImageReadError, match=r'eight\.png holds 8-bit data'):
        hd.read_hdrtv_hdr(str(eight))
    with pytest.raises(ValueError, match='transfer must be one of'):
        read_coded_hdr(str(path), transfer='gamma')
    with pytest.raises(ValueError, match='primaries must be one of'):
        read_coded_hdr(str(path), primaries='p3')


# --- dataset layouts ----------------------------------------------------------------------------------------------


def make_hdrtv(root, names=('a_001', 'a_002', 'b_001'), subset='train'):
    top, part = {'train': ('training_set', 'train'), 'test': ('test_set', 'test')}[subset]
    refs = {}
    for i, n in enumerate(names):
        refs[n] = linear_709(seed=i)
        code = tf.encode_transfer(tf.convert_primaries(refs[n], 'bt709', 'bt2020'), 'pq')
        write_u16(root / top / f'{part}_hdr' / f'{n}.png', code)
        write_ldr(str(root / top / f'{part}_sdr' / f'{n}.png'), np.clip(refs[n], 0, 1) ** (1 / 2.4))
    return refs


def make_ntire(root, ids=('0000', '0001'), split_folders=False):
    """Ground truth exactly as the challenge kit writes it: gamma 1/2.24, alignratio = 65535 / max, round to uint16."""
    refs = {}
    for i, k in enumerate(ids):
        refs[k] = linear_709(seed=10 + i, lo=1e-3, hi=30.0)
        gamma = refs[k] ** (1 / 2.24)
        ratio = np.float32(65535.0 / gamma.max())
        png = np.round(gamma * ratio).astype(np.uint16)
        gt_dir, med_dir, ar_dir = (root / 'gt', root / 'medium', root / 'alignratio') if split_folders else (root,) * 3
        for d in (gt_dir, med_dir, ar_dir):
            d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(gt_dir / f'{k}_gt.png'), np.ascontiguousarray(png[..., ::-1]))
        np.save(ar_dir / f'{k}_alignratio.npy', ratio)
        write_ldr(str(med_dir / f'{k}_medium.png'), np.clip(refs[k], 0, 1) ** (1 / 2.24))
    return refs


def ntire_bound(ref, ratio):
    """Half a 16-bit step in the gamma domain, after the 2.24 power."""
    g = ref ** (1 / 2.24)
    return (g + 0.5 / ratio) ** 2.24 - g**2.24


@pytest.mark.parametrize('split_folders', [False, True])
def test_ntire_pairs_and_ground_truth(tmp_path, split_folders):
    refs = make_ntire(tmp_path / 'ntire', split_folders=split_folders)
    pairs = hd.list_pairs(str(tmp_path / 'ntire'), 'ntire')
    assert [p.name for p in pairs] == ['0000', '0001']
    for p in pairs:
        assert p.ldr.endswith(f'{p.name}_medium.png') and p.sidecar.endswith(f'{p.name}_alignratio.npy')
        ref = refs[p.name]
        ratio = float(np.load(p.sidecar))
        out = hd.read_hdr_frame(p.hdr, 'ntire', p.sidecar)
        assert_within(out, ref, ntire_bound(ref, ratio))
        gamma = hd.read_ntire_gt(p.hdr, p.sidecar, linearise=False)  # = the kit's imread_uint16_png
        assert_within(gamma, ref ** (1 / 2.24), np.full(ref.shape, 0.5 / ratio))


def test_ntire_missing_or_bad_sidecar_is_named(tmp_path):
    make_ntire(tmp_path / 'n', ids=('0007',))
    (tmp_path / 'n' / '0007_alignratio.npy').unlink()
    with pytest.raises(FileNotFoundError, match='0007_alignratio.npy not found'):
        hd.list_pairs(str(tmp_path / 'n'), 'ntire')
    np.save(tmp_path / 'n' / '0007_alignratio.npy', np.float32(-1))
    with pytest.raises(ValueError, match=r'0007_alignratio\.npy: expected one finite alignment ratio > 0'):
        hd.read_hdr_frame(str(tmp_path / 'n' / '0007_gt.png'), 'ntire')


def test_hdrtv_pairs_read_and_layout_errors(tmp_path):
    root = tmp_path / 'HDRTV1K'
    refs = make_hdrtv(root)
    make_hdrtv(root, names=('t_001',), subset='test')
    pairs = hd.list_pairs(str(root), 'hdrtv')
    assert [p.name for p in pairs] == sorted(refs) and all(p.ldr and p.sidecar is None for p in pairs)
    assert [p.name for p in hd.list_pairs(str(root), 'hdrtv', 'test')] == ['t_001']
    p = pairs[0]
    code = read_image_raw(p.hdr).astype(np.float64) / 65535.0
    assert_within(hd.read_hdr_frame(p.hdr, 'hdrtv'), refs[p.name], bound(code, 'pq', tf.BT2020_TO_BT709))
    with pytest.raises(ValueError, match="unknown subset 'val'"):
        hd.list_pairs(str(root), 'hdrtv', 'val')
    with pytest.raises(FileNotFoundError, match=r'missing folder .*training_set.train_hdr; point --root'):
        hd.list_pairs(str(root / 'training_set'), 'hdrtv')  # one level too deep
    (root / 'training_set' / 'train_sdr' / 'b_001.png').unlink()
    with pytest.raises(ValueError, match=r"1 file\(s\) without a partner .*'b_001'"):
        hd.list_pairs(str(root), 'hdrtv')


def test_singlehdr_layouts(tmp_path):
    base = tmp_path / 'SingleHDR_training_data'
    for i in range(3):
        write_hdr(str(base / 'HDR-Real' / 'HDR_gt' / f'{i:05d}.hdr'), linear_709(seed=i))
        write_ldr(str(base / 'HDR-Real' / 'LDR_in' / f'{i:05d}.jpg'), np.clip(linear_709(seed=i), 0, 1))
    write_hdr(str(base / 'HDR-Synth' / 'funt' / 'hdr' / 'S0350.hdr'), linear_709(seed=5))
    write_hdr(str(base / 'HDR-Synth' / 'fairchild' / 'LabBooth.exr'), linear_709(seed=6))
    write_hdr(str(base / 'HDR-Synth' / 'stanford' / 'LabBooth.hdr'), linear_709(seed=7))  # same stem elsewhere
    real = hd.list_pairs(str(base), 'hdr-real')
    assert [p.name for p in real] == ['00000', '00001', '00002'] and real[0].ldr.endswith('00000.jpg')
    assert [p.name for p in hd.list_pairs(str(base / 'HDR-Real'), 'hdr-real')] == [p.name for p in real]
    synth = hd.list_pairs(str(base), 'hdr-synth')
    assert [p.name for p in synth] == ['fairchild_LabBooth', 'funt_hdr_S0350', 'stanford_LabBooth']
    assert all(p.ldr is None for p in synth)
    np.testing.assert_array_equal(hd.read_hdr_frame(synth[0].hdr, 'hdr-synth'), read_hdr(synth[0].hdr))
    with pytest.raises(FileNotFoundError, match='point --root at the unpacked SingleHDR_training_data'):
        hd.list_pairs(str(tmp_path), 'hdr-real')


def test_unknown_format_and_gta_hdr_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset format 'hdr-eye'; choose one of hdrtv, ntire"):
        hd.list_pairs(str(tmp_path), 'hdr-eye')
    with pytest.raises(ValueError, match='gta-hdr: not published.*split --ldr DIR --hdr DIR'):
        hd.list_pairs(str(tmp_path), 'gta-hdr')
    with pytest.raises(FileNotFoundError, match='dataset folder does not exist'):
        hd.list_pairs(str(tmp_path / 'nope'), 'ntire')


# --- prepare_data.py convert --------------------------------------------------------------------------------------


def test_convert_hdrtv_writes_linear_exr_and_ldr_copies(prep, tmp_path, capsys):
    root, out = tmp_path / 'HDRTV1K', tmp_path / 'conv'
    refs = make_hdrtv(root)
    assert prep.main(['convert', '--format', 'hdrtv', '--root', str(root), '--out', str(out)]) == 0
    assert sorted(os.listdir(out / 'hdr')) == [f'{n}.exr' for n in sorted(refs)]
    assert sorted(os.listdir(out / 'ldr')) == [f'{n}.png' for n in sorted(refs)]
    for n in refs:
        src = root / 'training_set' / 'train_hdr' / f'{n}.png'
        np.testing.assert_array_equal(read_hdr(str(out / 'hdr' / f'{n}.exr')), hd.read_hdr_frame(str(src), 'hdrtv'))
        sdr = root / 'training_set' / 'train_sdr' / f'{n}.png'
        assert (out / 'ldr' / f'{n}.png').read_bytes() == sdr.read_bytes()
    record = json.loads((out / 'convert.json').read_text())
    assert record['format'] == 'hdrtv' and record['options']['white_nits'] == 203.0
    assert [r['name'] for r in record['files']] == sorted(refs) and all(r['decoded'] for r in record['files'])
    assert 'next: split --ldr' in capsys.readouterr().out
    # the converted folders feed split directly (paired by stem)
    assert prep.main(['split', '--ldr', str(out / 'ldr'), '--hdr', str(out / 'hdr'), '--out', str(tmp_path / 's')]) == 0
    # a second run without --overwrite refuses to mix old and new files
    assert prep.main(['convert', '--format', 'hdrtv', '--root', str(root), '--out', str(out)]) == 2


def test_convert_ntire_and_hdr_synth(prep, tmp_path):
    refs = make_ntire(tmp_path / 'ntire', split_folders=True)
    out = tmp_path / 'n_out'
    assert prep.main(['convert', '--format', 'ntire', '--root', str(tmp_path / 'ntire'), '--out', str(out)]) == 0
    assert sorted(os.listdir(out / 'hdr')) == ['0000.exr', '0001.exr']
    assert sorted(os.listdir(out / 'ldr')) == ['0000.png', '0001.png']
    ratio = float(np.load(tmp_path / 'ntire' / 'alignratio' / '0000_alignratio.npy'))
    assert_within(read_hdr(str(out / 'hdr' / '0000.exr')), refs['0000'], ntire_bound(refs['0000'], ratio))

    synth_root, s_out = tmp_path / 'HDR-Synth', tmp_path / 's_out'
    write_hdr(str(synth_root / 'ward' / 'Memorial.hdr'), linear_709())
    assert prep.main(['convert', '--format', 'hdr-synth', '--root', str(synth_root), '--out', str(s_out)]) == 0
    assert os.listdir(s_out / 'hdr') == ['ward_Memorial.hdr'] and not (s_out / 'ldr').exists()
    assert (s_out / 'hdr' / 'ward_Memorial.hdr').read_bytes() == (synth_root / 'ward' / 'Memorial.hdr').read_bytes()


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        (['--format', 'hdr-eye'], "Unknown dataset format 'hdr-eye'; choose one of"),
        (['--format', 'hdrtv'], 'hdrtv: missing folder'),
        (['--format', 'gta-hdr'], 'gta-hdr: not published'),
        (['--format', 'hdrtv', '--hdr-ext', '.png'], '--hdr-ext must be one of'),
    ],
)
def test_convert_bad_input_is_one_line_error(prep, tmp_path, capsys, argv, message):
    assert prep.main(['convert', '--root', str(tmp_path), '--out', str(tmp_path / 'o'), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('prepare_data.py convert: error: ') and message in err


def test_split_preset_finds_hdr_synth_collections(prep, tmp_path):
    base = tmp_path / 'SingleHDR_training_data'
    for i in range(4):
        write_hdr(str(base / 'HDR-Real' / 'HDR_gt' / f'{i:05d}.hdr'), linear_709(seed=i))
        write_ldr(str(base / 'HDR-Real' / 'LDR_in' / f'{i:05d}.jpg'), np.clip(linear_709(seed=i), 0, 1))
    write_hdr(str(base / 'HDR-Synth' / 'funt' / 'hdr' / 'S0350.hdr'), linear_709(seed=5))
    write_hdr(str(base / 'HDR-Synth' / 'fairchild' / 'LabBooth.exr'), linear_709(seed=6))
    out = tmp_path / 'split'
    argv = ['split', '--preset', 'hdr-synth-real', '--root', str(base), '--out', str(out), '--test-fraction', '0.25']
    assert prep.main(argv) == 0
    scenes = json.loads((out / 'split.json').read_text())['scenes']
    assert scenes['paired'] == [f'real:{i:05d}' for i in range(4)]
    assert scenes['hdr_only'] == ['synth:LabBooth', 'synth:S0350']
