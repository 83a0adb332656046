"""Output helpers the benchmark scripts share: aligned tables and cProfile summaries."""

from __future__ import annotations

import cProfile
import io
import pstats


def print_rows(headers: list[str], rows: list[list[str]]) -> None:
    """Print a table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def profile_text(profile: cProfile.Profile, title: str, limit: int) -> str:
    """The ``limit`` top functions by own time and by cumulative time, pstats' preamble cut."""
    parts = []
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(limit)
        text = out.getvalue()
        body = text[text.find("   ncalls") :] if "   ncalls" in text else text
        total = next((ln for ln in text.splitlines() if "function calls" in ln), "")
        parts.append(f"\n--- cProfile: {title}, by {order} ---\n{total.strip()}\n{body.rstrip()}")
    return "\n".join(parts)
