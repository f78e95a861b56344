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
- ``model`` is sent as given; a client without a model (``model=None`` or ``''``) omits the key, for servers that
  serve one model and accept (or need) no name, e.g. ``transformers serve`` or llama.cpp's server. Ollama's native
  API needs a name. ``max_tokens`` (default 384: a JSON answer takes a few hundred tokens, a chatty model that
  writes 1024 takes over 10 s on a CPU) limits the reply.

Image sent (rule 2): an 8-bit sRGB PNG of the display-referred input. Downscaling rule: when the long side exceeds
``max_side``, the image is resized by ``s = max_side / max(H, W)`` to ``(round(W s), round(H s))`` (rounded half
up, at least 1 px) with ``cv2.INTER_AREA``; smaller images are sent unchanged (never upscaled).

Reply parsing (rules 4, 5): :func:`parse_reply` recognises the forms below. The form(s) read are named in
:attr:`VLMReport.format` (joined with ``+``, e.g. ``'yes_no+molmo_points'``) and the items read per form are counted
in :attr:`VLMReport.converted`, so a user can see what the server said.

1. ``yes_no``: a first non-empty line that is ``Yes`` or ``No`` (any case; ``**``, quotes or an ``Answer:`` prefix
   allowed), alone or followed by punctuation (``Yes.``, ``No, ...``, ``Yes - ...``), answers the paper's artifact
   question, even when nothing else follows. A word right after it (``No JSON today``) makes the line ordinary text.
   An explicit JSON ``"artifacts"`` value takes precedence over this line.
2. The first top-level JSON value of the reply (code fences and chatter around it are ignored) that is an object or
   a list of objects:

   - ``json``: an object validated against::

         {"artifacts": true | false (optional),
          "regions": [{"label": "artifact" | "overexposed" | "underexposed",
                       "box": [x0, y0, x1, y1],   # fractions of width / height, origin top-left
                       "confidence": 0..1}]}      # optional, default 1.0

   - ``qwen_bbox``: a top-level list of regions (Qwen2.5-VL's ``[{"bbox_2d": [x0, y0, x1, y1], "label": ...}]``),
     or bare region objects one after another. ``qwen_point``: a region with ``"point_2d": [x, y]`` (or ``point``)
     instead of a box; the point becomes a box of :data:`POINT_BOX` (5 %) of the image width x height centred on it
     (clipped at the border): a point says where, not how large, and 5 % keeps it a local mark.

3. When there is no JSON value (or it fails the schema): the grounding tags of open VLMs, every form in the reply:

   - ``molmo_points``: ``<point x="61.5" y="40.6" alt="...">label</point>`` and
     ``<points x1=".." y1=".." x2=".." y2=".." alt="...">label</points>`` (Molmo): x, y in percent (0-100) of
     width / height; each point becomes a :data:`POINT_BOX` box. The label is the tag text, else ``alt``.
   - ``qwen_ref_box``: ``<ref>label</ref><box>(x0,y0),(x1,y1)</box>`` (Qwen-VL) and
     ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x0,y0),(x1,y1)<|box_end|>`` (Qwen2-VL),
     coordinates normalised to 0-1000; several boxes may follow one label.
   - ``kosmos``: ``<phrase>label</phrase><object><patch_index_0044><patch_index_0863></object>`` (Kosmos-2): a
     32 x 32 patch grid, index = row * 32 + col, the first token the top-left patch and the second the bottom-right
     patch; the box covers both patches entirely. Several pairs (``</delimiter_of_multi_objects/>``) give several
     boxes.
   - ``florence``: ``label<loc_123><loc_45><loc_678><loc_390>`` (Florence-2): 4 tokens per box (x0, y0, x1, y1) in
     1000 bins of width / height, a bin ``b`` read as its centre ``(b + 0.5) / 1000``; several boxes may follow one
     label.

4. When none of 2-3 is found: ``pixel_counts``, the paper's loss-prompt answer: bracketed pairs of non-negative
   numbers ``[a, b]``. A pair means ``[artifact pixels, total pixels]`` or ``[over-exposed pixels, under-exposed
   pixels]``. Its role is taken from the text since the previous pair when that names exactly one kind (artifact /
   artefact / pink, or over / under / exposed / blue / green); otherwise by position, in the paper's order: the first
   free role of artifact, then exposure, except that a lone pair after ``No`` is the exposure pair. Further pairs
   are dropped (``'pixel_counts'``). The exposure pair's total is the artifact pair's total, or the pixel count of
   the image sent when there is no artifact pair. Thus ``"Yes. [1200, 50176] ... [300, 800]"`` reads artifacts
   True, artifact 1200 / 50176, over 300 / 50176 and under 800 / 50176. A pair with a count above its total (or
   over + under above it) is dropped. The results are area fractions without a location
   (:attr:`VLMReport.fractions`); :func:`report_to_maps` spreads them uniformly.

