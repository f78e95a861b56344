"""``python -m llmhdr_basicsr.train -opt X.yml`` (console script ``llmhdr-train``): BasicSR's training pipeline.

Same command line as BasicSR's ``basicsr/train.py`` (``--auto_resume``, ``--debug``, ``--launcher``,
``--force_yml``). ``experiments/`` and ``tb_logger/`` are created in the current directory. A mistake in the options,
the data or a path ends in one ``error:`` line and exit status 1 (``--debug`` or ``LLMHDR_TRACEBACK=1`` add the
traceback).
"""

import os
import sys

from basicsr.train import train_pipeline

import llmhdr_basicsr.plugin  # noqa: F401  (registers the plugin; also done by the start-up hook)
from llmhdr_basicsr.utils.errors import run_main


def main() -> int:
    """Console entry point ``llmhdr-train``; returns the exit status."""
    return run_main(lambda: train_pipeline(os.getcwd()))


if __name__ == '__main__':
    sys.exit(main())
