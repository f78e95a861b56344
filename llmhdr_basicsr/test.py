"""``python -m llmhdr_basicsr.test -opt X.yml`` (console script ``llmhdr-test``): BasicSR's test pipeline.

Results go to ``results/<name>/`` in the current directory.
"""

import os

from basicsr.test import test_pipeline

import llmhdr_basicsr.plugin  # noqa: F401  (registers the plugin; also done by the start-up hook)


def main() -> None:
    test_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
