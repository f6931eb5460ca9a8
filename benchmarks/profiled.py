"""Reading Lightning's ``SimpleProfiler`` records, for the benchmarks that time callbacks."""

from __future__ import annotations

import statistics


def median_ms(durations: dict[str, list[float]], suffix: str) -> float:
    """Median milliseconds of every recorded action whose name ends with ``suffix``."""
    values = [v for k, vs in durations.items() if k.endswith(suffix) for v in vs]
    return 1000 * statistics.median(values) if values else 0.0
