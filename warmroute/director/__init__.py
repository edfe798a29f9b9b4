"""The director: the one place a request's routing decision is made (request control).

* ``director``: ``Director.lease`` (the decision, step by step), ``finish`` (the
  completion step), ``refused`` (every refusal counted and logged once);
* ``request``: its input, the frozen ``Request``, and the ``Source`` it reads on demand;
* ``pricing``: what a request asks of its pool (token cost, affinity hint, band), read
  from its source as the pool's spec says;
* ``waiting``: the async wait around the core's synchronous leasing, cancellation-safe;
* ``admission``: refusing at once a wait that could only time out;
* ``subsets``: a gateway's subset hint resolved against a pool's replicas;
* ``outliers``: request outcomes into outlier detection; ejections logged, counted, timed.

Both front ends (``warmroute.extproc``, ``warmroute.epp``) depend on it; it depends on the
state core and the metrics sink only, never on a front end or a protocol.
"""

from warmroute.director.admission import Admission
from warmroute.director.director import Director
from warmroute.director.outliers import OutlierReporter
from warmroute.director.request import NOTHING, Request, Source

__all__ = ["NOTHING", "Admission", "Director", "OutlierReporter", "Request", "Source"]
