"""The scenarios of ``bench/run.py``: ``NAME.py`` has ``async def run(args) -> Path`` (the
results page it wrote). A bigger scenario also has ``NAME_plan.py`` (what it measures and
the shape of its results; pure) and ``NAME_report.py`` (the page), imported in that
direction only: NAME -> NAME_report -> NAME_plan. A scenario imports ``bench.lib``,
``bench.micro`` and its own modules, never another scenario's
(``tests/bench/test_bench_layout.py``)."""
