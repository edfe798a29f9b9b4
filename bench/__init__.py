"""Benchmarks of warmroute against Kubernetes-style defaults and queue dispatch.

Run them with ``python bench/run.py SCENARIO [--quick]``; see ``bench/README.md``.
Modules importable without the bench extras (matplotlib, celery): ``trace``, ``ideal``,
``stats``; everything else loads those lazily or only in child processes.
"""
