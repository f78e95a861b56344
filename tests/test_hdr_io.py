"""Round trips, layouts and error reporting of llmhdr_basicsr.utils.hdr_io (CPU, tiny generated images)."""

import logging
import os
import os.path as osp

import cv2
import numpy as np
import pytest

from llmhdr_basicsr.utils.hdr_io import (
    ImageReadError,
    list_images,
    read_hdr,
    read_image,
    read_ldr,
    sanitize_hdr,
    write_hdr,
    write_ldr,
)

SHARED_HDR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'shared', 'data', 'hdr')


def _hdr(h=6, w=9, seed=0):
    """Linear HDR test image spanning ~4 decades, with distinct channels (catches RGB/BGR swaps)."""
    rng = np.random.default_rng(seed)
    img = np.exp(rng.uniform(np.log(1e-3), np.log(50.0), (h, w, 3))).astype(np.float32)
    img[0, 0] = (10.0, 1.0, 0.1)  # red-dominant pixel
    return img


def _ldr(h=6, w=9, seed=0):
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


@pytest.fixture
def llmhdr_log(caplog):
    """caplog attached to 'basicsr.llmhdr' itself: BasicSR's get_root_logger sets propagate=False on 'basicsr', so
    records would not reach the root handler once any BasicSR code has initialised its logger in this process."""
    target = logging.getLogger('basicsr.llmhdr')
    target.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger='basicsr.llmhdr')
    yield caplog
    target.removeHandler(caplog.handler)


def _warnings(caplog):
    """Distinct warning records (a record that also propagates to the root handler is captured twice)."""
    unique = {id(r): r for r in caplog.records if r.levelno == logging.WARNING}
    return [r.getMessage() for r in unique.values()]


@pytest.mark.parametrize('ext', ['.exr', '.pfm'])
def test_float_formats_round_trip_exactly(tmp_path, ext):
    img = _hdr()
    path = str(tmp_path / f'x{ext}')
    write_hdr(path, img)
    out = read_hdr(path)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_float_tiff_reads_as_hdr(tmp_path):
    img = _hdr()
    path = str(tmp_path / 'x.tif')
    assert cv2.imwrite(path, np.ascontiguousarray(img[..., ::-1]))
    out, is_hdr = read_image(path)
    assert is_hdr
    np.testing.assert_array_equal(out, img)


def test_radiance_hdr_round_trip_within_rgbe_precision(tmp_path):
    img = _hdr()
    path = str(tmp_path / 'x.hdr')
    write_hdr(path, img)
    out = read_hdr(path)
    assert out.dtype == np.float32 and out.shape == img.shape
    # RGBE: 8-bit mantissas sharing the exponent of the largest channel -> error <= 2^-7 of the pixel maximum
    pixel_max = img.max(axis=2, keepdims=True)
    assert np.all(np.abs(out - img) <= 0.01 * pixel_max)


def test_channel_order_is_rgb_on_disk_too(tmp_path):
    img = _hdr()
    path = str(tmp_path / 'x.exr')
    write_hdr(path, img)
    bgr = cv2.imread(path, cv2.IMREAD_UNCHANGED)  # OpenCV's own view of the file: BGR
    np.testing.assert_array_equal(bgr[0, 0], np.float32([0.1, 1.0, 10.0]))
    np.testing.assert_array_equal(read_hdr(path)[0, 0], np.float32([10.0, 1.0, 0.1]))


def test_write_hdr_clips_negatives_and_rejects_ldr_extension(tmp_path):
    img = _hdr()
    img[1, 1] = -5.0
    write_hdr(str(tmp_path / 'x.exr'), img)
    assert read_hdr(str(tmp_path / 'x.exr'))[1, 1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match='x.png'):
        write_hdr(str(tmp_path / 'x.png'), img)


@pytest.mark.parametrize('ext', ['.png', '.tif'])
@pytest.mark.parametrize('bit_depth', [8, 16])
def test_ldr_round_trip_within_quantisation(tmp_path, ext, bit_depth):
    step = 1 / 255 if bit_depth == 8 else 1 / 65535
    img = _ldr()
    path = str(tmp_path / f'x{ext}')
    write_ldr(path, img, bit_depth=bit_depth)
    out = read_ldr(path)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.abs(out - img).max() <= step / 2 + 1e-6
    assert cv2.imread(path, cv2.IMREAD_UNCHANGED).dtype == (np.uint8 if bit_depth == 8 else np.uint16)


