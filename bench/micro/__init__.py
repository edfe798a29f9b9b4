"""Single-component measurements, each a script of its own (``python bench/micro/NAME.py``):
``extproc`` (the control plane's request path without Envoy), ``affinity`` (a lease cycle
under callgrind), ``xds_scale`` (EDS build and push at scale) and ``epp`` (endpoint picker
mode against own-Envoy mode). They import ``bench.lib`` only."""
