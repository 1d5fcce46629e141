"""The server's expected failures, and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import grpc


class JobError(Exception):
    """A job ended for a reason the caller should hear about; ``str(error)`` is the message they get."""

    status = grpc.StatusCode.INTERNAL


class InvalidRequest(JobError):
    """The request names a bad field value; the message names the field, the value and what is allowed."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(JobError):
    """Every running slot and every queue place is taken."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class ShuttingDown(JobError):
    """The server is draining: it takes no new jobs, or its grace period for running ones has passed."""

    status = grpc.StatusCode.UNAVAILABLE


class Cancelled(JobError):
    """The caller cancelled, disconnected or ran past its deadline; nobody is listening for a status."""

    status = grpc.StatusCode.CANCELLED
