"""``python -m llmhdr_basicsr.train -opt X.yml`` (console script ``llmhdr-train``): BasicSR's training pipeline.

Same command line as BasicSR's ``basicsr/train.py`` (``--auto_resume``, ``--debug``, ``--launcher``,
``--force_yml``). ``experiments/`` and ``tb_logger/`` are created in the current directory.
"""

import os

from basicsr.train import train_pipeline

import llmhdr_basicsr.plugin  # noqa: F401  (registers the plugin; also done by the start-up hook)


def main() -> None:
    train_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
