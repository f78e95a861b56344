"""A real OpenAI-compatible VLM server for the tests: Hugging Face ``transformers serve`` on CPU, serving tiny LLaVA
models with random weights that are built offline in seconds.

Pieces (used by ``test_vlm_real_server.py``):

- :func:`serving_python`: the interpreter of a virtual environment of its own with ``torch`` (CPU build) and
  ``transformers[serving]`` (:data:`REQUIREMENTS`). It is separate from the project's environment: torchvision must
  not be importable there (the CUDA torchvision wheels of the project's environment break the image processors of
  ``transformers``). Built once with ``python -m venv`` + ``pip`` (about a minute) and reused; the location is
  ``$LLMHDR_VLM_SERVE_VENV``, else ``$XDG_CACHE_HOME/llmhdr_basicsr/vlm-serve-venv`` (``~/.cache/...``). Concurrent
  builders (pytest-xdist workers, two test runs) serialise on a lock file beside it; a build goes into a temporary
  folder that is renamed into place when complete, and a venv whose marker names other requirements is rebuilt.
  When it cannot be built (no package index, no wheel) :class:`ServingUnavailable` says why: the tests skip.
- :func:`build_tiny_models`: runs :data:`BUILD_SCRIPT` inside that venv and saves two models with ``save_pretrained``:
  ``random`` (all weights random: its replies are byte soup, never JSON) and ``scripted`` (random weights but for two
  control channels of the text model's residual stream, set so that greedy decoding answers :data:`SCRIPTED_REPLY`
  and then the end-of-sequence token, whatever the prompt and the image).
- :class:`ServeProcess`: ``transformers serve <model dir>`` on a free port of 127.0.0.1 as a subprocess (its own
  process group), waited for with a timeout, stopped with SIGTERM then SIGKILL.

The models: byte-level BPE tokenizer trained with ``tokenizers`` on a few sentences (special tokens ``<unk> <s> </s>
<pad> <image>``), a 2-layer CLIP vision tower (32 px images, 8 px patches: :data:`IMAGE_TOKENS` image tokens) and a
2-layer Llama text model of width 32 (``LlavaConfig``, ``LlavaForConditionalGeneration``); ``LlavaProcessor`` with a
CLIP image processor and a chat template that puts ``<image>`` where the image part of a message is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

#: What the serving venv holds. ``torch`` is the CPU build (the local wheel); ``transformers`` is pinned because the
#: tests pin the server's behaviour (its CLI, its error codes).
REQUIREMENTS = ('torch==2.13.0+cpu', 'transformers[serving]==5.25.0', 'pillow', 'jinja2')
VENV_ENV = 'LLMHDR_VLM_SERVE_VENV'
MARKER = 'llmhdr-serve-venv.json'
PIP_TIMEOUT_S = 1200

#: The scripted model's whole answer (one added token of its tokenizer, then end of sequence).
SCRIPTED_REPLY = (
    '{"artifacts": true, "regions": [{"label": "overexposed", "box": [0.0, 0.0, 1.0, 0.5], "confidence": 0.9}]}'
)
IMAGE_SIZE, PATCH_SIZE = 32, 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 'default' feature selection drops CLS


class ServingUnavailable(RuntimeError):
    """The serving venv cannot be built here (no index or no wheel for :data:`REQUIREMENTS`)."""


# ------------------------------------------------------------------------------------------------ the venv
def venv_dir() -> Path:
    """Where the serving venv lives (module docstring)."""
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV]).expanduser()
    cache = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache')
    return cache / 'llmhdr_basicsr' / 'vlm-serve-venv'


def _venv_python(root: Path) -> Path:
    return root / 'bin' / 'python'


def _is_complete(root: Path) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get('requirements') == list(REQUIREMENTS) and _venv_python(root).exists()


def _tail(text: str, lines: int = 15) -> str:
    return '\n'.join(text.strip().splitlines()[-lines:])


def serving_python() -> Path:
    """The python of the serving venv, built on first use (module docstring).

    Raises:
        ServingUnavailable: ``python -m venv`` or ``pip install`` failed (the message has the tail of their output).
        AssertionError: the venv was built but can import torchvision, or cannot import ``transformers``.
    """
    root = venv_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / (root.name + '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not _is_complete(root):
            _build_venv(root)
    python = _venv_python(root)
    check = subprocess.run(
        [str(python), '-c', 'import importlib.util as u; '
         'print(u.find_spec("torchvision") is None, *(u.find_spec(m) is not None for m in ("torch", "transformers")))'],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert check.returncode == 0, f'serving venv {root} is broken:\n{_tail(check.stderr)}'
    assert check.stdout.split() == ['True'] * 3, f'{root}: want torch, transformers and no torchvision: {check.stdout}'
    return python


def _build_venv(root: Path) -> None:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=root.name + '.build-', dir=root.parent))
    try:
        steps = (
            [sys.executable, '-m', 'venv', str(tmp)],
            [str(_venv_python(tmp)), '-m', 'pip', 'install', '--no-input', '--progress-bar', 'off', *REQUIREMENTS],
        )
        for cmd in steps:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                raise ServingUnavailable(f'{" ".join(cmd[:4])} ... took over {PIP_TIMEOUT_S} s') from None
            if proc.returncode != 0:
                raise ServingUnavailable(
                    f'cannot build the serving venv ({" ".join(cmd[2:5])} ... exited {proc.returncode}):\n'
                    + _tail(proc.stdout + proc.stderr)
                )
        marker = {'requirements': list(REQUIREMENTS), 'build_seconds': round(time.monotonic() - started, 1)}
        (tmp / MARKER).write_text(json.dumps(marker))
        if root.exists():  # an incomplete or outdated venv
            shutil.rmtree(root)
        tmp.rename(root)  # the venv runs as `bin/python -m ...` only, so its folder may move
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the models
#: Runs in the serving venv: ``python - OUT_DIR REPLY IMAGE_SIZE PATCH_SIZE``; prints ``{'models': {name: dir},
#: 'versions': {...}}`` as JSON.
BUILD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, PreTrainedTokenizerFast)

    out, reply, image_size, patch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    SPECIAL = ['<unk>', '<s>', '</s>', '<pad>', '<image>']
    CORPUS = ['The image shows artifacts, over-exposed and under-exposed regions.',
              'Reply with JSON only: {"artifacts": false, "regions": []}.',
              'Box coordinates are fractions of the image width and height between 0 and 1.',
              'USER: describe the image. ASSISTANT: a bright sky over a dark street.'] * 8
    TEMPLATE = (
        "{% for m in messages %}{{ m['role'].upper() }}: "
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}\\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


    def tokenizer(extra):
        bpe = Tokenizer(models.BPE(unk_token='<unk>'))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(
            vocab_size=320, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token='<unk>', bos_token='<s>', eos_token='</s>',
                                      pad_token='<pad>', extra_special_tokens={'image_token': '<image>'})
        tok.add_tokens(extra)
        return tok


    def build(name, scripted):
        tok = tokenizer([reply] if scripted else [])
        image_proc = getattr(transformers, 'CLIPImageProcessorPil', transformers.CLIPImageProcessor)(
            size={'shortest_edge': image_size}, crop_size={'height': image_size, 'width': image_size})
        processor = LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy='default', chat_template=TEMPLATE,
                                   num_additional_image_tokens=1)
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=image_size, patch_size=patch, projection_dim=32)
        text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                           tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
        config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-1,
                             image_token_index=tok.convert_tokens_to_ids('<image>'),
                             vision_feature_select_strategy='default')
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(config).eval()
        if scripted:
            script(model, tok.convert_tokens_to_ids(reply), tok.eos_token_id)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(out / name)
        processor.save_pretrained(out / name)
        return processor, model


    @torch.no_grad()
    def script(model, answer, eos, c=1.0, a=10.0):
        # Residual channel 0 is the constant c at every position, channel 1 is c where the input token is the answer
        # token: no layer writes them (zero rows of o_proj / down_proj), the projector writes (c, 0) for image
        # features. The head then ranks the answer token first after the prompt (channel 1 off) and end of sequence
        # first after the answer (channel 1 on), by a margin of ~a sqrt(32) over the random rest.
        lm = model.model.language_model
        emb = lm.embed_tokens.weight
        emb[:, 0], emb[:, 1] = c, 0.0
        emb[answer, 1] = c
        proj = model.model.multi_modal_projector.linear_2
        proj.weight[:2] = 0.0
        proj.bias[0], proj.bias[1] = c, 0.0
        for layer in lm.layers:
            layer.self_attn.o_proj.weight[:2] = 0.0
            layer.mlp.down_proj.weight[:2] = 0.0
        head = model.lm_head.weight
        assert head.data_ptr() != emb.data_ptr(), 'lm_head is tied to the embeddings'
        head[:, :2] = 0.0
        head[answer, 0], head[answer, 1] = a, -2.0 * a
        head[eos, 1] = a


    built = {}
    for name, scripted in (('random', False), ('scripted', True)):
        processor, model = build(name, scripted)
        if scripted:  # the script holds with an image in the prompt
            from PIL import Image
            msgs = [{'role': 'user', 'content': [{'type': 'text', 'text': 'Any artifacts?'},
                                                 {'type': 'image', 'image': Image.new('RGB', (40, 24), 'red')}]}]
            inputs = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors='pt')
            ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs['input_ids'].shape[1]:]
            text = processor.tokenizer.decode(ids, skip_special_tokens=True)
            assert text == reply, f'scripted model answered {text!r}'
        built[name] = str(out / name)
    import importlib.util
    versions = {'torch': torch.__version__, 'transformers': transformers.__version__,
                'torchvision': importlib.util.find_spec('torchvision') is not None, 'cuda': torch.cuda.is_available()}
    print(json.dumps({'models': built, 'versions': versions}))
    """
)


