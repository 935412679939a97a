"""Export: fold a checkpoint, build a format, verify it, write the artifact. Where each change goes:

- ``exporter.py`` runs the steps (all or nothing); ``options.py`` the options and format table;
- ``builders.py`` one builder per format, each returning a BuildResult (runner, manifest sections, INT8's fp32
  reference); ``onnx_export.py``, ``quantize.py``, ``openvino_ir.py``, ``tensorrt_build.py``,
  ``torch_program.py`` the conversions they use; ``wrappers.py`` the exported module (preprocessing, half,
  probabilities); ``graph_stats.py`` operator counts;
- ``runners.py`` the one Runner type; ``verify.py`` parity numbers; ``gates.py`` the parity and accuracy
  gates an export must pass; ``real_images.py`` calibration and evaluation images.
"""
