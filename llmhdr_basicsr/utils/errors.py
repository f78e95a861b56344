"""User mistakes end in one line, not a traceback: ``error: <what> — <what to do>`` and exit status 1.

BasicSR's scripts (``basicsr/train.py``, ``python -m basicsr.train|test``) and the plugin's ``llmhdr-train`` /
``llmhdr-test`` stop on a wrong option, a missing folder or a bad checkpoint with a Python traceback whose last line
is the only useful one. This module turns any exception that reaches the top of those entry scripts into that one
line on stderr:

- :class:`OptionError` (raised by :mod:`llmhdr_basicsr.utils.option_check` and the plugin) carries its own message,
  which names the option or file and says what to put there;
- other exceptions are condensed (:func:`one_line`): the message of a DataLoader worker's exception instead of its
  embedded traceback, the first line of ``load_state_dict``'s list of keys, a YAML error with its position, ...;
  exceptions that look like bugs rather than mistakes (``AttributeError``, ``NameError``) are labelled
  ``internal error`` and keep their type name, as do types whose message alone may not say what failed.

The full traceback is still written to the experiment's log file when BasicSR has opened one, and to the terminal
with ``--debug`` (BasicSR's flag) or ``LLMHDR_TRACEBACK=1``. Ctrl-C ends with ``interrupted`` and status 130.

:func:`install_excepthook` (called once by :mod:`llmhdr_basicsr.compat`) installs this for BasicSR's entry scripts;
in every other program the previous ``sys.excepthook`` runs unchanged.
"""

from __future__ import annotations

import logging
import os
import os.path as osp
import re
import sys
import traceback
from collections.abc import Callable

TRACEBACK_ENV = 'LLMHDR_TRACEBACK'
#: Exception types that are (almost always) programming errors: reported as "internal error", type name kept.
BUG_TYPES = (AttributeError, NameError, UnboundLocalError)
#: Types whose message says it all (the plugin's, BasicSR's and torch's messages for bad options, files and values);
#: any other type keeps its name in front of the message.
MESSAGE_TYPES = (ValueError, TypeError, RuntimeError, OSError, KeyError, ImportError, FloatingPointError,
                 NotImplementedError, AssertionError)  # fmt: skip


class OptionError(ValueError):
    """A mistake in the options, the data or a path, described completely by its message (one line).

    The message names the option (``datasets.train.dataroot_ldr``) or the file and says what to do. It is a
    ``ValueError`` so that callers catching bad values keep working.
    """


