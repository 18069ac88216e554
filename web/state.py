"""What the web page's handlers share."""

from __future__ import annotations

from nodes.net.http_client import HttpClient
from nodes.net.metadata_client import MetadataClient
from vstack.settings import WebSettings

from .dashboard import Snapshot

__all__ = ["WebService"]


class WebService:
    def __init__(self, settings: WebSettings, http: HttpClient, metadata: MetadataClient) -> None:
        self.settings = settings
        self.http = http
        self.metadata = metadata
        self.snapshot = Snapshot()
        self.port = 0