Labels (every form) are matched case-insensitively after removing ``-``/``_`` and edge punctuation: first the exact
aliases artifact(s)/artefact(s)/synthesis artifact, overexposed/over exposure/over/clipped highlights/saturated,
underexposed/under exposure/under/crushed shadows/dark, and the colour names of the paper's prompts (red/pink ->
artifact, blue -> over, yellow/green -> under); then keywords, in this order of precedence: artifact words
(artifact, artefact, halo, banding, ringing, blotch, noise, ...) -> artifact; ``over-exposed``/``over-bright`` vs
``under-exposed``/``under-lit`` (exactly one of them) -> that; highlight words (blown, highlight, bright, burnt) vs
shadow words (dark, shadow, crushed, black): exactly one kind -> that kind, both -> unknown; else ``clipped`` /
``saturat`` -> overexposed. So "blown-out highlights", "clipped sky" -> overexposed, "dark shadows", "clipped
shadows" -> underexposed, "halo", "banding" -> artifact. Unknown labels ("sky", "a snowman") are dropped (counted
as ``'label'``).

JSON details: ``regions`` may be called ``boxes`` or ``detections``; ``box`` may be ``bbox``/``bbox_2d``/
``coordinates`` or a dict ``{x0, y0, x1, y1}`` / ``{xmin, ymin, xmax, ymax}``; ``confidence`` may be ``score``/
``conf``/``probability`` (a value in (1, 100] is read as a percentage). Swapped corners are sorted. A JSON box
(or point) whose coordinates are all <= 1.05 is normalised and clipped to [0, 1]; one with a larger coordinate is
taken as **pixel coordinates of the image that was sent** (Qwen2.5-VL answers in pixels of its input, which its
processor rounds to multiples of 28 px: a small error), divided by the sent width/height and clipped (counted in
``rescaled``). Boxes of zero area after clipping, non-numeric boxes and unknown labels are dropped and counted per
reason. Tag forms have fixed coordinate systems (above) and are never rescaled.

``"artifacts": false`` (or a ``No`` line) answers the paper's Yes/No question with No: artifact regions listed
anyway are dropped (reason ``'artifacts_false'``); exposure regions are kept. A JSON object without ``regions`` is
valid only when the artifact answer is known (an empty region list); ``"yes"``/``"no"`` strings are accepted for
it. Without an answer, ``artifacts`` is inferred from the artifact regions (or the artifact pixel count).
A reply with none of these forms fails: ``'schema'`` when a JSON object was found but does not follow the schema,
else ``'invalid_json'``.

Failure policy (rule 6): a network error, timeout, HTTP error, non-JSON reply or schema failure makes :meth:`ask`
return ``None`` (the caller falls back to the heuristic maps) and records a reason (``'unreachable'``, ``'timeout'``,
``'http_<code>'``, ``'network'``, ``'bad_response'``, ``'invalid_json'``, ``'schema'``). Only HTTP 5xx and timeouts
are retried, with exponential backoff. An HTTP error's message carries the first 300 characters of the server's
response body (decoded leniently), e.g. ``HTTP 500 from http://...: CUDA out of memory``. The first failure of each
reason is logged as ONE warning; later ones are only counted (:attr:`VLMClient.failures`). Nothing here raises into
training, except for programming errors: :class:`ValueError` for an image array of the wrong shape/dtype,
:class:`KeyError` for an unknown prompt kind.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
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
_POINT_KEYS = ('point_2d', 'point')
POINT_BOX = 0.05  # a point becomes a box of this fraction of the image width x height, centred on it

# Keyword rule of normalise_label (after the exact aliases), see the module docstring.
_ARTIFACT_WORDS = re.compile(r'artifact|artefact|halo|banding|ringing|blotch|noise|noisy|ghosting|posteri[sz]')
_OVER_EXPOSED = re.compile(r'\bover ?(?:expos|bright)')
_UNDER_EXPOSED = re.compile(r'\bunder ?(?:expos|lit)')
_HIGHLIGHT_WORDS = re.compile(r'blown|highlight|bright|burn')
_SHADOW_WORDS = re.compile(r'dark|shadow|crushed|black')
_CLIPPED_WORDS = re.compile(r'clipp|saturat')
_LABEL_EDGE_PUNCTUATION = ' .,;:!?"\'`*()[]'

