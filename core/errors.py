"""One base class for every user-facing error, so each CLI (and API user) catches them in one place."""


class BalmError(Exception):
    """A mistake in the user's input or environment: config, data, backbone, search space, cluster.

    The message is one line that names the file, key or value and says what was expected; the CLIs
    print it as `error: <message>` and exit with status 2. Library code raises, never exits.
    """
