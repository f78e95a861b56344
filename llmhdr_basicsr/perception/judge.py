"""Asynchronous VLM judge: a vision-language model marks the generator's reconstructions during training.

The paper's L_llm asks a multimodal model about the *synthesised* images: are there synthesis artifacts, which areas
are over- or under-exposed. A VLM answers in seconds, a training step takes milliseconds to a second, so the
question is asked in the background and its answer used when it arrives::

    training thread                                   judge worker (daemon thread)
    every judge_every iterations:
      G_Y(whole-image LDR views) -> render -> submit  --queue (bounded, drops when full)-->  VLMClient.ask
                                                                                              -> regions -> maps
    every step: lookup(image keys) <------------ answers {image key: (iteration judged, maps)} ----+

- :meth:`VLMJudge.submit` never blocks: a full queue drops the request (counted), an image already waiting is not
  queued twice.
- Answers are kept per image (the whole-image key of the dataset, ``ldr_image_key``) with the iteration whose
  reconstruction they judged; a newer answer replaces an older one. The maps are stored as ``(3, S, S)`` uint8
  (``S = map_size``), channels ``[artifact, over, under]``, over the whole image: a crop takes its window of them
  (:func:`~llmhdr_basicsr.utils.ldr_view.cut_windows`).
- A failed request (server down, timeout, unparseable reply) is counted by reason and leaves the previous answer;
  nothing raises into training. The worker asks one image at a time, so a server that never answers costs one
  thread blocked in its HTTP timeout, not a training step.
- :meth:`state_dict` / :meth:`load_state_dict` carry the answers through a checkpoint (``--auto_resume``); requests
  still queued at the save are not kept (they are asked again at the next judging iteration).

The counters (``submitted``, ``answered``, ``dropped``, ``failed``, ``pending``) are what the training log and
tensorboard show (:meth:`stats`).
"""

from __future__ import annotations

import collections
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from llmhdr_basicsr.utils.ldr_view import cut_windows
from llmhdr_basicsr.utils.tonemap import srgb_encode, tonemap_preview

from .vlm_client import VLMClient, report_to_maps

#: Keyword arguments of :class:`VLMJudge` besides the client's.
JUDGE_KEYS = ('judge_every', 'judge_images', 'queue_size', 'map_size', 'prompt', 'render', 'render_stops')
#: Renderings of a reconstruction for the VLM (see :class:`VLMJudge`).
RENDERS = ('exposure', 'reinhard')


@dataclass
class Answer:
    """One judged reconstruction: the iteration it was made at and its ``(3, S, S)`` uint8 maps."""

    iteration: int
    maps: np.ndarray


