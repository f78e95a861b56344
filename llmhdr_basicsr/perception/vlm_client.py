"""Client for a locally served vision-language model (VLM) that marks artifacts, over- and under-exposure.

This is the optional VLM backend of the perception module. It is meant
for a pre-processing pass (``llmhdr-perceive``), not for every training step: the answers are rasterised into
``(3, H, W)`` maps and stored by :mod:`llmhdr_basicsr.perception.cache`.

Wire protocol (what local OpenAI-compatible and Ollama servers accept)

- ``dialect='openai'`` (default): ``POST {base_url}/chat/completions`` with a system message and one user turn whose
  content is ``[text part, image_url part]`` (text first, rule 3); the image is an inline
  ``data:image/png;base64,...`` URL (rule 1); ``temperature: 0``; ``response_format: {"type": "json_object"}``
  (best effort, rule 4). Works with llama-cpp-python, vLLM, Ollama's ``/v1``, LM Studio and llama.cpp's server.
  A ``base_url`` without a path (``http://host:8000``) gets ``/v1`` appended.
- ``dialect='ollama'``: Ollama's native ``POST {base_url}/api/chat`` with the raw base64 PNG (no ``data:`` prefix) in
  the user message's ``images`` list, ``stream: false``, ``format: "json"``, ``options.temperature: 0``.

Image sent (rule 2): an 8-bit sRGB PNG of the display-referred input. Downscaling rule: when the long side exceeds
``max_side``, the image is resized by ``s = max_side / max(H, W)`` to ``(round(W s), round(H s))`` (rounded half
up, at least 1 px) with ``cv2.INTER_AREA``; smaller images are sent unchanged (never upscaled).

Reply parsing (rules 4, 5): the FIRST balanced ``{...}`` in the reply text that decodes as JSON is used (code fences
and chatter around it are ignored) and validated against::

    {"artifacts": true | false (optional),
     "regions": [{"label": "artifact" | "overexposed" | "underexposed",
                  "box": [x0, y0, x1, y1],   # fractions of width / height, origin top-left
                  "confidence": 0..1}]}      # optional, default 1.0

- Aliases: ``regions`` may be called ``boxes`` or ``detections``; ``box`` may be ``bbox``/``bbox_2d``/``coordinates``
  or a dict ``{x0, y0, x1, y1}`` / ``{xmin, ymin, xmax, ymax}``; ``confidence`` may be ``score``/``conf``/
  ``probability`` (a value in (1, 100] is read as a percentage). Labels are matched case-insensitively after
  removing ``-``/``_``: artifact(s)/artefact(s)/synthesis artifact, overexposed/over exposure/over/clipped
  highlights/saturated, underexposed/under exposure/under/crushed shadows/dark, and the colour names of the paper's
  prompts (red/pink -> artifact, blue -> over, yellow/green -> under).
- Boxes: swapped corners are sorted. A box whose coordinates are all <= 1.05 is normalised and clipped to [0, 1];
  a box with a larger coordinate is taken as **pixel coordinates of the image that was sent** (VLMs such as
  Qwen2.5-VL answer in pixels), divided by the sent width/height and clipped (counted in ``rescaled``).
  Boxes of zero area after clipping, non-numeric boxes and unknown labels are dropped and counted per reason.
- ``"artifacts": false`` answers the paper's Yes/No question with No: artifact regions listed anyway are dropped
  (reason ``'artifacts_false'``); exposure regions are kept. A reply without ``regions`` is valid only when
  ``artifacts`` is a boolean (an empty region list); ``"yes"``/``"no"`` strings are accepted for it.

Failure policy (rule 6): a network error, timeout, HTTP error, non-JSON reply or schema failure makes :meth:`ask`
return ``None`` (the caller falls back to the heuristic maps) and records a reason (``'unreachable'``, ``'timeout'``,
``'http_<code>'``, ``'network'``, ``'bad_response'``, ``'invalid_json'``, ``'schema'``). Only HTTP 5xx and timeouts
are retried, with exponential backoff. The first failure of each reason is logged as ONE warning; later ones are
only counted (:attr:`VLMClient.failures`). Nothing here raises into training, except for programming errors:
:class:`ValueError` for an image array of the wrong shape/dtype, :class:`KeyError` for an unknown prompt kind.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import cv2
import numpy as np

logger = logging.getLogger('basicsr.llmhdr')

DIALECTS = ('openai', 'ollama')
LABELS = ('artifact', 'overexposed', 'underexposed')  # map channel order: [artifact, over, under]

# ---------------------------------------------------------------------------------------------------------------------
# Default prompts: the paper's two prompts (LLM-HDR README, assets/llm.png and assets/llm-loss.png),
# adapted to ask for boxes as JSON instead of coloured saliency maps / pixel lists in .txt files (a local VLM cannot
# return images or files). The colour names of the original prompts are kept as hints and accepted as label aliases.
# ---------------------------------------------------------------------------------------------------------------------

SYSTEM_PROMPT = 'You inspect images for HDR reconstruction defects. Reply with JSON only.'

_JSON_FORMAT = (
    'Reply with one JSON object and no other text, in exactly this form: '
    '{"artifacts": true or false, "regions": [{"label": "artifact" or "overexposed" or "underexposed", '
    '"box": [x0, y0, x1, y1], "confidence": number from 0 to 1}]}. '
    'Box coordinates are fractions of the image width (x) and height (y) between 0 and 1, with the origin at the '
    'top-left corner (x0 < x1, y0 < y1). Use an empty "regions" list when there is nothing to mark.'
)

# Generator-guidance prompt (assets/llm.png): Yes/No artifact question; on Yes, saliency maps with artifacts in red,
# over-exposure in blue, under-exposure in yellow. The maps gate the generator.
GUIDANCE_PROMPT = (
    'Does this image show any synthesis artifacts, such as halos, banding, blotches, ringing, colour shifts, '
    'noise or unnatural textures left by image reconstruction? Answer Yes (true) or No (false) in "artifacts". '
    'Then mark the regions that need attention with boxes instead of a coloured saliency map: '
    'label "artifact" for regions with artifacts (the red map), "overexposed" for over-exposed regions with clipped, '
    'washed-out highlights (the blue map) and "underexposed" for under-exposed regions with crushed, detail-less '
    'shadows (the yellow map). Mark over- and under-exposed regions even when there are no artifacts. ' + _JSON_FORMAT
)

# Loss prompt (assets/llm-loss.png): the same Yes/No question; on Yes, [artifact pixel count, total pixel count] with
# artifacts in pink, and [over-exposed count, under-exposed count] with over-exposure in blue and under-exposure in
# green. Here the pixel counts are the areas of tight boxes (computed from the rasterised maps, see map_fractions).
LOSS_PROMPT = (
    'Does this image show any synthesis artifacts left by image reconstruction? Answer Yes (true) or No (false) in '
    '"artifacts". If Yes, find every artifact pixel (the pink highlight); in any case find every over-exposed pixel '
    '(clipped highlights, the blue highlight) and every under-exposed pixel (crushed shadows, the green highlight). '
    'Instead of pixel lists, cover these pixels with tight boxes, labelled "artifact", "overexposed" or '
    '"underexposed", so that the pixel counts of each kind relative to the total pixel count can be computed from '
    'the box areas. Do not cover well-exposed, clean pixels. ' + _JSON_FORMAT
)

DEFAULT_PROMPTS = {'guidance': GUIDANCE_PROMPT, 'loss': LOSS_PROMPT}

_LABEL_ALIASES = {
    'artifact': 'artifact', 'artifacts': 'artifact', 'artefact': 'artifact', 'artefacts': 'artifact',
    'synthesis artifact': 'artifact', 'synthesis artifacts': 'artifact', 'red': 'artifact', 'pink': 'artifact',
    'overexposed': 'overexposed', 'over exposed': 'overexposed', 'overexposure': 'overexposed',
    'over exposure': 'overexposed', 'over': 'overexposed', 'clipped highlights': 'overexposed',
    'highlight clipping': 'overexposed', 'saturated': 'overexposed', 'blown out': 'overexposed', 'blue': 'overexposed',
    'underexposed': 'underexposed', 'under exposed': 'underexposed', 'underexposure': 'underexposed',
    'under exposure': 'underexposed', 'under': 'underexposed', 'crushed shadows': 'underexposed',
    'shadow clipping': 'underexposed', 'dark': 'underexposed', 'yellow': 'underexposed', 'green': 'underexposed',
}  # fmt: skip
_REGION_KEYS = ('regions', 'boxes', 'detections')
_BOX_KEYS = ('box', 'bbox', 'bbox_2d', 'coordinates')
_CONF_KEYS = ('confidence', 'score', 'conf', 'probability')
_NORMALISED_TOLERANCE = 1.05  # boxes with all coordinates <= this are normalised (slight overshoot is clipped)


class VLMParseError(ValueError):
    """A VLM reply could not be turned into a report. ``reason`` is ``'invalid_json'`` or ``'schema'``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class VLMRegion:
    """One marked region.

    Attributes:
        label: ``'artifact'``, ``'overexposed'`` or ``'underexposed'``.
        box: ``(x0, y0, x1, y1)`` fractions of the image width/height in [0, 1], origin top-left, x0 < x1, y0 < y1.
        confidence: in [0, 1].
    """

    label: str
    box: tuple[float, float, float, float]
    confidence: float = 1.0


