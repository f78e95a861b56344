"""``llmhdr-perceive`` / ``python -m llmhdr_basicsr.perceive``: fill the perception cache from a local VLM server.

For every image of a folder (or one file) the VLM is asked, with the paper's generator-guidance prompt (or the loss
prompt, ``--prompt loss``), where the image shows artifacts, over- and under-exposure; the answer is rasterised into
``(3, h, w)`` maps ``[artifact, over, under]`` and stored in ``--cache`` (see :mod:`llmhdr_basicsr.perception.cache`).
Training reads that cache and uses the heuristic maps for images without an entry.

Behaviour

- Images already in the cache (same file content, prompt, model and ``--max-side``) are skipped, so re-running after an
  interruption (Ctrl-C, a crash, ``--limit``) continues where it stopped; every finished image is kept.
- A failed image (server error, timeout, unparsable reply) writes no entry; failures are listed at the end.
- HDR inputs (``.hdr``, ``.exr``, ``.pfm``, float TIFF) are tone-mapped for display first (Reinhard 2002 + sRGB,
  ``tonemap.tonemap_preview(x, 'reinhard')``); LDR inputs are sent as stored (display-referred).
- ``--model`` may be left out for a server that serves one model (``transformers serve``, llama.cpp's server): the
  requests then carry no ``model`` key and the cache records an empty model name.
- Exit status: 0 when at least one image succeeded or nothing needed asking (all cached); 1 when images were asked
  for and none succeeded; 2 for bad arguments or an empty/missing input; 130 after Ctrl-C.

Example::

    llmhdr-perceive -i datasets/ldr_train --cache datasets/perception_cache \\
        --base-url http://127.0.0.1:8000/v1 --model qwen2.5-vl-7b --concurrency 2
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import os.path as osp
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from llmhdr_basicsr.perception.cache import PerceptionCache
from llmhdr_basicsr.perception.vlm_client import DEFAULT_PROMPTS, DIALECTS, SYSTEM_PROMPT, VLMClient, report_to_maps
from llmhdr_basicsr.utils.hdr_io import IMAGE_EXTENSIONS, ImageReadError, extension, list_images, read_image

logger = logging.getLogger('basicsr.llmhdr')

API_KEY_ENV = 'LLMHDR_VLM_API_KEY'
DEFAULT_BASE_URLS = {'openai': 'http://127.0.0.1:8000/v1', 'ollama': 'http://127.0.0.1:11434'}


@dataclass
class Outcome:
    """Result for one image: ``status`` is ``'done'`` or ``'failed'``."""

    path: str
    status: str
    reason: str | None = None
    message: str = ''
    n_regions: int = 0
    n_dropped: int = 0
    listed: bool = True  # one FAILED line in the final list (off when one error message covers all files)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='llmhdr-perceive',
        description='Ask a local VLM server for artifact / over- / under-exposure maps of images and cache them.',
    )
    parser.add_argument('-i', '--input', required=True, help='image file or folder (not recursive)')
    parser.add_argument('--cache', required=True, help='cache folder (created if missing)')
    parser.add_argument('--model', default='',
                        help='model name sent to the server (part of the cache key); omit it for servers that serve '
                             'one model and take no name (transformers serve, llama.cpp): the request then has no '
                             '"model" key (the ollama dialect needs one)')  # fmt: skip
    parser.add_argument('--base-url', default=None,
                        help=f'server URL (default: {DEFAULT_BASE_URLS["openai"]} for openai, '
                             f'{DEFAULT_BASE_URLS["ollama"]} for ollama)')  # fmt: skip
    parser.add_argument('--api-key', default=None, help=f'bearer token (default: ${API_KEY_ENV})')
    parser.add_argument('--dialect', choices=DIALECTS, default='openai',
                        help='openai: /v1/chat/completions; ollama: native /api/chat')  # fmt: skip
    parser.add_argument('--timeout', type=float, default=60.0, help='seconds per request (default 60)')
    parser.add_argument('--max-tokens', type=int, default=384,
                        help='reply token limit (default 384: a JSON answer needs a few hundred; a chatty or '
                             'random model talks until the server limit, 1024 in transformers serve)')  # fmt: skip
    parser.add_argument('--retries', type=int, default=2, help='retries after HTTP 5xx or a timeout (default 2)')
    parser.add_argument('--backoff', type=float, default=1.0, help='seconds before the first retry, doubling')
    parser.add_argument('--concurrency', type=int, default=1, help='parallel requests (default 1)')
    parser.add_argument('--max-side', type=int, default=768, help='long side of the image sent, px (default 768)')
    parser.add_argument('--prompt', choices=sorted(DEFAULT_PROMPTS), default='guidance',
                        help="which of the paper's prompts to use (default guidance)")  # fmt: skip
    parser.add_argument('--prompt-file', default=None, help='text file replacing the user prompt of --prompt')
    parser.add_argument('--system-prompt-file', default=None, help='text file replacing the system prompt')
    parser.add_argument('--soft-edge', type=float, default=0.02,
                        help='box edge ramp width as a fraction of the long side (default 0.02)')  # fmt: skip
    parser.add_argument('--store-side', type=int, default=256,
                        help='long side of the stored maps, px (default 256; look-ups resize them)')  # fmt: skip
    parser.add_argument('--limit', type=int, default=None,
                        help='ask for at most N images not yet cached in this run (default: all)')  # fmt: skip
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def _read_text(path: str, option: str) -> str:
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read().strip()
    except OSError as e:
        raise ValueError(f'{option}: cannot read {path}: {e}') from None
    if not text:
        raise ValueError(f'{option}: {path} is empty')
    return text


def collect_inputs(path: str) -> list[str]:
    """Image files of ``path`` (a file, or the images directly inside a folder)."""
    if osp.isdir(path):
        return list_images(path)
    if osp.isfile(path):
        if extension(path) not in IMAGE_EXTENSIONS:
            raise ValueError(f'-i {path}: not an image file (extensions: {", ".join(IMAGE_EXTENSIONS)})')
        return [path]
    raise FileNotFoundError(f'-i: no such file or folder: {path}')


def load_display_image(path: str) -> np.ndarray:
    """Read an image for the VLM.

    Returns:
        ``(H, W, 3)`` float32 display-referred RGB in [0, 1]: LDR as stored; linear HDR tone-mapped with
        ``tonemap_preview(x, 'reinhard')`` (Reinhard 2002, key 0.18, sRGB encoding).
    """
    img, is_hdr = read_image(path)
    if not is_hdr:
        return img
    import torch

    from llmhdr_basicsr.utils.tonemap import tonemap_preview

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        return tonemap_preview(x, 'reinhard')[0].permute(1, 2, 0).numpy().astype(np.float32)


def stored_size(image_size: tuple[int, int], store_side: int) -> tuple[int, int]:
    """``(H, W)`` at which maps are stored: the size of the image sent, shrunk so the long side <= ``store_side``."""
    width, height = image_size
    s = min(1.0, store_side / max(width, height))
    return max(1, math.floor(height * s + 0.5)), max(1, math.floor(width * s + 0.5))


def perceive_one(
    path: str, client: VLMClient, cache: PerceptionCache, kind: str, soft_edge: float, store_side: int = 256
) -> Outcome:
    """Ask the VLM about one image and store its maps; never raises for a bad file or a failed request.

    The maps are rasterised directly at :func:`stored_size` (box maps are coarse: 256 px keep every box edge within
    a pixel of a 1024 px image while a cache read stays a few milliseconds); ``PerceptionCache.lookup`` resizes them.
    """
    try:
        img = load_display_image(path)
    except (OSError, ImageReadError, ValueError) as e:
        return Outcome(path, 'failed', 'unreadable', str(e))
    result = client.ask_detailed(img, kind)
    if result.report is None:
        return Outcome(path, 'failed', result.reason, result.message)
    report = result.report
    maps = report_to_maps(report, *stored_size(report.image_size, store_side), soft_edge=soft_edge)
    meta = {'kind': kind, 'dialect': client.dialect, 'soft_edge': soft_edge, 'source_size': list(img.shape[:2]),
            'attempts': result.attempts, 'seconds': round(result.seconds, 3)}  # fmt: skip
    try:
        cache.put(path, maps, report.to_dict(), meta)
    except OSError as e:
        return Outcome(path, 'failed', 'cache_write', f'cannot write the cache entry: {e}')
    return Outcome(path, 'done', n_regions=len(report.regions), n_dropped=report.n_dropped)


def _progress(total: int, disable: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but the CLI must not need it
        return None
    return tqdm(total=total, unit='img', desc='perceive', disable=disable or None, dynamic_ncols=True)


def _check_args(args: argparse.Namespace) -> None:
    for name in ('timeout', 'max_side', 'concurrency', 'max_tokens'):
        if getattr(args, name) <= 0:
            raise ValueError(f'--{name.replace("_", "-")} must be positive, got {getattr(args, name)}')
    if args.store_side < 16:
        raise ValueError(f'--store-side must be >= 16, got {args.store_side}')
    if args.retries < 0 or (args.limit is not None and args.limit < 0) or args.soft_edge < 0:
        raise ValueError('--retries, --limit and --soft-edge must be >= 0')


def build_client(args: argparse.Namespace) -> VLMClient:
    """The :class:`VLMClient` described by the command line (prompt files read here)."""
    prompts = {args.prompt: _read_text(args.prompt_file, '--prompt-file')} if args.prompt_file else None
    system = _read_text(args.system_prompt_file, '--system-prompt-file') if args.system_prompt_file else SYSTEM_PROMPT
    return VLMClient(
        args.base_url or DEFAULT_BASE_URLS[args.dialect], args.model,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, timeout=args.timeout, dialect=args.dialect,
        max_side=args.max_side, prompts=prompts, retries=args.retries, backoff=args.backoff, system_prompt=system,
        max_tokens=args.max_tokens,
    )  # fmt: skip


def plan(paths: list[str], cache: PerceptionCache) -> tuple[list[str], int, list[Outcome]]:
    """Split ``paths`` into images to ask for and cached ones (duplicates of one file content count as cached).

    Returns:
        ``(todo, n_cached, outcomes)``; ``outcomes`` holds the files that could not even be hashed.
    """
    todo, n_cached, seen, outcomes = [], 0, set(), []
    for path in paths:
        try:
            key = cache.key(path)
        except OSError as e:
            outcomes.append(Outcome(path, 'failed', 'unreadable', str(e)))
            continue
        if key in seen or cache.contains(path):
            n_cached += 1
        else:
            todo.append(path)
        seen.add(key)
    return todo, n_cached, outcomes


def ask_all(todo: list[str], client: VLMClient, cache: PerceptionCache, args: argparse.Namespace) -> tuple[list, bool]:
    """Run :func:`perceive_one` over ``todo`` in a thread pool with a progress bar.

    Returns:
        ``(outcomes, interrupted)``. On Ctrl-C, requests in flight finish (and are stored), queued ones are dropped.
    """
    outcomes, collected, interrupted = [], set(), False
    bar = _progress(len(todo), args.no_progress)
    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    futures = {
        pool.submit(perceive_one, p, client, cache, args.prompt, args.soft_edge, args.store_side): p for p in todo
    }

    def collect(fut) -> None:
        collected.add(fut)
        try:
            outcomes.append(fut.result())
        except Exception as e:  # a bug, not a server problem: keep going, report it with the file name
            logger.exception(f'llmhdr-perceive: unexpected error on {futures[fut]}')
            outcomes.append(Outcome(futures[fut], 'failed', 'error', f'{type(e).__name__}: {e}'))

    try:
        for fut in as_completed(futures):
            collect(fut)
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
        pool.shutdown(wait=True, cancel_futures=True)
        for fut in futures:
            if fut not in collected and fut.done() and not fut.cancelled():
                collect(fut)
    finally:
        pool.shutdown(wait=True)
        if bar is not None:
            bar.close()
    return outcomes, interrupted


def summarise(outcomes: list[Outcome], n_cached: int, n_limited: int, seconds: float, cache: PerceptionCache) -> str:
    """Print one ``FAILED <path>: <reason>: <message>`` line per failed image and return the summary line."""
    done = [o for o in outcomes if o.status == 'done']
    failed = [o for o in outcomes if o.status == 'failed']
    for o in sorted((o for o in failed if o.listed), key=lambda o: o.path):
        print(f'FAILED {o.path}: {o.reason}: {o.message}')
    reasons = ', '.join(f'{r}: {n}' for r, n in sorted(collections.Counter(o.reason for o in failed).items()))
    return (
        f'llmhdr-perceive: {len(done)} done, {n_cached} cached, {len(failed)} failed'
        + (f' ({reasons})' if reasons else '')
        + (f', {n_limited} left for later (--limit)' if n_limited else '')
        + f'; {sum(o.n_regions for o in done)} regions kept, {sum(o.n_dropped for o in done)} dropped'
        + f'; {seconds:.1f} s; cache {cache.cache_dir} (config {cache.config_hash[:8]})'
    )


def run(args: argparse.Namespace) -> int:
    """Run the command for parsed arguments; returns the exit status (module docstring)."""
    _check_args(args)
    client = build_client(args)
    paths = collect_inputs(args.input)
    if not paths:
        raise ValueError(f'-i {args.input}: no images found (extensions: {", ".join(IMAGE_EXTENSIONS)})')
    cache = PerceptionCache.from_client(args.cache, client, args.prompt)
    todo, n_cached, outcomes = plan(paths, cache)
    n_limited = max(0, len(todo) - args.limit) if args.limit is not None else 0
    todo = todo[: len(todo) - n_limited]

    t0 = time.monotonic()
    interrupted = False
    if todo:
        reachable, message = client.health()
        if reachable:
            asked, interrupted = ask_all(todo, client, cache, args)
            outcomes += asked
        else:
            logger.error(f'VLM server unreachable: {message}. Nothing was asked; start the server or fix --base-url.')
            outcomes += [Outcome(p, 'failed', 'unreachable', message, listed=False) for p in todo]
    print(summarise(outcomes, n_cached, n_limited, time.monotonic() - t0, cache) + ('; INTERRUPTED' * interrupted))
    if interrupted:
        return 130
    return 0 if any(o.status == 'done' for o in outcomes) or not outcomes else 1


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f'llmhdr-perceive: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
