"""The plugin proper: applies the run-time fixes for BasicSR and registers every class in BasicSR's registries.

This is the module of the ``basicsr.plugins`` entry point, so the start-up hook imports it right after ``basicsr``
has loaded (``import basicsr`` alone is enough to register everything). ``import llmhdr_basicsr.plugin`` does the
same by hand (with ``BASICSR_PLUGINS_DISABLE=1``, or in a Python started without site processing).

The package itself (``import llmhdr_basicsr``) stays light so that the command-line tools start quickly: it imports
this module only when basicsr is already loaded or the start-up hook is not active.
"""

from . import compat  # noqa: F401  (first: patches basicsr 1.4.2 for CPU / current torch before anything is built)
from .archs import (  # noqa: F401
    expandnet_arch,
    feedback_unet_arch,
    fhdr_arch,
    hdrcnn_arch,
    itmo_baseline_arch,
    patchgan_arch,
    singlehdr_arch,
)
from .data import paired_hdr_dataset, single_image_dataset, unpaired_hdr_dataset  # noqa: F401
from .losses import clip_contrastive_loss, lpips_loss, perception_loss, sam_semantic_loss  # noqa: F401
from .metrics import hdr_metric, lpips_metric, tmqi_metric  # noqa: F401
from .models import cyclehdr_model, paired_hdr_model  # noqa: F401
from .utils import lazy_registry

lazy_registry.flush()  # classes defined before basicsr was imported (llmhdr-infer --arch LinearizeITMO) register now
