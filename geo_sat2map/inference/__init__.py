"""Streaming, device-resident inference for ``translate``.

- ``ops``: per-pixel window operations in torch (no I/O), mirroring the numpy references they are tested
  against (``windows``, ``fill``, ``scaling``);
- ``engine``: window rows in, finished RGBA rows and overview rows out, on one device;
- ``runner``: the generator on device batches (precision, layout, ``torch.compile``) and device-side timing;
- ``stages``: reader threads and the download/writer thread around the engine;
- ``translate``: the orchestration (``translate(TranslateConfig) -> TranslateReport``).
"""

from geo_sat2map.inference.translate import TranslateConfig, TranslateReport, translate

__all__ = ["TranslateConfig", "TranslateReport", "translate"]
