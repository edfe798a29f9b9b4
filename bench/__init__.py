"""Benchmarks of warmroute against Kubernetes-style defaults and queue dispatch.

Run a scenario with ``python bench/run.py SCENARIO [--quick]``, a single-component
measurement with ``python bench/micro/NAME.py``; see ``bench/README.md``. ``bench.lib`` is
what both share, ``bench.scenarios`` the scenarios, ``bench.micro`` the micro-benchmarks.
"""