class VLMJudge:
    """Background VLM judge of reconstructions (module docstring).

    Args:
        client: the :class:`~llmhdr_basicsr.perception.vlm_client.VLMClient` that asks the server.
        judge_every: training iterations between two submissions (>= 1).
        judge_images: reconstructions submitted per judging iteration (distinct images of the batch).
        queue_size: requests that may wait for the worker; more are dropped.
        map_size: side of the stored maps.
        prompt: prompt kind of the client (``'loss'``: the paper's question about synthesis artifacts and
            exposure, :data:`~llmhdr_basicsr.perception.vlm_client.LOSS_PROMPT`).
        render: how a reconstruction is shown to the VLM: ``'exposure'`` = as the perception loss judges it,
            re-exposed ``render_stops`` below the input's exposure and sRGB-encoded
            (``srgb_encode(clip(2^-stops hdr, 0, 1))``; 0 = the input's own exposure), ``'reinhard'`` = the
            validation preview (Reinhard 2002 global operator), where expanded highlights keep their gradation.
        render_stops: stops below the input's exposure for ``'exposure'`` (>= 0).
    """

    def __init__(
        self,
        client: VLMClient,
        judge_every: int = 50,
        judge_images: int = 2,
        queue_size: int = 4,
        map_size: int = 64,
        prompt: str = 'loss',
        render: str = 'exposure',
        render_stops: float = 0.0,
    ) -> None:
        if judge_every < 1 or judge_images < 1 or queue_size < 1 or map_size < 4:
            raise ValueError(
                'train.llm_opt.judge: need judge_every, judge_images, queue_size >= 1 and map_size >= 4, got '
                f'{judge_every}, {judge_images}, {queue_size}, {map_size}'
            )
        if render not in RENDERS or render_stops < 0:
            raise ValueError(f'train.llm_opt.judge: render must be one of {RENDERS} and render_stops >= 0')
        client.prompt(prompt)  # KeyError naming the available prompts
        self.client = client
        self.judge_every, self.judge_images = int(judge_every), int(judge_images)
        self.map_size, self.prompt, self.render, self.render_stops = int(map_size), prompt, render, float(render_stops)
        self._queue: queue.Queue = queue.Queue(maxsize=int(queue_size))
        self._answers: dict[str, Answer] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._counts = collections.Counter()
        self._failures = collections.Counter()
        self._fresh: list[tuple[str, Answer]] = []  # answers not yet shown in tensorboard
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    @classmethod
    def from_options(cls, opt: dict) -> VLMJudge:
        """Build from ``train.llm_opt.judge``: the client's options (``base_url``, ``model``, ``timeout`` ...) and
        :data:`JUDGE_KEYS`."""
        opt = dict(opt)
        judge_kwargs = {k: opt.pop(k) for k in JUDGE_KEYS if k in opt}
        if 'base_url' not in opt:
            raise ValueError('train.llm_opt.judge needs base_url (the VLM server, e.g. http://127.0.0.1:8000/v1)')
        try:
            client = VLMClient(**opt)
        except TypeError as err:
            raise ValueError(f'train.llm_opt.judge: {err} (client options: see VLMClient)') from None
        return cls(client, **judge_kwargs)

    # -------------------------------------------------------------------------------------------- training side
    def due(self, current_iter: int) -> bool:
        """Whether ``current_iter`` is a judging iteration."""
        return current_iter % self.judge_every == 0

    def wanted(self, keys: list[str]) -> list[str]:
        """The keys that :meth:`submit` would queue now (not waiting already, room in the queue); the others are
        counted as submitted and dropped. Lets the caller skip rendering what would be dropped."""
        with self._lock:
            fresh = [k for k in dict.fromkeys(keys) if k not in self._pending]
            room = max(self._queue.maxsize - self._queue.qsize(), 0)
            self._counts['submitted'] += len(fresh[room:])
            self._counts['dropped'] += len(fresh[room:])
            return fresh[:room]

    def submit(self, key: str, image: np.ndarray, iteration: int) -> bool:
        """Queue one rendered reconstruction without waiting; False if it was dropped or is already waiting.

        Args:
            key: the whole-image key of the training image.
            image: ``(H, W, 3)`` display-referred RGB, float in [0, 1] or uint8, as the VLM should see it.
            iteration: the training iteration of the reconstruction.
        """
        with self._lock:
            if key in self._pending:
                return False
            self._counts['submitted'] += 1
            try:
                self._queue.put_nowait((key, image, int(iteration)))
            except queue.Full:
                self._counts['dropped'] += 1
                return False
            self._pending.add(key)
        self._ensure_worker()
        return True

    def lookup(self, keys: list[str]) -> list[Answer | None]:
        """The latest answer for each key (None where the image has none)."""
        with self._lock:
            return [self._answers.get(k) for k in keys]

    def stats(self) -> dict[str, int]:
        """Counts: ``submitted``, ``answered``, ``dropped``, ``failed`` (all reasons), ``pending``, ``images``
        (images with an answer)."""
        with self._lock:
            out = {k: int(self._counts[k]) for k in ('submitted', 'answered', 'dropped', 'failed')}
            out.update(pending=len(self._pending), images=len(self._answers))
        return out

    def failure_reasons(self) -> dict[str, int]:
        with self._lock:
            return dict(self._failures)

    def take_fresh(self) -> list[tuple[str, Answer]]:
        """Answers that arrived since the last call (for a tensorboard preview)."""
        with self._lock:
            fresh, self._fresh = self._fresh, []
        return fresh

    # -------------------------------------------------------------------------------------------- worker side
    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._stop.clear()
            self._worker = threading.Thread(target=self._work, name='llmhdr-vlm-judge', daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                key, image, iteration = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                result = self.client.ask_detailed(image, self.prompt)
                maps = None
                if result.report is not None:
                    maps = report_to_maps(result.report, self.map_size, self.map_size)
                    maps = np.round(np.clip(maps, 0.0, 1.0) * 255.0).astype(np.uint8)
            except Exception as err:  # never let the worker die: count it as a failure
                result, maps = None, None
                reason = f'error_{type(err).__name__}'
            else:
                reason = result.reason
            with self._lock:
                self._pending.discard(key)
                if maps is None:
                    self._counts['failed'] += 1
                    self._failures[reason or 'unknown'] += 1
                else:
                    answer = Answer(iteration, maps)
                    old = self._answers.get(key)
                    if old is None or old.iteration <= iteration:
                        self._answers[key] = answer
                    self._counts['answered'] += 1
                    self._fresh = [*self._fresh[-7:], (key, answer)]

    def close(self) -> None:
        """Stop the worker (it ends after its current request; a daemon thread never keeps the process alive)."""
        self._stop.set()

    # ------------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """The answers and counters (what a checkpoint keeps)."""
        with self._lock:
            return {
                'answers': {k: {'iteration': a.iteration, 'maps': a.maps.copy()} for k, a in self._answers.items()},
                'counts': dict(self._counts),
                'failures': dict(self._failures),
            }

    def load_state_dict(self, state: dict) -> None:
        with self._lock:
            self._answers = {
                str(k): Answer(int(v['iteration']), np.asarray(v['maps'], dtype=np.uint8))
                for k, v in (state.get('answers') or {}).items()
            }
            self._counts = collections.Counter(state.get('counts') or {})
            self._failures = collections.Counter(state.get('failures') or {})


# ------------------------------------------------------------------------------------------------ tensor side
def render_for_judge(hdr: torch.Tensor, render: str = 'exposure', stops: float = 0.0) -> list[np.ndarray]:
    """Reconstructions as the VLM sees them (see :class:`VLMJudge`).

    Args:
        hdr: ``(N, 3, H, W)`` linear HDR reconstructions, white = the LDR's clipping level = 1.
        render: ``'exposure'`` or ``'reinhard'``.
        stops: stops below the input's exposure (``'exposure'``).

    Returns:
        ``N`` arrays ``(H, W, 3)`` uint8, display-referred sRGB.
    """
    hdr = hdr.detach().float().clamp(min=0.0)
    if render == 'exposure':
        shown = srgb_encode((hdr * 2.0**-stops).clamp(0.0, 1.0))
    elif render == 'reinhard':
        shown = tonemap_preview(hdr, 'reinhard')
    else:
        raise ValueError(f'render must be one of {RENDERS}, got {render!r}')
    u8 = (shown.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(im) for im in u8]


def judged_maps(
    answers: list[Answer | None], windows: torch.Tensor, size: tuple[int, int], device: torch.device | str = 'cpu'
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The judged maps of a batch of crops: each answer's whole-image maps cut to the sample's crop window.

    Args:
        answers: one :class:`Answer` or None per sample (:meth:`VLMJudge.lookup`).
        windows: ``(N, 5)`` ``ldr_window`` rows of the batch.
        size: ``(H, W)`` of the crops.
        device: where the result goes.

    Returns:
        ``(maps, valid)``: ``(N, 3, H, W)`` float32 in [0, 1] (zeros where there is no answer) and ``(N, 1, 1, 1)``
        float32 1/0; None when no sample has an answer.
    """
    if all(a is None for a in answers):
        return None
    side = next(a.maps.shape[-1] for a in answers if a is not None)
    whole = np.zeros((len(answers), 3, side, side), dtype=np.float32)
    for i, a in enumerate(answers):
        if a is not None:
            whole[i] = a.maps.astype(np.float32) / 255.0
    maps = cut_windows(torch.from_numpy(whole), windows, size, padding_mode='reflection').clamp(0.0, 1.0)
    valid = torch.tensor([float(a is not None) for a in answers]).view(-1, 1, 1, 1)
    return (maps * valid).to(device), valid.to(device)