def traceback_wanted(argv: list[str] | None = None) -> bool:
    """True with ``LLMHDR_TRACEBACK=1`` in the environment or BasicSR's ``--debug`` on the command line."""
    if os.environ.get(TRACEBACK_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on'):
        return True
    return '--debug' in (sys.argv if argv is None else argv)


def _worker_message(text: str) -> str | None:
    """The last line of a traceback embedded in a message (torch's "Caught X in DataLoader worker process N")."""
    if 'Traceback (most recent call last)' not in text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def one_line(exc: BaseException) -> str:
    """A one-line description of ``exc`` for the terminal (without the ``error:`` prefix).

    Args:
        exc: any exception.

    Returns:
        The message, condensed to one line (at most about 600 characters).
    """
    if isinstance(exc, OptionError):
        text = str(exc)
    else:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
        inner = _worker_message(text)
        if inner is not None:
            text = f'in a DataLoader worker: {inner}'
        elif type(exc).__name__ in ('ScannerError', 'ParserError', 'ComposerError', 'ConstructorError'):
            text = f'option file is not valid YAML: {" ".join(text.split())}'
        elif isinstance(exc, RuntimeError) and text.startswith('Error(s) in loading state_dict'):
            text = _state_dict_summary(text)
        elif isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
            text = f'{text}: {exc.filename}'
        elif isinstance(exc, KeyError) and isinstance(exc.args[0], str) and re.fullmatch(r'\w+', exc.args[0]):
            text = f'option {exc.args[0]!r} is missing'
        if isinstance(exc, BUG_TYPES):
            text = (f'internal error: {type(exc).__name__}: {text} (a bug? rerun with {TRACEBACK_ENV}=1 and report '
                    'the traceback)')  # fmt: skip
        elif not isinstance(exc, MESSAGE_TYPES) and inner is None and not text.startswith('option file is not'):
            text = f'{type(exc).__name__}: {text}' if text else type(exc).__name__
    text = ' '.join(text.split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + '...'


def _state_dict_summary(text: str) -> str:
    """``load_state_dict``'s multi-line report -> one line with the counts and the first names."""
    head = text.splitlines()[0].rstrip(':')
    parts = []
    for label in ('Missing key(s)', 'Unexpected key(s)', 'size mismatch'):
        if label == 'size mismatch':
            names = re.findall(r'size mismatch for ([^:]+):', text)
        else:
            match = re.search(label.replace('(', r'\(').replace(')', r'\)') + r' in state_dict: (.*)', text)
            names = re.findall(r'"([^"]+)"', match.group(1)) if match else []
        if names:
            more = f', ... (+{len(names) - 3})' if len(names) > 3 else ''
            parts.append(f'{len(names)} {label.lower()} ({", ".join(names[:3])}{more})')
    return f'{head}: ' + '; '.join(parts) if parts else head


def _log_file_handlers() -> list[logging.FileHandler]:
    return [h for h in logging.getLogger('basicsr').handlers if isinstance(h, logging.FileHandler)]


def report(exc: BaseException, prog: str | None = None, stream=None) -> int:
    """Print ``exc`` as one line (plus the traceback when asked for) and return the exit status.

    The traceback also goes to BasicSR's log file when one is open. ``KeyboardInterrupt`` -> 130, ``SystemExit``
    -> its own code (argparse's usage errors keep their message and status 2), everything else -> 1.

    Args:
        exc: the exception that ended the program.
        prog: program name put before ``error:`` (None: just ``error:``).
        stream: where to write (default ``sys.stderr``).
    """
    stream = sys.stderr if stream is None else stream
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if isinstance(exc, KeyboardInterrupt):
        print(f'{prog + ": " if prog else ""}interrupted', file=stream)
        return 130
    line = one_line(exc)
    full = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for handler in _log_file_handlers():  # the experiment's log keeps the whole story
        try:
            handler.stream.write(f'error: {line}\n{full}')
            handler.flush()
        except (OSError, ValueError):
            pass
    if traceback_wanted():
        stream.write(full)
    print(f'{prog + ": " if prog else ""}error: {line}', file=stream)
    stream.flush()
    return 1


def run_main(fn: Callable[[], object], prog: str | None = None) -> int:
    """Call ``fn()`` and turn whatever it raises into :func:`report`'s one line; returns the exit status."""
    try:
        fn()
    except BaseException as exc:  # noqa: B036  (the point: nothing escapes as a traceback)
        return report(exc, prog)
    return 0


# ------------------------------------------------------------------------------------------------ excepthook
def basicsr_script_main(name: str):
    """``__main__`` when it is BasicSR's ``<name>.py`` (``python basicsr/<name>.py`` or ``-m basicsr.<name>``), else
    None. Its globals are where that script's pipeline looks up the functions it calls."""
    main = sys.modules.get('__main__')
    path = getattr(main, '__file__', None) or ''
    if osp.basename(path) == f'{name}.py' and osp.basename(osp.dirname(osp.abspath(path))) == 'basicsr':
        return main
    return None


def is_entry_script() -> bool:
    """True when ``__main__`` is BasicSR's ``train.py`` / ``test.py`` (as a file or ``-m basicsr.train|test``) or the
    plugin's ``llmhdr_basicsr.train`` / ``llmhdr_basicsr.test``."""
    main = sys.modules.get('__main__')
    spec = getattr(main, '__spec__', None)
    if spec is not None and spec.name in (
        'basicsr.train',
        'basicsr.test',
        'llmhdr_basicsr.train',
        'llmhdr_basicsr.test',
    ):
        return True
    return basicsr_script_main('train') is not None or basicsr_script_main('test') is not None


def install_excepthook() -> None:
    """Install the one-line report for uncaught exceptions of BasicSR's entry scripts (idempotent).

    The hook decides when it runs, so it also covers ``python -m basicsr.train``, whose ``__main__`` does not exist
    yet when the plugin is imported. Other programs get the previous hook.
    """
    previous = sys.excepthook
    if getattr(previous, '_llmhdr_basicsr', False):
        return

    def excepthook(exc_type, exc, tb):
        if not is_entry_script():
            return previous(exc_type, exc, tb)
        if exc.__traceback__ is None:
            exc = exc.with_traceback(tb)
        report(exc)  # the interpreter then exits with status 1 (an uncaught Ctrl-C still ends as SIGINT)

    excepthook._llmhdr_basicsr = True
    sys.excepthook = excepthook
