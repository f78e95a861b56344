"""Package version: a plain literal, read by setup.py with a regular expression (never exec'd)."""

__version__ = '0.1.0'