def build_tiny_models(python: Path, out: Path) -> dict:
    """Build the ``random`` and ``scripted`` models into ``out`` with the serving venv's ``python``.

    Returns:
        ``{'models': {'random': dir, 'scripted': dir}, 'versions': {'torch': str, 'transformers': str,
        'torchvision': importable, 'cuda': available}}``.
    """
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(python), '-', str(out), SCRIPTED_REPLY, str(IMAGE_SIZE), str(PATCH_SIZE)],
        input=BUILD_SCRIPT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, **_server_env()},
    )  # fmt: skip
    assert proc.returncode == 0, f'building the tiny models failed:\n{_tail(proc.stdout + proc.stderr, 25)}'
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ the server
def _server_env() -> dict:
    return {'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'HF_HUB_DISABLE_TELEMETRY': '1',
            'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false', 'PYTHONUNBUFFERED': '1'}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ServeProcess:
    """``transformers serve MODEL_DIR --host 127.0.0.1 --port PORT --device cpu`` as a subprocess.

    The server is pinned to ``model_dir``: a request's ``model`` must be exactly that string, or absent.

    Args:
        python: the serving venv's interpreter.
        model_dir: the model to serve (also the model name requests use).
        log_path: where the server's output goes.
    """

    def __init__(self, python: Path, model_dir: str, log_path: Path):
        self.python, self.model, self.log_path = python, str(model_dir), log_path
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        cmd = [str(self.python), '-m', 'transformers.cli.transformers', 'serve', self.model, '--host', '127.0.0.1',
               '--port', str(self.port), '--device', 'cpu', '--log-level', 'warning']  # fmt: skip
        with open(self.log_path, 'wb') as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, **_server_env()},
            )  # fmt: skip
        return self

    def log_tail(self, lines: int = 25) -> str:
        try:
            return _tail(self.log_path.read_text(errors='replace'), lines)
        except OSError:
            return ''

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait until ``GET /health`` answers 200 and ``/v1/models`` lists the model as loaded; returns the seconds
        waited. Fails (AssertionError with the server's log) when the process exits or the time runs out."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            code = self.proc.poll()
            assert code is None, f'transformers serve exited with {code}:\n{self.log_tail()}'
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(self.url + '/v1/models', timeout=5) as resp:
                    models = json.loads(resp.read())['data']
                if any(m['id'] == self.model and m.get('status', {}).get('value') == 'loaded' for m in models):
                    return time.monotonic() - t0
            time.sleep(0.25)
        raise AssertionError(f'transformers serve not ready after {timeout:g} s:\n{self.log_tail()}')

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the server's process group (it has a model process of its own), SIGKILL after ``grace``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):  # a model process that outlived its parent
            os.killpg(pgid, signal.SIGKILL)


def post_json(url: str, body: dict, timeout: float = 60.0) -> tuple[int, str, bytes, float]:
    """POST ``body`` as JSON; returns ``(status, content type, body bytes, seconds)`` also for HTTP errors."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={'Content-Type': 'application/json'}, method='POST'
    )
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get('Content-Type', ''), resp.read(), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get('Content-Type', ''), e.read(), time.monotonic() - t0
