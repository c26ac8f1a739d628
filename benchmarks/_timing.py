"""Timing and memory helpers of the benchmark scripts: re-exported from :mod:`losslab.benchmarking`,
the one helper the scripts and ``losslab bench`` share.

Speed: median wall time of repeated runs after warm-up (``interleaved_medians`` alternates the
competitors). Memory: peak RSS of a fresh Python subprocess minus its RSS just before the
measured call (``peak_rss_mib``), so each figure starts from a clean allocator.
"""
from losslab.benchmarking import (  # noqa: F401
    _fmt,
    format_table,
    interleaved_medians,
    machine,
    median_time,
    peak_extra_mib,
    peak_rss_mib,
    print_table,
)