def test_write_ldr_16bit_keeps_every_code_value(tmp_path):
    codes = np.arange(0, 65536, 257, dtype=np.float64)  # 256 distinct 16-bit values, not all 8-bit representable
    codes[1:-1] += 3  # off the 8-bit grid (n * 257)
    img = np.repeat((codes / 65535.0).reshape(16, 16, 1), 3, axis=2)
    write_ldr(str(tmp_path / 'x.png'), img, bit_depth=16)
    out = read_ldr(str(tmp_path / 'x.png'))
    np.testing.assert_array_equal(np.round(out[..., 0].astype(np.float64) * 65535).ravel(), codes)


def test_jpeg_reads_close_to_what_was_written(tmp_path):
    smooth = np.linspace(0, 1, 32, dtype=np.float32)
    img = np.stack([*np.meshgrid(smooth, smooth[::-1]), np.full((32, 32), 0.5, np.float32)], axis=2)
    write_ldr(str(tmp_path / 'x.jpg'), img)
    out, is_hdr = read_image(str(tmp_path / 'x.jpg'))
    assert not is_hdr and out.shape == img.shape and out.dtype == np.float32
    assert np.abs(out - img).mean() < 0.02
    with pytest.raises(ValueError, match='x16.jpg'):
        write_ldr(str(tmp_path / 'x16.jpg'), img, bit_depth=16)


def test_grey_and_rgba_pngs_become_rgb(tmp_path):
    grey = (np.arange(20, dtype=np.uint8).reshape(4, 5) * 12).astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'grey.png'), grey)
    out = read_ldr(str(tmp_path / 'grey.png'))
    assert out.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], grey / 255.0, atol=1e-7)

    bgra = np.zeros((4, 5, 4), np.uint16)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 1000, 20000, 65535, 7  # blue, green, red, alpha
    cv2.imwrite(str(tmp_path / 'rgba.png'), bgra)
    out, is_hdr = read_image(str(tmp_path / 'rgba.png'))
    assert not is_hdr and out.shape == (4, 5, 3)
    np.testing.assert_allclose(out[0, 0], [1.0, 20000 / 65535, 1000 / 65535], atol=1e-7)


def test_dropped_alpha_is_one_warning_naming_the_file(tmp_path, llmhdr_log):
    bgra = np.full((4, 5, 4), 200, np.uint8)
    cv2.imwrite(str(tmp_path / 'logo.png'), bgra)
    cv2.imwrite(str(tmp_path / 'plain.png'), bgra[..., :3])
    for _ in range(3):  # every epoch reads the file again: still one warning
        read_ldr(str(tmp_path / 'logo.png'))
        read_ldr(str(tmp_path / 'plain.png'))
    messages = _warnings(llmhdr_log)
    assert len(messages) == 1 and 'logo.png' in messages[0] and 'alpha' in messages[0]


