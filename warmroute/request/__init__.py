"""What both ext_proc front ends share about a request, so neither imports the other.

* ``model``: which model a request asks for (header, JSON body, both), as pure functions;
* ``prompt``: its prompt text, for prefix affinity;
* ``tokens``: its size and completion bound, for token budgets;
* ``source``: a request's ext_proc messages behind the view the director reads
  (``warmroute.director.Source``), so the director never sees a protocol message;
* ``responses``: the routed answer and every refusal as an ext_proc ``ImmediateResponse``,
  the one place request errors (``warmroute.errors``) become HTTP answers.

Own-Envoy mode (``warmroute.extproc``) and endpoint-picker mode (``warmroute.epp``) both
import it; it imports neither, nor the director.
"""
