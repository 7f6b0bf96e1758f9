"""The set of services one Tunery process runs; built by ``bootstrap`` and handed to the edges."""

from __future__ import annotations

from dataclasses import dataclass

from tunery.services.files import FileService
from tunery.services.keys import KeyService


@dataclass(slots=True)
class Services:
    keys: KeyService
    files: FileService

    def close(self) -> None:
        self.files.close()
