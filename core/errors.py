"""One base class for every user-facing error, so each CLI (and API user) catches them in one place."""


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
