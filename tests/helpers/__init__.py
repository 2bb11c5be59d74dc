"""Test helpers shared by every test area: import them, never copy them into a test module.

* ``helpers.paths``: where the repository, the tests and their data are.
* ``helpers.cli``: run ``edgesr.cli.main`` in-process, check its one-line errors, the environment
  for ``python -m edgesr`` children.
* ``helpers.models``: toy SR networks and random-weight registry models for tests that need a model
  but not a trained one, and a fixed-input-size runner over a PyTorch module.
* ``helpers.inputs``: seeded inputs (uniform noise images).
* ``helpers.weights``: checkpoint files written from modules or state_dicts.
* ``helpers.ort``: plain ONNX Runtime sessions built without edgesr (an independent reference).
* ``helpers.video``: a short generated clip with audio (PyAV) and a summary of its audio.
* ``helpers.quantize``: ONNX Runtime's own static QDQ quantizer with fixed inputs (an INT8 graph
  that is not edgesr's, to test what edgesr does with one).

tests/project/test_structure.py fails when a test module defines a name one of these modules
already defines.
"""
