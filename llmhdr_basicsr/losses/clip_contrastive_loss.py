"""CLIP contrastive loss L_con and the CLIP embeddings of the generator guidance.

The paper [STATED]: a frozen CLIP image encoder E embeds the histogram-equalised LDR input h(x_i) and the
reconstruction; the positive pair is (h(x_i), its own reconstruction), the negatives are the other images of the
batch, and the cosine similarity of positive pairs is maximised. The formula is [INFERRED] InfoNCE over the batch:

    L_con = -(1/B) sum_i log( exp(cos(E(h(x_i)), E(T(y_i))) / tau) / sum_j exp(cos(E(h(x_i)), E(T(y_j))) / tau) )

with a fallback to ``1 - cos`` for a batch of one (see :func:`info_nce`). The same encoder provides
``concat(E(x), E(y_t))`` for the feedback generator's guidance input (``guidance_dim = 2 * embed_dim``): see
:meth:`CLIPContrastiveLoss.embed` and :meth:`CLIPContrastiveLoss.embed_ldr`.

Which LDR is embedded (``ldr_view``): the paper's positive pair is the equalised LDR input and its
reconstruction. Training crops are random, so an embedding of the LDR *crop* is new at every step and a cache of it
never hits. With ``ldr_view: image`` (the default whenever the batch carries the whole-image view of
:mod:`llmhdr_basicsr.utils.ldr_view`, i.e. ``UnpairedLDRHDRDataset`` with ``global_size``) the LDR side is
``E(h(x_global))``, the equalised **whole** LDR image, cached under its image digest: the positive pair is (whole
equalised LDR image, tone-mapped reconstruction of a crop of that image), the negatives are the reconstructions of
the other images of the batch, and once every image has been seen (after the first epoch) no LDR is encoded any
more: each step encodes only the reconstructions. ``ldr_view: crop`` keeps the literal per-crop pairing (cached by
the crop digest ``ldr_key``; hits only when the very same crop recurs).

Two crops of the same image in one batch share their LDR embedding, so neither is a negative of the other: whenever
the batch names its images (``ldr_image_key``, in both modes) such pairs are masked out of the InfoNCE denominator,
and a sample whose batch holds no other image falls back to ``1 - cos`` like a batch of one.

Weights: open_clip weights from a local file only (``checkpoint`` option > ``LLMHDR_CLIP_CHECKPOINT`` > none);
nothing is downloaded. Only the image tower is kept.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from llmhdr_basicsr.utils.ldr_view import LDR_VIEWS, LDRGlobalView, resolve_ldr_view
from llmhdr_basicsr.utils.tonemap import hist_equalize
from llmhdr_basicsr.utils.weights import (
    LRUCache,
    check_cache_keys,
    freeze_module,
    load_into,
    load_state_dict_file,
    resolve_weights,
    warn_disabled,
)

CLIP_ENV_VAR = 'LLMHDR_CLIP_CHECKPOINT'
#: CLIP's image normalisation (``open_clip.constants.OPENAI_DATASET_MEAN`` / ``_STD``), used when a model config has
#: no ``preprocess_cfg``. open_clip itself (with timm, about 1 s) is imported only when a loss is built.
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


def info_nce(
    e_ldr: torch.Tensor, e_out: torch.Tensor, temperature: float, same_image: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE of L_con with same-image pairs masked out of the denominator.

    Row ``i`` scores LDR ``i`` against every reconstruction ``j``: ``-log softmax_j(cos(e_ldr_i, e_out_j) / tau)[i]``,
    where columns ``j != i`` with ``same_image[i, j]`` (another crop of the same image: not a negative) are left out.
    A row with no negative left (a batch of one, or only crops of one image) uses ``1 - cos(e_ldr_i, e_out_i)``
    instead. The result is the mean over rows.

    Args:
        e_ldr: ``(N, D)`` unit LDR-side embeddings (no grad needed).
        e_out: ``(N, D)`` unit reconstruction embeddings (differentiable).
        temperature: tau > 0.
        same_image: ``(N, N)`` bool, True where two samples come from the same image; None: all images differ.

    Returns:
        Scalar tensor.
    """
    n = e_out.shape[0]
    cos_pos = (e_ldr * e_out).sum(dim=-1)
    if n == 1:
        return 1.0 - cos_pos.mean()
    logits = e_ldr @ e_out.t() / temperature
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    has_negative = torch.ones(n, dtype=torch.bool, device=logits.device)
    if same_image is not None:
        masked = same_image.to(logits.device) & ~eye
        logits = logits.masked_fill(masked, float('-inf'))  # exp(-inf) = 0: not in the denominator
        has_negative = (~(masked | eye)).any(dim=1)
    per_row = F.cross_entropy(logits, torch.arange(n, device=logits.device), reduction='none')
    return torch.where(has_negative, per_row, 1.0 - cos_pos).mean()


