"""What bench's scenarios and micro-benchmarks share: load generation, traces, statistics,
result pages, child processes and the systems under test (``contenders``).

Importable without the bench extras (matplotlib, celery): ``trace``, ``ideal``, ``stats``,
``report``; everything else loads those lazily or only in child processes. Nothing here
imports ``bench.micro`` or ``bench.scenarios`` (``tests/bench/test_bench_layout.py``).
"""