@dataclass
class VLMReport:
    """A validated VLM answer.

    Attributes:
        artifacts: the answer to the paper's Yes/No artifact question (None when the reply did not say).
        regions: valid regions (boxes normalised and clipped).
        dropped: per-reason counts of regions that were dropped (``'label'``, ``'box'``, ``'confidence'``,
            ``'degenerate'``, ``'artifacts_false'``, ``'not_an_object'``).
        rescaled: number of boxes that were given in pixels and rescaled by the size of the image sent.
        image_size: ``(width, height)`` of the image that was sent (after downscaling).
        raw_text: the reply text as received.
    """

    artifacts: bool | None
    regions: list[VLMRegion]
    dropped: dict[str, int] = field(default_factory=dict)
    rescaled: int = 0
    image_size: tuple[int, int] = (0, 0)
    raw_text: str = ''

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        """JSON-serialisable dict (the form stored in the cache)."""
        return {
            'artifacts': self.artifacts,
            'regions': [{'label': r.label, 'box': list(r.box), 'confidence': r.confidence} for r in self.regions],
            'dropped': dict(self.dropped),
            'rescaled': self.rescaled,
            'image_size': list(self.image_size),
            'raw_text': self.raw_text,
        }

    @classmethod
    def from_dict(cls, d: dict) -> VLMReport:
        """Inverse of :meth:`to_dict`."""
        regions = [
            VLMRegion(r['label'], tuple(float(v) for v in r['box']), float(r['confidence'])) for r in d['regions']
        ]
        return cls(
            artifacts=d.get('artifacts'),
            regions=regions,
            dropped=dict(d.get('dropped', {})),
            rescaled=int(d.get('rescaled', 0)),
            image_size=tuple(d.get('image_size', (0, 0))),
            raw_text=d.get('raw_text', ''),
        )


