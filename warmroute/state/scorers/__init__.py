"""Scorers: how a pool ranks the free replicas for one request (``scorers.base``).

Each module holds one scorer; ``SCORERS`` names them for the pick profiles
(``warmroute.state.picker.PROFILES``), which the config's ``policy`` selects.
"""

from warmroute.state.scorers.base import Scorer, ScoringContext
from warmroute.state.scorers.first_free import FirstFree
from warmroute.state.scorers.least_loaded import LeastLoaded
from warmroute.state.scorers.prefix import Prefix
from warmroute.state.scorers.session import Session

SCORERS: dict[str, Scorer] = {s.name: s for s in (LeastLoaded(), FirstFree(), Prefix(), Session())}
"""Every scorer by name. Scorers keep no state, so one instance serves every pool."""

__all__ = ["SCORERS", "FirstFree", "LeastLoaded", "Prefix", "Scorer", "ScoringContext", "Session"]
