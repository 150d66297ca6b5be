"""One base class for every user-facing error, so each CLI (and API user) catches them in one place."""

import errno
import os

FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # a full disk, an exceeded quota, a read-only file system


class BalmError(Exception):
    """A mistake in the user's input or environment: config, data, backbone, search space, cluster.

    The message is one line that names the file, key or value and says what was expected; the CLIs
    print it as `error: <message>` and exit with status 2. Library code raises, never exits.
    """


def shown(value: object, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut to `limit` characters (reprlib: bounded work
    even for a huge or deeply shared value)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 3, 8, 8, limit, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def storage_fault(err: BaseException | None) -> OSError | None:
    """The OSError of a full disk, an exceeded quota or a read-only file system behind `err`: itself, or
    what it wraps (Ray keeps a trial's own error as `.cause`; Python chains `__cause__`, `__context__`)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FAULTS:
            return err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


def text_fault(message: str) -> OSError | None:
    """The fault a log or error text reports (Ray logs some of them as text only), or None."""
    code = next((code for code in FAULTS if os.strerror(code) in message), None)
    return None if code is None else OSError(code, os.strerror(code))


def fault_line(fault: OSError, where: str) -> str:
    """One line for a storage fault: the file (else `where`) and what the system said."""
    return f"{fault.filename or where}: {os.strerror(fault.errno)} (errno {fault.errno})"