@dataclass
class AskResult:
    """Outcome of one :meth:`VLMClient.ask_detailed` call.

    Attributes:
        report: the report, or None on failure.
        reason: failure reason (None on success), see the module docstring.
        message: human-readable failure detail.
        attempts: HTTP requests made (1 + retries used).
        seconds: wall time.
    """

    report: VLMReport | None
    reason: str | None = None
    message: str = ''
    attempts: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Reply parsing
# ---------------------------------------------------------------------------------------------------------------------


def extract_first_json(text: str) -> dict:
    """Return the first balanced ``{...}`` in ``text`` that decodes as a JSON object.

    Tolerates Markdown code fences and chatter before/after the object; braces inside JSON strings are skipped.

    Raises:
        VLMParseError: (reason ``'invalid_json'``) when there is no such object.
    """
    if not isinstance(text, str):
        raise VLMParseError('invalid_json', f'reply content is {type(text).__name__}, not text')
    start = text.find('{')
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == '\\':
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == '{':
                depth += 1
            elif ch == '}':
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(text[start : i + 1])
                    except ValueError:
                        break
                    if isinstance(obj, dict):
                        return obj
                    break
        start = text.find('{', start + 1)
    snippet = text.strip().replace('\n', ' ')[:120]
    raise VLMParseError('invalid_json', f'no JSON object in the reply: {snippet!r}')