def register_open_clip_config(name: str, model_cfg: dict) -> None:
    """Register a custom open_clip model config under ``name`` (e.g. a tiny test config with random weights).

    Args:
        name: architecture name to register; must not be one of open_clip's built-in configs with a different body.
        model_cfg: ``{'embed_dim': int, 'vision_cfg': {...}, 'text_cfg': {...}}`` as in open_clip's JSON configs.

    Raises:
        ValueError: the config lacks a required key, or ``name`` is a built-in config with different content.
    """
    import open_clip

    missing = [k for k in ('embed_dim', 'vision_cfg', 'text_cfg') if k not in model_cfg]
    if missing:
        raise ValueError(
            f'clip model_cfg for {name!r} lacks {missing}; open_clip needs embed_dim, vision_cfg, text_cfg'
        )
    existing = open_clip.get_model_config(name)
    if existing is not None:
        if json.loads(json.dumps(existing)) != json.loads(json.dumps(model_cfg)):
            raise ValueError(
                f'clip model_cfg would overwrite the open_clip config {name!r} with a different one; '
                f'give the custom config another arch name'
            )
        return
    with tempfile.TemporaryDirectory() as tmp:  # open_clip's public hook reads JSON files; the config stays registered
        path = Path(tmp) / f'{name}.json'
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)


