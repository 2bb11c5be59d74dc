"""Running edgesr's embarrassingly parallel jobs on Ray (`--executor ray`).

- :mod:`.cluster`: connecting to (or starting) a Ray instance, the bench-slot resource, cancelling
  on Ctrl-C.
- :mod:`.sweep`: `convert --zoo INDEX` and `convert DIR` with one Ray task per model.
- :mod:`.bulk`: `edgesr upscale` of many images as a Ray Data pipeline (one model session per actor).
- :mod:`.frames`: `edgesr upscale` of a video with its frames split into ranges, one task each.

Ray is an optional extra (``pip install 'edgesr[ray]'``) imported inside functions only; the local
single-process path stays the default and does not need it.
"""
