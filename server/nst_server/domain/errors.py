"""The server's expected failures. Plain exceptions: the servicer maps each type to a gRPC status in one table."""

from __future__ import annotations


class JobError(Exception):
    """A job ended for a reason the caller should hear about; ``str(error)`` is the message they get.

    Never raised itself: each subclass says what kind of ending it is (and so which status the caller gets).
    """


class InvalidRequest(JobError):
    """The request names a bad field value; the message names the field, the value and what is allowed."""


def untiled_only(what: str, found: str, whole_max_side_px: int | None) -> InvalidRequest:
    """The refusal of ``what`` (masks, tileable output) for an image the server would evaluate in tiles."""
    return InvalidRequest(
        f"{what}: only for images the server evaluates whole, up to {whole_max_side_px} px on the longer side "
        f"(--tile-size plus the model's halo on both sides); this job's {found}; ask for a smaller max_side_px"
    )


class NonFiniteLoss(JobError):
    """The loss (or the image it moved) stopped being a finite number: float32 overflowed, or a gradient was NaN.

    With the codec's bounded weights no request is known to reach it; it ends the job naming the term and the
    evaluation rather than return NaN losses or a black image marked OK.
    """


class Overloaded(JobError):
    """Every running slot and every queue place is taken."""


class OverMemory(JobError):
    """The job's estimated peak memory (``memory.peak_bytes``) is more than the server's whole budget: it could
    never run, so it is refused at once rather than queued."""


class QueueTimeout(JobError):
    """The job waited the server's --max-queue-wait without getting a slot."""


class JobTimeout(JobError):
    """The job ran for the server's --max-job-duration and was stopped."""


class ShuttingDown(JobError):
    """The server is draining: it takes no new jobs, or its grace period for running ones has passed."""


class Cancelled(JobError):
    """The caller cancelled, disconnected or ran past its deadline; nobody is listening for a status."""


class InternalError(JobError):
    """A bug: an unexpected exception while reading a request or running a job, reported as one line naming it."""
