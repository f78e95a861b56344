"""``python -m llmhdr_basicsr.test -opt X.yml`` (console script ``llmhdr-test``): BasicSR's test pipeline.

Results go to ``results/<name>/`` in the current directory. A mistake in the options, the data or a path ends in
one ``error:`` line and exit status 1 (``--debug`` or ``LLMHDR_TRACEBACK=1`` add the traceback).
"""

import os
import sys

from basicsr.test import test_pipeline

import llmhdr_basicsr.plugin  # noqa: F401  (registers the plugin; also done by the start-up hook)
from llmhdr_basicsr.utils.errors import run_main


def main() -> int:
    """Console entry point ``llmhdr-test``; returns the exit status."""
    return run_main(lambda: test_pipeline(os.getcwd()))


if __name__ == '__main__':
    sys.exit(main())
