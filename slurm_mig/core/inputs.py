"""Strict readers for values that come from outside: numbers, on/off flags, the config file.

Every number slurm-mig takes from the config, the environment, the command line, a layout
or one of its own state files goes through :func:`from_text` (text) or :func:`from_value`
(an already parsed TOML or JSON value), which share one set of rules:

* **ASCII digits only.** ``int()``, ``float()``, ``str.isdigit`` and regex ``\\d`` all accept
  other scripts' digits (``"٣"``, ``"１"``, ``"²"``): a value that looks like nothing an admin
  typed must not become a number.  Text is ``[0-9]+``, or ``[0-9]+.[0-9]+`` where a fraction
  is allowed: no sign, no exponent, no ``_``, no ``inf``/``nan``, no blanks.
* **Length first.** Text over :data:`MAX_DIGITS` characters is refused before any
  conversion (Python refuses over 4300 digits with a ValueError of its own).
* **Finite, within explicit bounds.** Every caller names ``lo`` and ``hi``; ``inf``, ``nan``
  and ``bool`` (``true`` is an int in Python) are never numbers.

A bad number raises :class:`NumberError` (a ``ValueError``) whose text says what was
wanted, ``not a number of seconds (0 to 3600)``; the caller adds which input it was and
how to fix it, and raises its own error class (InputError, ConfigError) from it.

Stdlib only, no ``typing`` or ``re`` at run time: the hooks import this on every job.
"""

from __future__ import annotations

import os
import stat

from .errors import ConfigError

TYPE_CHECKING = False  # no `typing` at run time: the hooks start on every job
if TYPE_CHECKING:
    from typing import Literal, Union, overload

    Number = Union[int, float]
else:
    def overload(func):  # the type checker's; at run time the last definition is the one
        return func

#: Longest number text read (ASCII digits and one '.'); every bound here has far fewer digits.
MAX_DIGITS = 24
#: Highest NVML GPU index accepted from a config key or ``--gpu``.
MAX_GPU_INDEX = 1023
#: Longest timeout or grace period, in seconds: ``apply.lock_timeout``,
#: ``slurm.register_timeout``, ``hooks.kill_grace`` (and ``SLURM_MIG_EPILOG_GRACE``),
#: ``rebalance.apply_wait``.  An hour: beyond it, something is stuck.
MAX_TIMEOUT = 3600
#: Longest wait, in seconds, anything accepts: ``slurm.sync_wait`` and ``sync --wait``
#: (for running jobs to end; 30 days is beyond any site's time limit).
MAX_WAIT = 30 * 86400
#: Largest config file read; the example with every key is about 8 KiB.
MAX_CONFIG_BYTES = 1 << 20

_FLAGS = {"1": True, "yes": True, "true": True, "on": True,
          "0": False, "no": False, "false": False, "off": False}


class NumberError(ValueError):
    """A value that is not the number asked for; the text says what was wanted."""


def _fmt(x: Number) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def wanted(lo: Number, hi: Number, *, whole: bool = True, kind: str | None = None) -> str:
    """``a whole number (0 to 7)``: what a value must be, for messages and docs."""
    kind = kind or ("a whole number" if whole else "a number")
    return f"{kind} ({_fmt(lo)} to {_fmt(hi)})"


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters: an error line stays one short line."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def ascii_digits(text: str) -> bool:
    """``[0-9]+``: what ``str.isdigit`` means to a reader who does not know Unicode."""
    return text.isascii() and text.isdigit()  # isdigit on ASCII text is exactly [0-9]+


@overload
def from_text(text: object, lo: Number, hi: Number, *, whole: Literal[True] = ...,
              kind: str | None = None) -> int: ...
@overload
def from_text(text: object, lo: Number, hi: Number, *, whole: bool,
              kind: str | None = None) -> Number: ...
def from_text(text: object, lo: Number, hi: Number, *, whole: bool = True,
              kind: str | None = None) -> Number:
    """Text (an environment variable, an option, a layout count) as a number in [lo, hi].

    ``whole``: ``[0-9]+`` only, returns an int; else a fraction is allowed too and a
    float is returned.  Raises :class:`NumberError` for anything else (module doc).
    """
    if not isinstance(text, str) or not text or len(text) > MAX_DIGITS:
        raise NumberError("not " + wanted(lo, hi, whole=whole, kind=kind))
    if whole:
        ok = ascii_digits(text)
    else:
        head, dot, tail = text.partition(".")
        ok = ascii_digits(head) and (not dot or ascii_digits(tail))
    if not ok:
        raise NumberError("not " + wanted(lo, hi, whole=whole, kind=kind))
    return from_value(int(text) if whole else float(text), lo, hi, whole=whole, kind=kind)


@overload
def from_value(value: object, lo: Number, hi: Number, *, whole: Literal[True] = ...,
               kind: str | None = None) -> int: ...
@overload
def from_value(value: object, lo: Number, hi: Number, *, whole: bool,
               kind: str | None = None) -> Number: ...
def from_value(value: object, lo: Number, hi: Number, *, whole: bool = True,
               kind: str | None = None) -> Number:
    """An already parsed TOML/JSON value as a number in [lo, hi], returned unchanged.

    ``whole``: an int; else an int or a finite float.  Never a bool (``true`` is an
    int in Python), a string, ``inf`` or ``nan``.  Raises :class:`NumberError`.
    """
    # Whole: an int; else an int or a float.  `lo <= value <= hi` is False for nan, and for
    # inf with a finite hi: both refused.
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (whole and not isinstance(value, int)) or not lo <= value <= hi):
        raise NumberError("not " + wanted(lo, hi, whole=whole, kind=kind))
    return value


def seconds_text(text: object, hi: Number, *, lo: Number = 0) -> float:
    """``"5"`` or ``"2.5"`` seconds, from ``lo`` to ``hi``, as a float."""
    return float(from_text(text, lo, hi, whole=False, kind="a number of seconds"))


def flag_text(text: object) -> bool:
    """An on/off switch from text: ``1 yes true on`` / ``0 no false off`` (any case)."""
    value = _FLAGS.get(text.strip().lower()) if isinstance(text, str) else None
    if value is None:
        raise ValueError("not 1 or 0 (also yes/no, true/false, on/off)")
    return value


def read_regular_file(path: str, what: str = "config file", *,
                      limit: int = MAX_CONFIG_BYTES) -> tuple[bytes, os.stat_result]:
    """(bytes, stat) of a small regular file; a symbolic link to one is fine.

    Opened without blocking, so a FIFO cannot hang the caller; a FIFO, a device
    (``/dev/zero``), a directory or a file over ``limit`` bytes is a one-line
    :class:`~slurm_mig.core.errors.ConfigError`.  FileNotFoundError is left to the caller
    (the default config file may be absent); any other OSError is a ConfigError.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what}: {err.strerror or err}; check the "
                          f"path and its permissions") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                    "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                    "not a regular file")
            raise ConfigError(f"{path}: {what} is {kind}, not a regular file; point it at "
                              f"the TOML file (see etc/config.toml)")
        too_big = ConfigError(f"{path}: {what} is larger than {limit} bytes; it is not a "
                              f"slurm-mig config (see etc/config.toml)")
        if st.st_size > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks), st
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what}: {err.strerror or err}") from err
    finally:
        os.close(fd)
