"""Simulated GPU model server: the demo, test and benchmark backend.

Public surface: :class:`SimReplica` (an aiohttp server with fixed slots, a cold start and
vLLM-style ``/metrics``), :class:`SimStats` (its counters), :class:`ServiceTime` and
:func:`parse_service_time` (how long a request holds a slot). Run one from the shell with
``python -m warmroute.sim``.
"""

from warmroute.sim.replica import SimReplica, SimStats, render_metrics
from warmroute.sim.service_time import ServiceTime, parse_service_time

__all__ = ["ServiceTime", "SimReplica", "SimStats", "parse_service_time", "render_metrics"]
