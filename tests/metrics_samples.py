"""A service's ``/metrics`` as a test reads it: every sample, keyed by name and labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient, base: str = "") -> Samples:
    """Every sample ``GET {base}/metrics`` answers (``base`` empty: the client's own)."""
    response = await client.get(f"{base}/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