def normalise_label(label: object) -> str | None:
    """Map a label (or alias, see the module docstring) to one of :data:`LABELS`; None if unknown."""
    if not isinstance(label, str):
        return None
    key = ' '.join(label.strip().lower().replace('-', ' ').replace('_', ' ').split())
    return _LABEL_ALIASES.get(key)


def _to_float(v: object) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _parse_box(raw: object) -> list[float] | None:
    if isinstance(raw, dict):
        for keys in (('x0', 'y0', 'x1', 'y1'), ('xmin', 'ymin', 'xmax', 'ymax'), ('left', 'top', 'right', 'bottom')):
            if all(k in raw for k in keys):
                raw = [raw[k] for k in keys]
                break
        else:
            return None
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        return None
    vals = [_to_float(v) for v in raw]
    return None if any(v is None for v in vals) else vals


def _parse_confidence(region: dict) -> float | None:
    for k in _CONF_KEYS:
        if k in region:
            c = _to_float(region[k])
            if c is None:
                return None
            if 1.0 < c <= 100.0:  # percentage
                c /= 100.0
            return min(max(c, 0.0), 1.0)
    return 1.0  # a listed region without a confidence is an assertion


def parse_report(obj: dict, image_size: tuple[int, int], raw_text: str = '') -> VLMReport:
    """Validate a decoded JSON reply against the schema (module docstring) and build a :class:`VLMReport`.

    Args:
        obj: the decoded JSON object.
        image_size: ``(width, height)`` of the image that was sent, used to rescale pixel boxes.
        raw_text: the reply text, kept in the report.

    Raises:
        VLMParseError: (reason ``'schema'``) when the object does not follow the schema at all.
    """
    if not isinstance(obj, dict):
        raise VLMParseError('schema', f'reply is a JSON {type(obj).__name__}, not an object')
    artifacts = obj.get('artifacts')
    if isinstance(artifacts, str) and artifacts.strip().lower() in ('yes', 'no', 'true', 'false'):
        artifacts = artifacts.strip().lower() in ('yes', 'true')
    if artifacts is not None and not isinstance(artifacts, bool):
        raise VLMParseError('schema', f'"artifacts" must be true/false, got {artifacts!r}')
    raw_regions = next((obj[k] for k in _REGION_KEYS if k in obj), None)
    if raw_regions is None:
        if artifacts is None:
            raise VLMParseError('schema', f'reply has neither "regions" nor "artifacts" (keys: {sorted(obj)})')
        raw_regions = []
    if not isinstance(raw_regions, list):
        raise VLMParseError('schema', f'"regions" must be a list, got {type(raw_regions).__name__}')

    width, height = image_size
    dropped: collections.Counter = collections.Counter()
    regions, rescaled = [], 0
    for item in raw_regions:
        if not isinstance(item, dict):
            dropped['not_an_object'] += 1
            continue
        label = normalise_label(item.get('label', item.get('type', item.get('category'))))
        if label is None:
            dropped['label'] += 1
            continue
        box = _parse_box(next((item[k] for k in _BOX_KEYS if k in item), None))
        conf = _parse_confidence(item)
        if box is None or conf is None:
            dropped['box' if box is None else 'confidence'] += 1
            continue
        if max(box) > _NORMALISED_TOLERANCE:  # pixel coordinates of the image that was sent
            if width <= 0 or height <= 0:
                dropped['box'] += 1
                continue
            box = [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
            rescaled += 1
        x0, x1 = sorted((min(max(box[0], 0.0), 1.0), min(max(box[2], 0.0), 1.0)))
        y0, y1 = sorted((min(max(box[1], 0.0), 1.0), min(max(box[3], 0.0), 1.0)))
        if x1 - x0 <= 0.0 or y1 - y0 <= 0.0:
            dropped['degenerate'] += 1
            continue
        if label == 'artifact' and artifacts is False:
            dropped['artifacts_false'] += 1
            continue
        regions.append(VLMRegion(label, (x0, y0, x1, y1), conf))
    if artifacts is None and regions:
        artifacts = any(r.label == 'artifact' for r in regions)
    return VLMReport(artifacts, regions, dict(dropped), rescaled, (int(width), int(height)), raw_text)


def parse_reply(text: str, image_size: tuple[int, int]) -> VLMReport:
    """:func:`extract_first_json` + :func:`parse_report` on a reply text. Raises :class:`VLMParseError`."""
    return parse_report(extract_first_json(text), image_size, raw_text=text)


# ---------------------------------------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------------------------------------


def _box_profile(lo: float, hi: float, n: int, ramp: float) -> np.ndarray:
    """Indicator of [lo, hi] (pixel units) convolved with a normalised box of width ``ramp``, at pixel centres."""
    c = np.arange(n, dtype=np.float64) + 0.5
    overlap = np.minimum(c + ramp / 2, hi) - np.maximum(c - ramp / 2, lo)
    return np.clip(overlap, 0.0, ramp) / ramp


def report_to_maps(report: VLMReport, height: int, width: int, soft_edge: float = 0.02) -> np.ndarray:
    """Rasterise a report into perception maps.

    Each box becomes ``confidence x`` (its indicator convolved with a box filter of width
    ``max(1 px, soft_edge x max(H, W))``), i.e. a linear ramp centred on the box edge. The filter is normalised, so
    the map integrates to ``confidence x box area`` (up to the image border); ``soft_edge=0`` gives hard,
    anti-aliased edges (exact pixel coverage). Boxes of one label are united with a per-pixel max.

    Args:
        report: a :class:`VLMReport`.
        height: output height H in pixels.
        width: output width W in pixels.
        soft_edge: ramp width as a fraction of the long side (>= 0).

    Returns:
        ``(3, H, W)`` float32 in [0, 1], channels ``[artifact, over, under]`` (the channel order of
        ``heuristic.PerceptionMaps.stack()``).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f'report_to_maps: height and width must be positive, got {height}x{width}')
    if soft_edge < 0:
        raise ValueError(f'report_to_maps: soft_edge must be >= 0, got {soft_edge}')
    ramp = max(1.0, soft_edge * max(height, width))
    maps = np.zeros((3, height, width), dtype=np.float32)
    for r in report.regions:
        x0, y0, x1, y1 = r.box
        px = _box_profile(x0 * width, x1 * width, width, ramp)
        py = _box_profile(y0 * height, y1 * height, height, ramp)
        ch = LABELS.index(r.label)
        np.maximum(maps[ch], (r.confidence * np.outer(py, px)).astype(np.float32), out=maps[ch])
    return np.clip(maps, 0.0, 1.0, out=maps)


def map_fractions(maps: np.ndarray) -> np.ndarray:
    """Fractions of "bad" pixels per map: the mean of each channel (confidence-weighted pixel count / total count).

    This is the paper's [count, total] answer of the loss prompt in soft form.

    Args:
        maps: ``(3, H, W)`` float in [0, 1], order ``[artifact, over, under]``.

    Returns:
        ``(3,)`` float32 in [0, 1].
    """
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] != 3:
        raise ValueError(f'map_fractions expects a (3, H, W) array, got shape {maps.shape}')
    return maps.reshape(3, -1).astype(np.float64).mean(axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Image encoding
# ---------------------------------------------------------------------------------------------------------------------


def prepare_image(image_rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Convert to 8-bit RGB and downscale so that the long side is <= ``max_side`` (module docstring rule).

    Args:
        image_rgb: ``(H, W, 3)`` (or ``(H, W)`` grey, or RGBA) display-referred RGB: float in [0, 1] (clipped; NaN
            -> 0) or uint8 / uint16.
        max_side: maximum long side in pixels (>= 1).

    Returns:
        ``(h, w, 3)`` uint8 RGB.
    """
    img = np.asarray(image_rgb)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f'VLM input must be an (H, W, 3) RGB image, got shape {img.shape}')
    img = img[..., :3]
    if img.dtype == np.uint8:
        pass
    elif img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif np.issubdtype(img.dtype, np.floating):
        img = np.round(np.clip(np.nan_to_num(img.astype(np.float32), nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f'VLM input must be float in [0, 1], uint8 or uint16, got {img.dtype}')
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, math.floor(w * s + 0.5)), max(1, math.floor(h * s + 0.5)))  # round half up
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def encode_png(image_u8: np.ndarray) -> bytes:
    """``(h, w, 3)`` uint8 RGB -> PNG file bytes (8-bit sRGB as given)."""
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(image_u8[..., ::-1]))
    if not ok:
        raise ValueError('OpenCV could not encode the image as PNG')
    return buf.tobytes()


