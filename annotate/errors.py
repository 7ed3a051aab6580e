"""Errors a user can cause. Each message says what to do; UI and CLI show it as is."""


class PrefloopError(Exception):
    """Base class for errors shown to users without a traceback."""


class ConfigError(PrefloopError):
    """A setting is missing or invalid."""


class PermissionDenied(PrefloopError):
    """The current user's role does not allow this action."""


class AuthError(PrefloopError):
    """Wrong credentials, inactive account or throttled login."""


class NotFound(PrefloopError):
    """The requested object does not exist."""


class ImportValidationError(PrefloopError):
    """An import file has bad rows; nothing was written.

    ``problems`` is a list of ``(line_number, reason)``: an import lists the first 1,000 by line
    (``annotate.ingest.MAX_PROBLEMS_KEPT``), and ``count`` says how many there are in all (at least, from
    ``annotate.ingest.MAX_PROBLEMS_COUNTED``, where an import stops reading).
    """

    def __init__(self, message: str, problems: list[tuple[int, str]] | None = None, count: int | None = None):
        super().__init__(message)
        self.problems = problems or []
        self.count = len(self.problems) if count is None else max(count, len(self.problems))


class QueueError(PrefloopError):
    """A judgment or lease operation is not valid (expired lease, already judged...)."""


class ModelError(PrefloopError):
    """No usable reward model (none trained yet, artifact missing or corrupt)."""
