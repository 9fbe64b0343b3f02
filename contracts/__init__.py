"""What the saga's parties agree on, with no I/O: the operations' inputs and results
(:mod:`contracts.commands`) and the catalogue of operations (:mod:`contracts.catalogue`).

The workflow that calls the operations, the services that run them and the REST routes that
accept their inputs all read these; nothing here imports the rest of the project.
"""

from __future__ import annotations

__all__: list[str] = []