# ---------------------------------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------------------------------


class _HTTPFailure(Exception):
    def __init__(self, reason: str, message: str, retry: bool):
        super().__init__(message)
        self.reason, self.retry = reason, retry


def _is_timeout(err: BaseException) -> bool:
    return isinstance(err, TimeoutError) or 'timed out' in str(err).lower()


class VLMClient:
    """Ask a local VLM server where an image shows artifacts, over- and under-exposure.

    Thread-safe: one client may serve a thread pool (counters are guarded by a lock).

    Args:
        base_url: server URL, e.g. ``http://127.0.0.1:8000/v1`` (openai) or ``http://127.0.0.1:11434`` (ollama).
        model: model name sent in every request (also part of the cache key).
        api_key: sent as ``Authorization: Bearer <key>`` when given.
        timeout: seconds per HTTP request (connect + read).
        dialect: ``'openai'`` (chat-completions) or ``'ollama'`` (native ``/api/chat``).
        max_side: long side limit of the image sent, in pixels.
        prompts: overrides of :data:`DEFAULT_PROMPTS` (keys ``'guidance'``, ``'loss'``; other keys add prompts).
        retries: extra attempts after an HTTP 5xx or a timeout (other failures are not retried).
        backoff: seconds before the first retry; doubles each retry.
        system_prompt: the system message (default :data:`SYSTEM_PROMPT`).
        max_tokens: reply token limit (``max_tokens`` / Ollama ``num_predict``).
        json_mode: send ``response_format: json_object`` (openai) / ``format: "json"`` (ollama); best effort.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        dialect: str = 'openai',
        max_side: int = 768,
        prompts: dict[str, str] | None = None,
        retries: int = 2,
        backoff: float = 1.0,
        system_prompt: str = SYSTEM_PROMPT,
        max_tokens: int = 1024,
        json_mode: bool = True,
    ):
        if dialect not in DIALECTS:
            raise ValueError(f'VLM dialect must be one of {DIALECTS}, got {dialect!r}')
        if not base_url or not urllib.parse.urlparse(base_url).scheme.startswith('http'):
            raise ValueError(f'VLM base_url must be an http(s) URL, got {base_url!r}')
        if not model:
            raise ValueError('VLM model name must not be empty')
        if int(max_side) < 16:
            raise ValueError(f'VLM max_side must be >= 16 pixels, got {max_side}')
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f'VLM timeout must be > 0, retries and backoff >= 0 (got {timeout}, {retries}, {backoff})')
        self.base_url = base_url.rstrip('/')
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.dialect = dialect
        self.max_side = int(max_side)
        self.prompts = dict(DEFAULT_PROMPTS)
        for name, text in (prompts or {}).items():
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f'VLM prompt {name!r} must be a non-empty string')
            self.prompts[name] = text
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.system_prompt = system_prompt
        self.max_tokens = int(max_tokens)
        self.json_mode = json_mode
        self.failures: collections.Counter = collections.Counter()
        self.successes = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    # -- endpoints -----------------------------------------------------------------------------------------------------

    @property
    def chat_url(self) -> str:
        """The URL that receives the chat requests."""
        base = self.base_url
        if self.dialect == 'openai':
            if base.endswith('/chat/completions'):
                return base
            if urllib.parse.urlparse(base).path in ('', '/'):
                base += '/v1'
            return base + '/chat/completions'
        for suffix in ('/api/chat', '/api', '/v1'):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
                break
        return base + '/api/chat'

    @property
    def models_url(self) -> str:
        """The URL probed by :meth:`health` (``/models`` or Ollama's ``/api/tags``)."""
        chat = self.chat_url
        if self.dialect == 'openai':
            return chat[: -len('/chat/completions')] + '/models'
        return chat[: -len('/api/chat')] + '/api/tags'

    # -- prompts -------------------------------------------------------------------------------------------------------

    def prompt(self, kind: str = 'guidance') -> str:
        """The user prompt text of ``kind`` (``'guidance'``, ``'loss'`` or a custom key)."""
        if kind not in self.prompts:
            raise KeyError(f'Unknown VLM prompt {kind!r}; available: {sorted(self.prompts)}')
        return self.prompts[kind]

    def prompt_signature(self, kind: str = 'guidance') -> str:
        """System + user prompt text as one string: what the cache key hashes as "the prompt"."""
        return f'{self.system_prompt}\n\n{self.prompt(kind)}'

    # -- requests ------------------------------------------------------------------------------------------------------

    def build_request(self, png_bytes: bytes, kind: str = 'guidance') -> dict:
        """The JSON body of one chat request (module docstring for both dialects)."""
        b64 = base64.b64encode(png_bytes).decode('ascii')
        text = self.prompt(kind)
        if self.dialect == 'openai':
            body = {
                'model': self.model,
                'temperature': 0,
                'max_tokens': self.max_tokens,
                'messages': [
                    {'role': 'system', 'content': self.system_prompt},
                    {
                        'role': 'user',
                        'content': [
                            {'type': 'text', 'text': text},
                            {'type': 'image_url', 'image_url': {'url': f'data:image/png;base64,{b64}'}},
                        ],
                    },
                ],
            }
            if self.json_mode:
                body['response_format'] = {'type': 'json_object'}
            return body
        body = {
            'model': self.model,
            'stream': False,
            'options': {'temperature': 0, 'num_predict': self.max_tokens},
            'messages': [
                {'role': 'system', 'content': self.system_prompt},
                {'role': 'user', 'content': text, 'images': [b64]},
            ],
        }
        if self.json_mode:
            body['format'] = 'json'
        return body

    def _headers(self) -> dict:
        headers = {'Content-Type': 'application/json', 'Accept': 'application/json'}
        if self.api_key:
            headers['Authorization'] = f'Bearer {self.api_key}'
        return headers

    def _post_once(self, body: bytes) -> dict:
        req = urllib.request.Request(self.chat_url, data=body, headers=self._headers(), method='POST')
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            try:
                detail = e.read()[:200].decode('utf-8', 'replace') if e.fp is not None else ''
            except Exception:  # the error body itself may time out or be cut off
                detail = ''
            msg = f'HTTP {e.code} from {self.chat_url}: {detail.strip() or e.reason}'
            raise _HTTPFailure(f'http_{e.code}', msg, retry=500 <= e.code < 600) from None
        except urllib.error.URLError as e:
            if _is_timeout(e.reason if isinstance(e.reason, BaseException) else e):
                raise _HTTPFailure('timeout', f'timed out after {self.timeout:g} s: {self.chat_url}', True) from None
            raise _HTTPFailure('unreachable', f'cannot connect to {self.chat_url}: {e.reason}', False) from None
        except TimeoutError:  # socket.timeout is an alias since Python 3.10
            raise _HTTPFailure('timeout', f'timed out after {self.timeout:g} s: {self.chat_url}', True) from None
        except (OSError, http.client.HTTPException) as e:  # reset / aborted / truncated mid-reply
            raise _HTTPFailure('network', f'network error talking to {self.chat_url}: {e}', False) from None
        try:
            return json.loads(payload)
        except ValueError:
            snippet = payload[:120].decode('utf-8', 'replace')
            raise _HTTPFailure('bad_response', f'server reply is not JSON: {snippet!r}', False) from None

    def _reply_text(self, payload: object) -> str:
        try:
            if self.dialect == 'openai':
                content = payload['choices'][0]['message']['content']
            else:
                content = payload['message']['content']
        except (KeyError, IndexError, TypeError):
            keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise _HTTPFailure('bad_response', f'no message content in the server reply (got {keys})', False) from None
        if isinstance(content, list):  # content parts
            content = ''.join(p.get('text', '') for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise _HTTPFailure('bad_response', f'message content is {type(content).__name__}, not text', False)
        return content

    def ask_detailed(self, image_rgb: np.ndarray, kind: str = 'guidance') -> AskResult:
        """Like :meth:`ask`, but also returns the failure reason, attempts and time."""
        t0 = time.monotonic()
        img = prepare_image(image_rgb, self.max_side)
        image_size = (img.shape[1], img.shape[0])
        body = json.dumps(self.build_request(encode_png(img), kind)).encode('utf-8')
        attempts = 0
        while True:
            attempts += 1
            with self._lock:
                self.requests += 1
            try:
                report = parse_reply(self._reply_text(self._post_once(body)), image_size)
            except _HTTPFailure as e:
                if e.retry and attempts <= self.retries:
                    time.sleep(self.backoff * 2 ** (attempts - 1))
                    continue
                return self._fail(e.reason, str(e), attempts, t0)
            except VLMParseError as e:
                return self._fail(e.reason, f'{self.chat_url}: {e}', attempts, t0)
            with self._lock:
                self.successes += 1
            return AskResult(report, attempts=attempts, seconds=time.monotonic() - t0)

    def ask(self, image_rgb: np.ndarray, kind: str = 'guidance') -> VLMReport | None:
        """Send one image and return the validated report, or None on any failure (module docstring).

        Args:
            image_rgb: ``(H, W, 3)`` display-referred (sRGB-encoded) RGB, float in [0, 1] or uint8/uint16. Linear
                HDR must be tone-mapped first (e.g. ``tonemap.tonemap_preview(x, 'reinhard')``).
            kind: which prompt to use (``'guidance'`` or ``'loss'``).

        Returns:
            The :class:`VLMReport`, or None (the reason is counted in :attr:`failures`).
        """
        return self.ask_detailed(image_rgb, kind).report

    def _fail(self, reason: str, message: str, attempts: int, t0: float) -> AskResult:
        with self._lock:
            self.failures[reason] += 1
            first = reason not in self._warned
            self._warned.add(reason)
        if first:
            hint = {
                'unreachable': 'is the VLM server running? ',
                'timeout': 'raise --timeout or lower --max-side? ',
            }.get(reason, '')
            logger.warning(
                f'VLM request failed ({reason}): {message}. {hint}Images without a VLM report fall back to the '
                f'heuristic maps; further "{reason}" failures are only counted.'
            )
        else:
            logger.debug(f'VLM request failed ({reason}): {message}')
        return AskResult(None, reason, message, attempts, time.monotonic() - t0)

    def health(self) -> tuple[bool, str]:
        """Probe the server once (``GET /models`` or ``/api/tags``).

        Returns:
            ``(reachable, message)``. An HTTP error still counts as reachable (some servers lack the endpoint);
            only connection failures and timeouts give False. Never raises.
        """
        req = urllib.request.Request(self.models_url, headers=self._headers(), method='GET')
        try:
            with urllib.request.urlopen(req, timeout=min(self.timeout, 10.0)) as resp:
                return True, f'{self.models_url}: HTTP {resp.status}'
        except urllib.error.HTTPError as e:
            return True, f'{self.models_url}: HTTP {e.code} (server reachable)'
        except urllib.error.URLError as e:
            return False, f'cannot connect to {self.models_url}: {e.reason}'
        except (OSError, ValueError) as e:
            return False, f'cannot connect to {self.models_url}: {e}'

    def stats(self) -> dict:
        """``{'requests', 'successes', 'failures': {reason: count}}``."""
        with self._lock:
            return {'requests': self.requests, 'successes': self.successes, 'failures': dict(self.failures)}