# Yes/No first line (module docstring, form 1).
_YES_NO = re.compile(r'[\s*_#>"\']*(?:answer\s*[:.-]?[\s*_]*)?(yes|no)\b[\s*_"\']*(?:[.,:;!?)\u2013\u2014-]|$)', re.I)
# Grounding tags of open VLMs (module docstring, form 3).
_NUM = r'[-+]?\d+(?:\.\d+)?'
_MOLMO = re.compile(r'<(points?)\b([^>]*)>(.*?)</\1>', re.S)
_TAG_ATTR = re.compile(r'([\w-]+)\s*=\s*"([^"]*)"')
_REF_OR_BOX = re.compile(
    r'(?:<ref>|<\|object_ref_start\|>)(?P<ref>.*?)(?:</ref>|<\|object_ref_end\|>)'
    rf'|(?:<box>|<\|box_start\|>)\s*\(\s*(?P<x0>{_NUM})\s*,\s*(?P<y0>{_NUM})\s*\)\s*,?\s*'
    rf'\(\s*(?P<x1>{_NUM})\s*,\s*(?P<y1>{_NUM})\s*\)\s*(?:</box>|<\|box_end\|>)',
    re.S,
)
_QWEN_VL_SCALE = 1000.0  # Qwen-VL / Qwen2-VL box coordinates are normalised to 0-1000
_KOSMOS = re.compile(r'<phrase>(.*?)</phrase>\s*<object>(.*?)</object>', re.S)
_KOSMOS_PATCH = re.compile(r'<patch_index_(\d+)>')
_KOSMOS_GRID = 32  # Kosmos-2: 32 x 32 patches
_FLORENCE = re.compile(r'([^<>]*)((?:<loc_\d+>)+)')
_FLORENCE_LOC = re.compile(r'<loc_(\d+)>')
_FLORENCE_BINS = 1000  # Florence-2: coordinates quantised into 1000 bins per side
# Pixel counts of the paper's loss prompt (module docstring, form 4).
_COUNT_PAIR = re.compile(r'\[\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\]')
_COUNT_ARTIFACT_WORDS = re.compile(r'artifact|artefact|\bpink')
_COUNT_EXPOSURE_WORDS = re.compile(r'\bover|\bunder|expos|\bblue|\bgreen')
_COUNT_CONTEXT = 100  # characters before a pair searched for what it counts


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
        dropped: per-reason counts of what was dropped (``'label'``, ``'box'``, ``'confidence'``, ``'degenerate'``,
            ``'artifacts_false'``, ``'not_an_object'``, ``'pixel_counts'``).
        rescaled: number of JSON boxes (or points) that were given in pixels and rescaled by the size of the image sent.
        image_size: ``(width, height)`` of the image that was sent (after downscaling).
        raw_text: the reply text as received.
        format: the reply form(s) read, joined with ``+`` (``'json'``, ``'qwen_bbox'``, ``'qwen_point'``,
            ``'molmo_points'``, ``'qwen_ref_box'``, ``'kosmos'``, ``'florence'``, ``'yes_no'``, ``'pixel_counts'``;
            module docstring); ``''`` when unknown (a report built by hand or stored before forms were recorded).
        fractions: area fractions in [0, 1] of the image per label, without a location (the paper's pixel counts).
        converted: items read per form (boxes, points, count pairs; ``'yes_no'``: 1), before validation.
    """

    artifacts: bool | None
    regions: list[VLMRegion]
    dropped: dict[str, int] = field(default_factory=dict)
    rescaled: int = 0
    image_size: tuple[int, int] = (0, 0)
    raw_text: str = ''
    format: str = ''
    fractions: dict[str, float] = field(default_factory=dict)
    converted: dict[str, int] = field(default_factory=dict)

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
            'format': self.format,
            'fractions': dict(self.fractions),
            'converted': dict(self.converted),
        }

    @classmethod
    def from_dict(cls, d: dict) -> VLMReport:
        """Inverse of :meth:`to_dict`; dicts stored without ``format``/``fractions``/``converted`` get the defaults."""
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
            format=str(d.get('format', '')),
            fractions={str(k): float(v) for k, v in d.get('fractions', {}).items()},
            converted={str(k): int(v) for k, v in d.get('converted', {}).items()},
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


def _label_key(label: str) -> str:
    """Lower case, ``-``/``_`` as spaces, single spaces, no punctuation at the edges."""
    key = ' '.join(label.lower().replace('-', ' ').replace('_', ' ').split())
    return key.strip(_LABEL_EDGE_PUNCTUATION)


def _label_by_keywords(key: str) -> str | None:
    """The keyword rule of the module docstring (artifact words first, then explicit exposure, then cues)."""
    if _ARTIFACT_WORDS.search(key):
        return 'artifact'
    over, under = bool(_OVER_EXPOSED.search(key)), bool(_UNDER_EXPOSED.search(key))
    if over != under:
        return 'overexposed' if over else 'underexposed'
    if over:  # both named: ambiguous
        return None
    bright, dark = bool(_HIGHLIGHT_WORDS.search(key)), bool(_SHADOW_WORDS.search(key))
    if bright != dark:
        return 'overexposed' if bright else 'underexposed'
    if bright:
        return None
    return 'overexposed' if _CLIPPED_WORDS.search(key) else None


def normalise_label(label: object) -> str | None:
    """Map a label (an alias or a phrase, see the module docstring) to one of :data:`LABELS`; None if unknown."""
    if not isinstance(label, str):
        return None
    key = _label_key(label)
    return _LABEL_ALIASES.get(key) or _label_by_keywords(key)


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


def _clip01(v: float) -> float:
    return min(max(v, 0.0), 1.0)


class _Collector:
    """Regions, fractions, drop and conversion counts of one reply, validated as they are added."""

    def __init__(self, image_size: tuple[int, int], artifacts: bool | None):
        self.width, self.height = int(image_size[0]), int(image_size[1])
        self.artifacts = artifacts
        self.regions: list[VLMRegion] = []
        self.fractions: dict[str, float] = {}
        self.dropped: collections.Counter = collections.Counter()
        self.converted: dict[str, int] = {}
        self.rescaled = 0
        if artifacts is not None:
            self.count('yes_no')

    def count(self, form: str, n: int = 1) -> None:
        """Record ``n`` items read in ``form`` (``n=0`` names a form that held nothing)."""
        self.converted[form] = self.converted.get(form, 0) + n

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def to_fractions(self, box: list[float]) -> list[float] | None:
        """A JSON box in fractions, or in pixels of the sent image (a coordinate > 1.05) -> fractions of width /
        height; None when the box is in pixels and the image size is unknown."""
        if max(box) <= _NORMALISED_TOLERANCE:
            return box
        if self.width <= 0 or self.height <= 0:
            return None
        self.rescaled += 1
        return [box[0] / self.width, box[1] / self.height, box[2] / self.width, box[3] / self.height]

    def add(self, label: object, box: list[float] | None, confidence: float = 1.0) -> None:
        """Validate and keep one region.

        Args:
            label: the label as the model wrote it (mapped by :func:`normalise_label`).
            box: ``(x0, y0, x1, y1)`` in fractions of the image width / height, origin top-left (corners are sorted
                and clipped to [0, 1]); None for a malformed box.
            confidence: in [0, 1].
        """
        name = normalise_label(label)
        if name is None:
            self.drop('label')
            return
        if box is None:
            self.drop('box')
            return
        x0, x1 = sorted((_clip01(box[0]), _clip01(box[2])))
        y0, y1 = sorted((_clip01(box[1]), _clip01(box[3])))
        if x1 - x0 <= 0.0 or y1 - y0 <= 0.0:
            self.drop('degenerate')
        elif name == 'artifact' and self.artifacts is False:
            self.drop('artifacts_false')
        else:
            self.regions.append(VLMRegion(name, (x0, y0, x1, y1), confidence))

    def report(self, raw_text: str) -> VLMReport:
        """The :class:`VLMReport`; without an artifact answer, it is inferred from the artifact regions."""
        artifacts = self.artifacts
        if artifacts is None and self.regions:
            artifacts = any(r.label == 'artifact' for r in self.regions)
        return VLMReport(
            artifacts, self.regions, dict(self.dropped), self.rescaled, (self.width, self.height), raw_text,
            '+'.join(self.converted), dict(self.fractions), dict(self.converted),
        )  # fmt: skip


# -- form 1: Yes / No -------------------------------------------------------------------------------------------------


def parse_yes_no(text: str) -> bool | None:
    """The artifact answer of a reply whose first non-empty line is Yes or No (module docstring, form 1), else None."""
    line = next((ln for ln in text.splitlines() if ln.strip()), '')
    m = _YES_NO.match(line)
    return None if m is None else m.group(1).lower() == 'yes'


# -- form 2: JSON -----------------------------------------------------------------------------------------------------


def _json_values(text: str) -> Iterator[dict | list]:
    """The top-level JSON objects and arrays of ``text``, in order; the inside of a decoded value is not searched."""
    decoder = json.JSONDecoder()
    start = re.compile(r'[{\[]')
    m = start.search(text)
    while m is not None:
        try:
            value, end = decoder.raw_decode(text, m.start())
        except ValueError:
            m = start.search(text, m.start() + 1)
            continue
        yield value
        m = start.search(text, end)


def _is_bare_region(value: object) -> bool:
    """A single region object (Qwen2.5-VL's ``{"bbox_2d": ..., "label": ...}``) rather than a report object."""
    return (
        isinstance(value, dict)
        and not any(k in value for k in (*_REGION_KEYS, 'artifacts'))
        and any(k in value for k in (*_BOX_KEYS, *_POINT_KEYS))
    )


def _find_json_reply(text: str) -> dict | list | None:
    """The reply's JSON: the first object, or the first list that is empty or holds objects; bare region objects
    (and those after them) are gathered into a list. None when there is none."""
    values = list(_json_values(text))
    for i, value in enumerate(values):
        if _is_bare_region(value):
            return [v for v in values[i:] if _is_bare_region(v)]
        if isinstance(value, dict) or not value or any(isinstance(v, dict) for v in value):
            return value
    return None


def _json_artifacts(obj: dict) -> bool | None:
    """The ``artifacts`` value of a JSON object as a bool (``"yes"``/``"no"`` strings accepted), None when absent."""
    artifacts = obj.get('artifacts')
    if isinstance(artifacts, str) and artifacts.strip().lower() in ('yes', 'no', 'true', 'false'):
        artifacts = artifacts.strip().lower() in ('yes', 'true')
    if artifacts is not None and not isinstance(artifacts, bool):
        raise VLMParseError('schema', f'"artifacts" must be true/false, got {artifacts!r}')
    return artifacts


def _parse_point(raw: object) -> list[float] | None:
    """``[x, y]`` or ``{x, y}`` -> two floats; None when malformed."""
    if isinstance(raw, dict):
        raw = [raw.get('x'), raw.get('y')]
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        return None
    vals = [_to_float(v) for v in raw]
    return None if any(v is None for v in vals) else vals


def _point_box(fx: float, fy: float) -> list[float]:
    """A point in fractions of width / height -> the :data:`POINT_BOX` box centred on it (point clipped first)."""
    fx, fy, half = _clip01(fx), _clip01(fy), POINT_BOX / 2
    return [fx - half, fy - half, fx + half, fy + half]


def _json_point_box(raw: object, col: _Collector) -> list[float] | None:
    """A JSON point (fractions, or pixels of the sent image) -> a :data:`POINT_BOX` box in the same units."""
    point = _parse_point(raw)
    if point is None:
        return None
    x, y = point
    if max(x, y) <= _NORMALISED_TOLERANCE:
        return _point_box(x, y)
    hw, hh = POINT_BOX / 2 * col.width, POINT_BOX / 2 * col.height
    return [x - hw, y - hh, x + hw, y + hh]


def _add_json_item(col: _Collector, item: object, form: str) -> str:
    """Validate one JSON region into ``col``; returns the form it was read in (``form`` or ``'qwen_point'``)."""
    if not isinstance(item, dict):
        col.drop('not_an_object')
        return form
    raw_box = next((item[k] for k in _BOX_KEYS if k in item), None)
    raw_point = next((item[k] for k in _POINT_KEYS if k in item), None) if raw_box is None else None
    item_form = form if raw_point is None else 'qwen_point'
    label = item.get('label', item.get('type', item.get('category')))
    if normalise_label(label) is None:
        col.drop('label')
        return item_form
    box = _parse_box(raw_box) if raw_point is None else _json_point_box(raw_point, col)
    conf = _parse_confidence(item)
    if box is None or conf is None:
        col.drop('box' if box is None else 'confidence')
        return item_form
    col.add(label, col.to_fractions(box), conf)
    return item_form


def _report_from_json(value: dict | list, image_size: tuple[int, int], raw_text: str, answer: bool | None) -> VLMReport:
    """A report from the reply's JSON value (an object in the schema, or a list / bare object of regions)."""
    if _is_bare_region(value):
        value = [value]
    if isinstance(value, list):
        items, form, artifacts = value, 'qwen_bbox', answer
    else:
        form, artifacts = 'json', _json_artifacts(value)
        artifacts = answer if artifacts is None else artifacts
        items = next((value[k] for k in _REGION_KEYS if k in value), None)
        if items is None:
            if artifacts is None:
                raise VLMParseError('schema', f'reply has neither "regions" nor "artifacts" (keys: {sorted(value)})')
            items = []
        if not isinstance(items, list):
            raise VLMParseError('schema', f'"regions" must be a list, got {type(items).__name__}')
    col = _Collector(image_size, artifacts)
    for item in items:
        col.count(_add_json_item(col, item, form))
    if form not in col.converted and 'qwen_point' not in col.converted:
        col.count(form, 0)
    return col.report(raw_text)


def parse_report(obj: dict, image_size: tuple[int, int], raw_text: str = '') -> VLMReport:
    """Validate a decoded JSON reply against the schema (module docstring) and build a :class:`VLMReport`.

    Args:
        obj: the decoded JSON object (a bare region object such as ``{"bbox_2d": ..., "label": ...}`` is one region).
        image_size: ``(width, height)`` of the image that was sent, used to rescale pixel boxes.
        raw_text: the reply text, kept in the report.

    Raises:
        VLMParseError: (reason ``'schema'``) when the object does not follow the schema at all.
    """
    if not isinstance(obj, dict):
        raise VLMParseError('schema', f'reply is a JSON {type(obj).__name__}, not an object')
    return _report_from_json(obj, image_size, raw_text, None)


# -- form 3: grounding tags -------------------------------------------------------------------------------------------

_Item = tuple[str | None, list[float] | None]  # (label as written, box in fractions of width / height or None)


def _molmo_keys(tag: str, attrs: dict) -> list[tuple[str, str]]:
    """The coordinate attribute names of a Molmo tag: ``x``/``y`` of ``<point>``; ``x1``/``y1``, ``x2``/``y2`` ... of
    ``<points>``, up to the first missing ``x<i>``."""
    if tag == 'point':
        return [('x', 'y')]
    keys, i = [], 1
    while f'x{i}' in attrs:
        keys.append((f'x{i}', f'y{i}'))
        i += 1
    return keys


def _molmo_points(text: str) -> list[_Item]:
    """Molmo ``<point x y>`` / ``<points x1 y1 x2 y2 ...>`` tags (percent of width / height) -> point boxes."""
    items = []
    for m in _MOLMO.finditer(text):
        attrs = dict(_TAG_ATTR.findall(m.group(2)))
        label = m.group(3).strip()
        if normalise_label(label) is None and attrs.get('alt'):
            label = attrs['alt']
        for kx, ky in _molmo_keys(m.group(1), attrs):
            x, y = _to_float(attrs.get(kx)), _to_float(attrs.get(ky))
            items.append((label, None if x is None or y is None else _point_box(x / 100.0, y / 100.0)))
    return items


def _qwen_ref_boxes(text: str) -> list[_Item]:
    """Qwen-VL ``<ref>..</ref><box>(x0,y0),(x1,y1)</box>`` and Qwen2-VL ``<|object_ref_start|>`` / ``<|box_start|>``
    tokens (0-1000 of width / height); a box takes the label of the last ref before it."""
    items, label = [], None
    for m in _REF_OR_BOX.finditer(text):
        if m.group('ref') is not None:
            label = m.group('ref')
        else:
            items.append((label, [float(m.group(k)) / _QWEN_VL_SCALE for k in ('x0', 'y0', 'x1', 'y1')]))
    return items


def _kosmos_box(first: int, second: int) -> list[float] | None:
    """Two Kosmos-2 patch indices (row * 32 + col) -> the box covering both patches, in fractions; None if invalid."""
    n = _KOSMOS_GRID
    if max(first, second) >= n * n:
        return None
    (r0, c0), (r1, c1) = divmod(first, n), divmod(second, n)
    return [min(c0, c1) / n, min(r0, r1) / n, (max(c0, c1) + 1) / n, (max(r0, r1) + 1) / n]


def _kosmos_boxes(text: str) -> list[_Item]:
    """Kosmos-2 ``<phrase>..</phrase><object><patch_index_a><patch_index_b>...</object>``; an odd index is malformed."""
    items = []
    for m in _KOSMOS.finditer(text):
        indices = [int(i) for i in _KOSMOS_PATCH.findall(m.group(2))]
        items += [(m.group(1), _kosmos_box(a, b)) for a, b in zip(indices[::2], indices[1::2])]
        if len(indices) % 2 or not indices:
            items.append((m.group(1), None))
    return items


def _florence_boxes(text: str) -> list[_Item]:
    """Florence-2 ``label<loc_x0><loc_y0><loc_x1><loc_y1>...``: bins of 1/1000 read at their centres."""
    items = []
    for m in _FLORENCE.finditer(text):
        bins = [int(b) for b in _FLORENCE_LOC.findall(m.group(2))]
        for i in range(0, len(bins) - 3, 4):
            quad = bins[i : i + 4]
            box = None if max(quad) >= _FLORENCE_BINS else [(b + 0.5) / _FLORENCE_BINS for b in quad]
            items.append((m.group(1), box))
        if len(bins) % 4:
            items.append((m.group(1), None))
    return items


_TAG_FORMS = (
    ('molmo_points', _molmo_points),
    ('qwen_ref_box', _qwen_ref_boxes),
    ('kosmos', _kosmos_boxes),
    ('florence', _florence_boxes),
)


def _report_from_tags(text: str, image_size: tuple[int, int], answer: bool | None) -> VLMReport | None:
    """A report from every grounding-tag form in ``text`` (module docstring, form 3); None when there is none."""
    found = [(form, items) for form, items in ((form, parse(text)) for form, parse in _TAG_FORMS) if items]
    if not found:
        return None
    col = _Collector(image_size, answer)
    for form, items in found:
        col.count(form, len(items))
        for label, box in items:
            col.add(label, box)
    return col.report(text)


# -- form 4: pixel counts ---------------------------------------------------------------------------------------------


def _count_pairs(text: str) -> list[tuple[float, float, str | None]]:
    """Bracketed ``[a, b]`` number pairs with the role the text before each names (``'artifact'``, ``'exposure'``
    or None when it names neither or both)."""
    pairs, prev_end = [], 0
    for m in _COUNT_PAIR.finditer(text):
        context = text[max(prev_end, m.start() - _COUNT_CONTEXT) : m.start()].lower()
        art, exp = bool(_COUNT_ARTIFACT_WORDS.search(context)), bool(_COUNT_EXPOSURE_WORDS.search(context))
        pairs.append(
            (float(m.group(1)), float(m.group(2)), 'artifact' if art > exp else 'exposure' if exp > art else None)
        )
        prev_end = m.end()
    return pairs


def _assign_count_roles(pairs: list, answer: bool | None) -> tuple[dict[str, tuple[float, float]], int]:
    """Named pairs take their role; the others fill the free roles in the order artifact, exposure (a lone pair after
    No: exposure). Returns ``(roles, number of pairs left over)``."""
    roles, rest = {}, []
    for a, b, hint in pairs:
        if hint is not None and hint not in roles:
            roles[hint] = (a, b)
        else:
            rest.append((a, b))
    order = ('exposure',) if answer is False and len(pairs) == 1 else ('artifact', 'exposure')
    free = [role for role in order if role not in roles]
    roles.update(zip(free, rest))
    return roles, max(0, len(rest) - len(free))


def _add_count_fractions(col: _Collector, pairs: list, answer: bool | None) -> None:
    """Turn the pixel-count pairs into area fractions of ``col`` (module docstring, form 4)."""
    roles, extra = _assign_count_roles(pairs, answer)
    if extra:
        col.dropped['pixel_counts'] += extra
    total = col.width * col.height  # the sent image, unless the artifact pair gives a total
    if 'artifact' in roles:
        count, art_total = roles['artifact']
        if art_total <= 0 or count > art_total:
            col.drop('pixel_counts')
        else:
            total = art_total
            if answer is False and count > 0:
                col.drop('artifacts_false')
            elif answer is not False:
                col.fractions['artifact'] = count / art_total
    if 'exposure' in roles:
        over, under = roles['exposure']
        if total <= 0 or over + under > total:
            col.drop('pixel_counts')
        else:
            col.fractions['overexposed'], col.fractions['underexposed'] = over / total, under / total
    if col.artifacts is None and 'artifact' in col.fractions:
        col.artifacts = col.fractions['artifact'] > 0


def _report_from_text(text: str, image_size: tuple[int, int], answer: bool | None) -> VLMReport | None:
    """A report from a Yes/No line and / or pixel-count pairs (forms 1 and 4); None when there is neither."""
    pairs = _count_pairs(text)
    if not pairs and answer is None:
        return None
    col = _Collector(image_size, answer)
    if pairs:
        col.count('pixel_counts', len(pairs))
        _add_count_fractions(col, pairs, answer)
    return col.report(text)


def parse_reply(text: str, image_size: tuple[int, int]) -> VLMReport:
    """Read a reply text in any of the forms of the module docstring and build a :class:`VLMReport`.

    Args:
        text: the reply text.
        image_size: ``(width, height)`` of the image that was sent (pixel boxes, pixel counts).

    Raises:
        VLMParseError: ``'schema'`` when the reply's JSON object fails the schema and no other form is found;
            ``'invalid_json'`` when no form is found.
    """
    if not isinstance(text, str):
        raise VLMParseError('invalid_json', f'reply content is {type(text).__name__}, not text')
    answer = parse_yes_no(text)
    value = _find_json_reply(text)
    schema_error = None
    if value is not None:
        try:
            return _report_from_json(value, image_size, text, answer)
        except VLMParseError as e:
            schema_error = e
    report = _report_from_tags(text, image_size, answer) or _report_from_text(text, image_size, answer)
    if report is not None:
        return report
    if schema_error is not None:
        raise schema_error
    snippet = text.strip().replace('\n', ' ')[:120]
    raise VLMParseError('invalid_json', f'no JSON object or other known answer form in the reply: {snippet!r}')


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

    A label with an area fraction ``f`` (:attr:`VLMReport.fractions`, the paper's pixel counts) and no box gets a
    uniform map of value ``f``: the location is unknown, so the area is spread evenly; :func:`map_fractions` then
    gives back ``f``. Boxes of a label take precedence over its fraction.

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
    _fill_fractions(maps, report)
    return np.clip(maps, 0.0, 1.0, out=maps)


def _fill_fractions(maps: np.ndarray, report: VLMReport) -> None:
    """Set the channel of each label with an area fraction but no box to that fraction, uniformly (in place)."""
    boxed = {r.label for r in report.regions}
    for label, fraction in report.fractions.items():
        if label in LABELS and label not in boxed and not (label == 'artifact' and report.artifacts is False):
            maps[LABELS.index(label)] = fraction


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


_ERROR_BODY_CHARS = 300  # characters of an HTTP error's response body kept in the failure message


class _HTTPFailure(Exception):
    """A failed request: ``reason`` (module docstring), the message (with the response body of an HTTP error) and
    whether it may be retried."""

    def __init__(self, reason: str, message: str, retry: bool):
        super().__init__(message)
        self.reason, self.retry = reason, retry


def _error_body(err: urllib.error.HTTPError, limit: int = _ERROR_BODY_CHARS) -> str:
    """The first ``limit`` characters of an HTTP error's response body, decoded leniently, on one line ('' if none)."""
    try:
        raw = err.read(4 * limit) if err.fp is not None else b''
    except Exception:  # the error body itself may time out or be cut off
        return ''
    text = raw.decode('utf-8', 'replace') if isinstance(raw, bytes) else str(raw)
    return ' '.join(text.split())[:limit]


def _is_timeout(err: BaseException) -> bool:
    return isinstance(err, TimeoutError) or 'timed out' in str(err).lower()


class VLMClient:
    """Ask a local VLM server where an image shows artifacts, over- and under-exposure.

    Thread-safe: one client may serve a thread pool (counters are guarded by a lock).

    Args:
        base_url: server URL, e.g. ``http://127.0.0.1:8000/v1`` (openai) or ``http://127.0.0.1:11434`` (ollama).
        model: model name sent in every request (also part of the cache key); None or ``''``: the ``model`` key is
            left out of the requests (servers serving one model, e.g. ``transformers serve``, llama.cpp's server).
            The ollama dialect needs a name.
        api_key: sent as ``Authorization: Bearer <key>`` when given.
        timeout: seconds per HTTP request (connect + read).
        dialect: ``'openai'`` (chat-completions) or ``'ollama'`` (native ``/api/chat``).
        max_side: long side limit of the image sent, in pixels.
        prompts: overrides of :data:`DEFAULT_PROMPTS` (keys ``'guidance'``, ``'loss'``; other keys add prompts).
        retries: extra attempts after an HTTP 5xx or a timeout (other failures are not retried).
        backoff: seconds before the first retry; doubles each retry.
        system_prompt: the system message (default :data:`SYSTEM_PROMPT`).
        max_tokens: reply token limit (``max_tokens`` / Ollama ``num_predict``); 384 holds a JSON answer with a
            dozen regions and keeps a chatty model from writing for long.
        json_mode: send ``response_format: json_object`` (openai) / ``format: "json"`` (ollama); best effort.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        dialect: str = 'openai',
        max_side: int = 768,
        prompts: dict[str, str] | None = None,
        retries: int = 2,
        backoff: float = 1.0,
        system_prompt: str = SYSTEM_PROMPT,
        max_tokens: int = 384,
        json_mode: bool = True,
    ):
        if dialect not in DIALECTS:
            raise ValueError(f'VLM dialect must be one of {DIALECTS}, got {dialect!r}')
        if not base_url or not urllib.parse.urlparse(base_url).scheme.startswith('http'):
            raise ValueError(f'VLM base_url must be an http(s) URL, got {base_url!r}')
        if not model and dialect == 'ollama':
            raise ValueError("VLM model name must not be empty for the ollama dialect (Ollama's /api/chat needs it)")
        if int(max_tokens) < 1:
            raise ValueError(f'VLM max_tokens must be >= 1, got {max_tokens}')
        if int(max_side) < 16:
            raise ValueError(f'VLM max_side must be >= 16 pixels, got {max_side}')
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f'VLM timeout must be > 0, retries and backoff >= 0 (got {timeout}, {retries}, {backoff})')
        self.base_url = base_url.rstrip('/')
        self.model = model or ''
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

    def _model_field(self) -> dict:
        """``{'model': name}``, or nothing when the client has no model name."""
        return {'model': self.model} if self.model else {}

    def build_request(self, png_bytes: bytes, kind: str = 'guidance') -> dict:
        """The JSON body of one chat request (module docstring for both dialects; no ``model`` key without a name)."""
        b64 = base64.b64encode(png_bytes).decode('ascii')
        text = self.prompt(kind)
        if self.dialect == 'openai':
            body = {
                **self._model_field(),
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
            **self._model_field(),
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
            detail = _error_body(e)
            msg = f'HTTP {e.code} from {self.chat_url}: {detail or e.reason}'
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
