"""Third-party messages that duplicate or contradict ours, silenced where the plugin reports the problem itself.

- OpenCV's own log lines (``[ WARN:0@0.01] global grfmt_png.cpp ... PNG input buffer is incomplete``) while
  :mod:`llmhdr_basicsr.utils.hdr_io` decodes a file: a failed decode is reported as one :class:`ImageReadError`
  naming the file (:func:`opencv_quiet`). libpng prints its own ``libpng error: ...`` line straight to the C stderr,
  past OpenCV's log level; :func:`png_problem` finds truncated and corrupted PNG files (chunk lengths, CRCs, the
  final ``IEND``) before libpng sees them.
- ColorVideoVDP's ``The mean color value is less than 1 - the image may not be scaled in absolute photometric
  units!``, logged once per image (``pycvvdp/video_source.py``): the metric is fed absolute cd/m² by design
  (:func:`llmhdr_basicsr.metrics.hdr_metric.to_absolute`) and dark scenes have a mean below 1 cd/m².
- runpy's ``RuntimeWarning: 'basicsr.train' found in sys.modules after import of package 'basicsr'`` for
  ``python -m basicsr.train|test``: harmless (BasicSR's ``__init__`` imports its own scripts).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import warnings
import zlib
from collections.abc import Iterator

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
CVVDP_NOTICE = 'The mean color value is less than 1'


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


def install() -> None:
    """Install the filters (idempotent): the ColorVideoVDP notice on the root logger, runpy's warning."""
    root = logging.getLogger()
    if not any(isinstance(f, _DropMessage) and f.text == CVVDP_NOTICE for f in root.filters):
        root.addFilter(_DropMessage(CVVDP_NOTICE))
    warnings.filterwarnings('ignore', message=r"'basicsr\.(train|test)' found in sys\.modules", category=RuntimeWarning)


@contextlib.contextmanager
def opencv_quiet() -> Iterator[None]:
    """OpenCV's log level at SILENT for the block (the caller reports failures itself), restored afterwards."""
    import cv2

    log = getattr(getattr(cv2, 'utils', None), 'logging', None)
    if log is None:
        yield
        return
    previous = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(previous)


def png_problem(data) -> str | None:
    """What is wrong with the structure of PNG bytes (truncated, bad CRC, no IEND), or None when it looks intact.

    Args:
        data: the file's bytes (any buffer).

    Returns:
        A short reason, or None. Pixel data that is corrupt behind valid CRCs is not detected (rare).
    """
    view = memoryview(data).cast('B')
    if bytes(view[:8]) != PNG_SIGNATURE:
        return None  # not a PNG (or not one that starts like it): left to the decoder
    pos, size = 8, len(view)
    while pos + 8 <= size:
        length, kind = struct.unpack('>I4s', view[pos : pos + 8])
        end = pos + 12 + length
        if end > size:
            return f'truncated PNG (chunk {kind.decode("latin-1")!r} ends after the end of the file)'
        crc = struct.unpack('>I', view[end - 4 : end])[0]
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            return f'corrupt PNG (CRC error in chunk {kind.decode("latin-1")!r})'
        if kind == b'IEND':
            return None
        pos = end
    return 'truncated PNG (no IEND chunk)'
