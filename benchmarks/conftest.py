"""pytest-benchmark settings for ``pytest benchmarks --benchmark-only``: results are saved as JSON
(.benchmarks/<machine>/NNNN_hot_paths.json) unless the command names its own --benchmark-json."""

from __future__ import annotations


def pytest_configure(config):
    option = config.option
    if hasattr(option, "benchmark_save") and not (option.benchmark_save or option.benchmark_autosave
                                                  or getattr(option, "benchmark_json", None)):
        option.benchmark_save = "hot_paths"
