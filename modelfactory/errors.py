"""One error type users see. The CLI prints its message on one line and exits with its code.

Exit codes: 2 = bad input (spec, data, arguments), 3 = targets infeasible, 1 = anything unexpected.
"""


class MFError(Exception):
    """A problem the user can fix, described in one line."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NotFound(MFError):
    """A named dataset, model or order does not exist."""


class StopRequested(Exception):  # noqa: N818 (a request, not an error)
    """Raised after a checkpoint when the caller asked work to stop (preemption, Ctrl-C): the training loop raises
    it, the pool's worker reports the attempt as stopped, and the next attempt resumes from the checkpoint."""


class QuotaExceeded(MFError):
    """Work refused because its estimated cost exceeds what is left of the tenant's quota. The control plane
    answers it with 402 (its `status`), the CLI like any MFError."""

    status = 402