def test_truncated_and_corrupt_pngs_are_found_before_libpng_prints(tmp_path, capfd):
    """libpng writes "libpng error: ..." straight to the C stderr; the PNG structure check must catch the file first,
    and OpenCV's own log lines stay off the terminal: the ImageReadError is the only report."""
    write_ldr(str(tmp_path / 'good.png'), _ldr(64, 64))
    data = (tmp_path / 'good.png').read_bytes()
    (tmp_path / 'truncated.png').write_bytes(data[: len(data) // 2])
    damaged = bytearray(data)
    damaged[60:70] = bytes(10)  # inside IDAT: its CRC no longer matches
    (tmp_path / 'damaged.png').write_bytes(bytes(damaged))
    capfd.readouterr()
    for name, reason in (('truncated.png', 'truncated PNG'), ('damaged.png', 'CRC error')):
        with pytest.raises(ImageReadError, match=f'{reason}.*{name}'):
            read_ldr(str(tmp_path / name))
    assert read_ldr(str(tmp_path / 'good.png')).shape == (64, 64, 3)
    err = capfd.readouterr().err
    assert 'libpng' not in err and 'WARN' not in err


def test_colorvideovdp_mean_notice_is_filtered_but_other_root_warnings_pass(caplog):
    """pycvvdp logs the notice once per image with logging.warning (root logger); it is dropped there."""
    import llmhdr_basicsr  # noqa: F401  (installs the filters)

    logging.warning('The mean color value is less than 1 - the image may not be scaled in absolute photometric units!')
    logging.warning('an unrelated warning')
    messages = [r.getMessage() for r in caplog.records]
    assert 'an unrelated warning' in messages and not any('mean color value' in m for m in messages)


def test_non_finite_and_negative_hdr_values_are_sanitised_with_a_warning(tmp_path, llmhdr_log):
    img = _hdr()
    img[0, 1] = (np.nan, np.inf, -np.inf)
    img[2, 2, 0] = -3.0
    path = str(tmp_path / 'dirty.exr')
    assert cv2.imwrite(path, np.ascontiguousarray(img[..., ::-1]))  # raw write keeps NaN / Inf / negatives
    out = read_hdr(path)
    assert np.isfinite(out).all() and (out >= 0).all()
    finite_max = np.nanmax(np.where(np.isfinite(img), img, np.nan))
    assert out[0, 1].tolist() == [0.0, pytest.approx(finite_max), 0.0]
    assert out[2, 2, 0] == 0.0
    np.testing.assert_array_equal(out[3:], img[3:])  # clean pixels untouched
    messages = _warnings(llmhdr_log)
    assert len(messages) == 1 and 'dirty.exr' in messages[0]
    assert '1 NaN' in messages[0] and '2 infinite' in messages[0] and '1 negative' in messages[0]


def test_sanitize_of_clean_image_is_silent(llmhdr_log):
    img = _hdr()
    np.testing.assert_array_equal(sanitize_hdr(img, 'clean'), img)
    assert not llmhdr_log.records


@pytest.mark.parametrize('name', ['garbage.png', 'garbage.exr', 'garbage.hdr', 'garbage.jpg', 'empty.png'])
def test_corrupt_file_raises_image_read_error_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b'' if name.startswith('empty') else np.random.default_rng(1).bytes(400))
    with pytest.raises(ImageReadError, match=name):
        read_image(str(path))


def test_unsupported_channel_count_names_the_file(tmp_path):
    path = str(tmp_path / 'five.exr')
    assert cv2.imwrite(path, np.ones((4, 4, 5), np.float32))  # EXR stores any number of channels
    with pytest.raises(ImageReadError, match='five.exr.*5'):
        read_hdr(path)


def test_missing_file_raises_file_not_found_naming_it(tmp_path):
    for reader in (read_hdr, read_ldr, read_image):
        with pytest.raises(FileNotFoundError, match='nope.exr'):
            reader(str(tmp_path / 'nope.exr'))


def test_wrong_kind_is_a_clear_error(tmp_path):
    write_ldr(str(tmp_path / 'ldr.png'), _ldr())
    with pytest.raises(ImageReadError, match='ldr.png.*integer'):
        read_hdr(str(tmp_path / 'ldr.png'))
    write_hdr(str(tmp_path / 'hdr.exr'), _hdr())
    with pytest.raises(ImageReadError, match='hdr.exr'):
        read_ldr(str(tmp_path / 'hdr.exr'))


def test_list_images_and_atomic_write_leave_no_temporaries(tmp_path):
    write_hdr(str(tmp_path / 'sub' / 'b.exr'), _hdr())  # parent folder created
    write_ldr(str(tmp_path / 'sub' / 'a.png'), _ldr())
    (tmp_path / 'sub' / 'notes.txt').write_text('x')
    (tmp_path / 'sub' / '.hidden.png').write_bytes(b'')
    assert [osp.basename(p) for p in list_images(str(tmp_path / 'sub'))] == ['a.png', 'b.exr']
    assert sorted(os.listdir(tmp_path / 'sub')) == ['.hidden.png', 'a.png', 'b.exr', 'notes.txt']
    with pytest.raises(FileNotFoundError, match='missing_dir'):
        list_images(str(tmp_path / 'missing_dir'))


def test_reads_a_real_radiance_file_from_the_shared_data():
    if not osp.isdir(SHARED_HDR):
        pytest.fail(f'Shared sample data not found at {SHARED_HDR} (expected beside the repository: ../shared/data)')
    path = sorted(p for p in os.listdir(SHARED_HDR) if p.endswith('.hdr'))[0]
    img, is_hdr = read_image(osp.join(SHARED_HDR, path))
    assert is_hdr and img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    assert np.isfinite(img).all() and img.min() >= 0
    assert img.max() > 1.0  # a real HDR scene exceeds the LDR range