@LOSS_REGISTRY.register()
class CLIPContrastiveLoss(nn.Module):
    """InfoNCE between CLIP embeddings of the equalised LDR inputs and of the reconstructions (L_con, §6.4).

    The CLIP image tower is frozen (eval mode, ``requires_grad=False``, stays in eval mode when the owner calls
    ``.train()``); gradients flow through it to the reconstruction only. Inputs are resized (bilinear, antialiased,
    to the model's square input size; the aspect ratio is not kept, so every pixel receives gradient) and normalised
    with the model's mean/std inside the loss.

    LDR-side embeddings are fixed per image and cached on the CPU in an LRU dict. With the whole-image view (module
    docstring, ``ldr_view``) the key is the image digest plus the view size (:attr:`LDRGlobalView.cache_keys`), so
    every crop of an image hits the same entry. In ``crop`` mode the key is the caller's ``keys``; it must identify
    the exact pixels (the dataset's ``ldr_key`` digest, or ``'<ldr path>|<crop y0,x0,h,w>|<flip/rot>'``): two
    different crops under one key would silently share an embedding. Without keys nothing is cached.

    Args:
        loss_weight: multiplier of the loss. Default: 1.0.
        arch: open_clip architecture name, e.g. ``'ViT-B-32'``. OpenAI's original weights were trained with
            QuickGELU: use ``'ViT-B-32-quickgelu'`` with them. Default: ``'ViT-B-32'``.
        checkpoint: local open_clip checkpoint (``.pt``/``.bin``/``.pth``/``.safetensors``, full CLIP or image tower
            only; OpenAI TorchScript ``.pt`` files work too). None: use ``$LLMHDR_CLIP_CHECKPOINT``.
        allow_missing: with no checkpoint configured, or one that does not exist or cannot be loaded, switch the
            loss off (``enabled = False``, one warning naming the file, forward returns 0) instead of raising.
        random_weights: build the architecture with random weights and load nothing (tests, timing).
        model_cfg: custom open_clip config registered under ``arch`` (tests: the tiny config of
            no weights are downloaded).
        temperature: InfoNCE temperature tau (CLIP's initial 0.07; the paper's value is unknown). Default: 0.07.
        image_size: encoder input size; None = the architecture's (224 for ViT-B-32). Another size resizes the
            checkpoint's position embeddings (open_clip's bicubic resize).
        cache_size: capacity of the LDR embedding cache (0 = no caching). Default: 10000 (about 20 MB at D = 512).
        ldr_view: which LDR is embedded: ``'image'`` (the whole equalised LDR image, cached per image; the batch must
            carry the whole-image view), ``'crop'`` (the equalised LDR crop), ``'auto'`` (``'image'`` when the batch
            carries the view, else ``'crop'``). Default: ``'auto'``.

    Attributes:
        enabled (bool): False when the loss switched itself off; the model checks it.
        embed_dim (int): CLIP embedding size D (512 for ViT-B-32); the guidance input is ``2 * embed_dim``.
        cache (LRUCache): the LDR embedding cache; ``cache.hits`` / ``cache.misses`` count look-ups.
        encoder_calls (int): number of image-tower forward passes so far; ``images_encoded``: images through it.
        last_ldr_view (str | None): ``'image'`` or ``'crop'``, the LDR view the last forward call used.
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        arch: str = 'ViT-B-32',
        checkpoint: str | None = None,
        allow_missing: bool = False,
        random_weights: bool = False,
        model_cfg: dict | None = None,
        temperature: float = 0.07,
        image_size: int | None = None,
        cache_size: int = 10000,
        ldr_view: str = 'auto',
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'CLIPContrastiveLoss: temperature must be > 0, got {temperature}')
        if ldr_view not in LDR_VIEWS:
            raise ValueError(f'CLIPContrastiveLoss: ldr_view (train.clip_opt.ldr_view) must be one of {LDR_VIEWS}, '
                             f'got {ldr_view!r}')  # fmt: skip
        self.ldr_view = ldr_view
        self.last_ldr_view: str | None = None
        self.loss_weight = float(loss_weight)
        self.arch = arch
        self.temperature = float(temperature)
        self.cache = LRUCache(cache_size)
        self.encoder_calls = 0
        self.images_encoded = 0
        self.encoder: nn.Module | None = None
        self.embed_dim = 0
        self.enabled = True
        self.checkpoint = None

        if model_cfg is not None:
            register_open_clip_config(arch, dict(model_cfg))
        if not random_weights:
            try:
                self.checkpoint = resolve_weights(
                    checkpoint,
                    CLIP_ENV_VAR,
                    f'CLIP checkpoint for {arch}',
                    f'set train.clip_opt.checkpoint or {CLIP_ENV_VAR} to a local open_clip .pt/.bin/.safetensors '
                    f"file (e.g. the 'openai' ViT-B-32 weights, with arch 'ViT-B-32-quickgelu'), or set "
                    f'train.clip_opt.allow_missing: true to train without L_con',
                    allow_missing=allow_missing,
                )
            except FileNotFoundError as err:  # a configured path that does not exist
                if not allow_missing:
                    raise
                self._disable(f'{err} (allow_missing: true)')
                return
            if self.checkpoint is None:
                self._disable(f'no CLIP checkpoint configured; set train.clip_opt.checkpoint or {CLIP_ENV_VAR} to '
                              'enable it')  # fmt: skip
                return

        self.encoder = self._build_image_tower(arch, image_size)
        if self.checkpoint is not None:
            try:
                self._load_checkpoint(self.checkpoint)
            except ValueError as err:  # not a checkpoint, or one of another architecture
                if not allow_missing:
                    raise
                self.encoder = None
                self._disable(f'{err} (allow_missing: true)')
                return
        freeze_module(self.encoder)
        pre = getattr(self.encoder, 'preprocess_cfg', None) or {}
        size = self.encoder.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self.embed_dim = int(self.encoder.output_dim)
        self.register_buffer('mean', torch.tensor(pre.get('mean', OPENAI_DATASET_MEAN)).view(1, 3, 1, 1), False)
        self.register_buffer('std', torch.tensor(pre.get('std', OPENAI_DATASET_STD)).view(1, 3, 1, 1), False)

    def _disable(self, reason: str) -> None:
        """Switch the loss off with its one warning (``allow_missing``)."""
        self.enabled = False
        self.checkpoint = None
        warn_disabled('CLIPContrastiveLoss (L_con)', reason)

    @staticmethod
    def _build_image_tower(arch: str, image_size: int | None) -> nn.Module:
        import open_clip

        if open_clip.get_model_config(arch) is None:
            raise ValueError(
                f'CLIPContrastiveLoss: unknown open_clip architecture {arch!r} (train.clip_opt.arch); '
                f'e.g. ViT-B-32, ViT-B-32-quickgelu, ViT-B-16, RN50, or pass model_cfg'
            )
        notice_filter = _DropRandomInitNotice()
        logging.getLogger().addFilter(notice_filter)
        try:
            model = open_clip.create_model(arch, pretrained=None, force_image_size=image_size)
        finally:
            logging.getLogger().removeFilter(notice_filter)
        return model.visual  # the text tower is never used: drop it

    def _load_checkpoint(self, path: str) -> None:
        state = load_state_dict_file(path)
        if any(k.startswith('visual.') for k in state):  # full CLIP checkpoint: keep the image tower
            state = {k: v for k, v in state.items() if k.startswith('visual.')}
        else:  # image tower saved on its own
            state = {f'visual.{k}': v for k, v in state.items()}
        try:  # adapt the position-embedding grid when image_size differs from the checkpoint's
            from open_clip.model import resize_pos_embed

            resize_pos_embed(state, SimpleNamespace(visual=self.encoder))
        except Exception:  # a checkpoint of another architecture: load_into below reports it clearly
            pass
        state = {k[len('visual.') :]: v for k, v in state.items()}
        load_into(self.encoder, state, path, f'open_clip architecture {self.arch!r} (image tower)')

    def train(self, mode: bool = True) -> CLIPContrastiveLoss:
        """Switch the module's mode; the frozen CLIP tower always stays in eval mode."""
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings, L2-normalised.

        Args:
            images: ``(N, 3, H, W)`` float RGB, display-referred, in [0, 1] (e.g. mu-law HDR or an LDR image). The
                graph is kept when ``images`` requires grad (gradients reach ``images``, never the encoder).

        Returns:
            ``(N, D)`` float32 unit vectors, ``D = embed_dim``.
        """
        if self.encoder is None:
            raise RuntimeError('CLIPContrastiveLoss is disabled (no CLIP checkpoint); check .enabled first')
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'CLIPContrastiveLoss.embed expects (N, 3, H, W) images, got {tuple(images.shape)}')
        x = images.to(self.mean.dtype)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode='bilinear', align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        self.encoder_calls += 1
        self.images_encoded += x.shape[0]
        return F.normalize(self.encoder(x).float(), dim=-1)

    def embed_ldr(self, ldr: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        """Cached, gradient-free CLIP embeddings of the histogram-equalised LDR inputs ``E(h(x))``.

        Args:
            ldr: ``(N, 3, H, W)`` LDR RGB, display-referred (sRGB), in [0, 1].
            keys: one string per image identifying its exact pixels (path + crop box + flips); None: no caching.

        Returns:
            ``(N, D)`` float32 unit vectors on ``ldr``'s device, without grad.
        """
        if keys is None:
            with torch.no_grad():
                return self.embed(hist_equalize(ldr))
        return self._cached_ldr_embed(ldr, check_cache_keys(keys, ldr.shape[0], type(self).__name__), ldr.device)

    def embed_ldr_view(self, view: LDRGlobalView, device: torch.device | str | None = None) -> torch.Tensor:
        """Cached, gradient-free embeddings ``E(h(x_global))`` of the whole LDR images of a batch (``ldr_view: image``).

        Args:
            view: the batch's whole-image LDR view (images display-referred sRGB in [0, 1], on any device); only the
                images missing from the cache are equalised and moved to the encoder's device.
            device: where the result goes (default: the encoder's device).

        Returns:
            ``(N, D)`` float32 unit vectors, without grad; equal rows for samples of the same image.
        """
        return self._cached_ldr_embed(view.images, view.cache_keys, device or self.mean.device)

    def _cached_ldr_embed(self, ldr: torch.Tensor, keys: list[str], device) -> torch.Tensor:
        """Embeddings of ``hist_equalize(ldr)`` rows by key: one cache look-up per distinct key (samples sharing a key,
        e.g. two crops of one image, are looked up and encoded once); the misses are encoded together and stored."""
        found = {key: self.cache.get(key) for key in dict.fromkeys(keys)}
        todo = [key for key, emb in found.items() if emb is None]
        if todo:
            rows = [keys.index(key) for key in todo]
            with torch.no_grad():
                fresh = self.embed(hist_equalize(ldr[rows]).to(self.mean.device))  # equalised on the CPU anyway
            for key, emb in zip(todo, fresh):
                found[key] = emb
                self.cache.put(key, emb.detach().cpu())
        return torch.stack([found[key].to(device) for key in keys])

    def forward(
        self,
        output: torch.Tensor,
        ldr: torch.Tensor,
        keys: Sequence[str] | None = None,
        output_embed: torch.Tensor | None = None,
        global_view: LDRGlobalView | None = None,
    ) -> torch.Tensor:
        """InfoNCE over the batch (``1 - cos`` for a batch of one), see :func:`info_nce`.

        Args:
            output: ``(N, 3, H, W)`` reconstruction, display-referred in [0, 1]: the tone-mapped (mu-law) HDR output
                of G_Y, or the LDR output of G_X. Gradients flow to it.
            ldr: ``(N, 3, H, W)`` LDR input x, display-referred (sRGB) in [0, 1]; equalised here (OpenCV
                ``equalizeHist`` on the luma), never differentiated.
            keys: per-image cache keys of ``ldr`` (see the class docstring), or None; used in ``crop`` mode.
            output_embed: ``embed(output)`` when the caller already has it (the guidance path), saving one pass.
            global_view: the whole-image LDR view of the batch (:meth:`LDRGlobalView.from_batch`), or None. Decides
                the mode with ``ldr_view`` and, in both modes, which samples share an image (not negatives).

        Returns:
            Scalar tensor, ``loss_weight * L_con`` (0 when disabled).
        """
        if not self.enabled:
            return output.new_zeros(())
        if output.dim() != 4 or output.shape[:2] != ldr.shape[:2] or output.shape[1] != 3:
            raise ValueError(
                f'CLIPContrastiveLoss: need (N, 3, H, W) output and ldr, got {tuple(output.shape)}, {tuple(ldr.shape)}'
            )
        n = output.shape[0]
        if resolve_ldr_view(self.ldr_view, global_view, n, type(self).__name__, 'train.clip_opt.ldr_view'):
            self.last_ldr_view = 'image'
            e_ldr = self.embed_ldr_view(global_view, output.device)  # whole equalised LDR image, cached per image
        else:
            self.last_ldr_view = 'crop'
            e_ldr = self.embed_ldr(ldr, keys)
        e_out = self.embed(output) if output_embed is None else output_embed
        same = None if global_view is None else global_view.same_image(e_out.device)
        return self.loss_weight * info_nce(e_ldr, e_out, self.temperature, same)


class _DropRandomInitNotice(logging.Filter):
    """Hide open_clip's root-logger warning 'No pretrained weights loaded': the weights are loaded right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'No pretrained weights loaded' not in record.getMessage()
