"""Why an upload fails: the uploader's own errors, all :class:`VStackError` subclasses.

They never reach the wire as a status: an upload that fails after it was
accepted ends its session ``failed`` with the error's message, which is
written for the person polling ``/upload/status/{id}``. Errors of the
accepting request itself are :class:`~protocol.errors.ProtocolError`\\ s
with a 4xx status, as everywhere else.

    VStackError
     +-- OutcomeUnknown     whether the video became active cannot be told (yet)
     +-- UploadFailed       the upload could not be completed (no nodes, lost copies, ...)
          +-- ChunkingFailed    FFmpeg could not cut the video
               +-- Oversize     a copied segment is larger than a chunk may be
"""

from __future__ import annotations

from protocol.errors import VStackError

__all__ = ["ChunkingFailed", "OutcomeUnknown", "Oversize", "UploadFailed"]


class OutcomeUnknown(VStackError):
    """Making the video active got no answer, and asking after it got none either:
    the upload is neither failed nor completed until the metadata service answers."""


class UploadFailed(VStackError):
    """The upload could not be completed; the message says why, for a person."""


class ChunkingFailed(UploadFailed):
    """FFmpeg could not cut the video; the message says why, for a person."""


class Oversize(ChunkingFailed):
    """A copied segment came out larger than a chunk may be (keyframes too sparse).

    Caught by the pipeline, which cuts again with re-encoding; only a
    segment too large even then ends the upload.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a chunk of {size >> 20} MiB exceeds the {limit >> 20} MiB limit")
        self.size = size
        self.limit = limit
