"""CLIP contrastive loss L_con (method.md §6.4) and the CLIP embeddings of the generator guidance (§1, §2.3).

The paper [STATED]: a frozen CLIP image encoder E embeds the histogram-equalised LDR input h(x_i) and the
reconstruction; the positive pair is (h(x_i), its own reconstruction), the negatives are the other images of the
batch, and the cosine similarity of positive pairs is maximised. The formula is [INFERRED] InfoNCE over the batch:

    L_con = -(1/B) sum_i log( exp(cos(E(h(x_i)), E(T(y_i))) / tau) / sum_j exp(cos(E(h(x_i)), E(T(y_j))) / tau) )

with a fallback to ``1 - cos`` for a batch of one. The same encoder provides ``concat(E(x), E(y_t))`` for the
feedback generator's guidance input (``guidance_dim = 2 * embed_dim``): see :meth:`CLIPContrastiveLoss.embed` and
:meth:`CLIPContrastiveLoss.embed_ldr`.

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

import open_clip
import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

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


def register_open_clip_config(name: str, model_cfg: dict) -> None:
    """Register a custom open_clip model config under ``name`` (e.g. the tiny test config of offline-assets.md §4).

    Args:
        name: architecture name to register; must not be one of open_clip's built-in configs with a different body.
        model_cfg: ``{'embed_dim': int, 'vision_cfg': {...}, 'text_cfg': {...}}`` as in open_clip's JSON configs.

    Raises:
        ValueError: the config lacks a required key, or ``name`` is a built-in config with different content.
    """
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

    LDR-side embeddings are fixed per image and cached on the CPU in an LRU dict keyed by ``keys``; a key must
    identify the exact pixels (e.g. ``'<ldr path>|<crop y0,x0,h,w>|<flip/rot>'``): two different crops under one key
    would silently share an embedding. Without keys nothing is cached.

    Args:
        loss_weight: multiplier of the loss. Default: 1.0.
        arch: open_clip architecture name, e.g. ``'ViT-B-32'``. OpenAI's original weights were trained with
            QuickGELU: use ``'ViT-B-32-quickgelu'`` with them. Default: ``'ViT-B-32'``.
        checkpoint: local open_clip checkpoint (``.pt``/``.bin``/``.pth``/``.safetensors``, full CLIP or image tower
            only; OpenAI TorchScript ``.pt`` files work too). None: use ``$LLMHDR_CLIP_CHECKPOINT``.
        allow_missing: with no checkpoint configured, switch the loss off (``enabled = False``, one warning, forward
            returns 0) instead of raising FileNotFoundError. A configured path that does not exist still raises.
        random_weights: build the architecture with random weights and load nothing (tests, timing).
        model_cfg: custom open_clip config registered under ``arch`` (tests: the tiny config of
            offline-assets.md §4).
        temperature: InfoNCE temperature tau (CLIP's initial 0.07; the paper's value is unknown). Default: 0.07.
        image_size: encoder input size; None = the architecture's (224 for ViT-B-32). Another size resizes the
            checkpoint's position embeddings (open_clip's bicubic resize).
        cache_size: capacity of the LDR embedding cache (0 = no caching). Default: 10000 (about 20 MB at D = 512).

    Attributes:
        enabled (bool): False when the loss switched itself off; the model checks it.
        embed_dim (int): CLIP embedding size D (512 for ViT-B-32); the guidance input is ``2 * embed_dim``.
        cache (LRUCache): the LDR embedding cache; ``cache.hits`` / ``cache.misses`` count look-ups.
        encoder_calls (int): number of image-tower forward passes so far; ``images_encoded``: images through it.
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
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'CLIPContrastiveLoss: temperature must be > 0, got {temperature}')
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
            self.checkpoint = resolve_weights(
                checkpoint,
                CLIP_ENV_VAR,
                f'CLIP checkpoint for {arch}',
                f'set train.clip_opt.checkpoint or {CLIP_ENV_VAR} to a local open_clip .pt/.bin/.safetensors file '
                f"(e.g. the 'openai' ViT-B-32 weights, with arch 'ViT-B-32-quickgelu'), or set "
                f'train.clip_opt.allow_missing: true to train without L_con',
                allow_missing=allow_missing,
            )
            if self.checkpoint is None:
                self.enabled = False
                warn_disabled(
                    'CLIPContrastiveLoss (L_con)',
                    f'no CLIP checkpoint configured; set train.clip_opt.checkpoint or {CLIP_ENV_VAR} to enable it',
                )
                return

        self.encoder = self._build_image_tower(arch, image_size)
        if self.checkpoint is not None:
            self._load_checkpoint(self.checkpoint)
        freeze_module(self.encoder)
        pre = getattr(self.encoder, 'preprocess_cfg', None) or {}
        size = self.encoder.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self.embed_dim = int(self.encoder.output_dim)
        self.register_buffer('mean', torch.tensor(pre.get('mean', OPENAI_DATASET_MEAN)).view(1, 3, 1, 1), False)
        self.register_buffer('std', torch.tensor(pre.get('std', OPENAI_DATASET_STD)).view(1, 3, 1, 1), False)

    @staticmethod
    def _build_image_tower(arch: str, image_size: int | None) -> nn.Module:
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
        n = ldr.shape[0]
        if keys is None:
            with torch.no_grad():
                return self.embed(hist_equalize(ldr))
        keys = check_cache_keys(keys, n, type(self).__name__)
        rows: list[torch.Tensor | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, row in enumerate(rows) if row is None]
        if todo:
            with torch.no_grad():
                fresh = self.embed(hist_equalize(ldr[todo]))
            for j, i in enumerate(todo):
                rows[i] = fresh[j]
                self.cache.put(keys[i], fresh[j].detach().cpu())
        return torch.stack([row.to(ldr.device) for row in rows])

    def forward(
        self,
        output: torch.Tensor,
        ldr: torch.Tensor,
        keys: Sequence[str] | None = None,
        output_embed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """InfoNCE over the batch (``1 - cos`` for a batch of one).

        Args:
            output: ``(N, 3, H, W)`` reconstruction, display-referred in [0, 1]: the tone-mapped (mu-law) HDR output
                of G_Y, or the LDR output of G_X. Gradients flow to it.
            ldr: ``(N, 3, H, W)`` LDR input x, display-referred (sRGB) in [0, 1]; equalised here (OpenCV
                ``equalizeHist`` on the luma, method.md §6.4), never differentiated.
            keys: per-image cache keys of ``ldr`` (see the class docstring), or None.
            output_embed: ``embed(output)`` when the caller already has it (the guidance path), saving one pass.

        Returns:
            Scalar tensor, ``loss_weight * L_con`` (0 when disabled).
        """
        if not self.enabled:
            return output.new_zeros(())
        if output.dim() != 4 or output.shape[:2] != ldr.shape[:2] or output.shape[1] != 3:
            raise ValueError(
                f'CLIPContrastiveLoss: need (N, 3, H, W) output and ldr, got {tuple(output.shape)}, {tuple(ldr.shape)}'
            )
        e_ldr = self.embed_ldr(ldr, keys)
        e_out = self.embed(output) if output_embed is None else output_embed
        if output.shape[0] == 1:
            loss = 1.0 - (e_ldr * e_out).sum(dim=-1).mean()
        else:  # row i: LDR i against every reconstruction j; the positive is on the diagonal
            logits = e_ldr @ e_out.t() / self.temperature
            loss = F.cross_entropy(logits, torch.arange(output.shape[0], device=logits.device))
        return self.loss_weight * loss


class _DropRandomInitNotice(logging.Filter):
    """Hide open_clip's root-logger warning 'No pretrained weights loaded': the weights are loaded right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'No pretrained weights loaded' not in record.getMessage()
