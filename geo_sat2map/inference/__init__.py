"""Streaming, device-resident inference for ``translate``.

- ``ops``: per-pixel window operations in torch (no I/O), mirroring the numpy references they are tested
  against (``windows``, ``fill``, ``scaling``);
- ``engine``: window rows in, finished RGBA rows and overview rows out, on one device;
- ``runner``: the generator on device batches (precision, layout, ``torch.compile``) and device-side timing;
- ``precision``: ``--precision``, with ``auto`` on a CPU measured on the run's generator (``cpu_precision``);
- ``stages``: reader threads and the download/writer thread around the engine;
- ``translate``: the orchestration (``translate(TranslateConfig) -> TranslateReport``);
- ``parts``: one scene across torchrun processes, one band of rows each, assembled or listed in a VRT;
- ``batch``: many scenes into a folder, resumable, shared between torchrun processes;
- ``ranks``, ``identity``: torchrun coordination; what identifies a run's finished work.
"""

from geo_sat2map.inference.batch import BatchConfig, BatchReport, read_input_list, translate_many
from geo_sat2map.inference.config import TranslateConfig
from geo_sat2map.inference.translate import TranslateReport, translate

__all__ = ["BatchConfig", "BatchReport", "TranslateConfig", "TranslateReport", "read_input_list", "translate",
           "translate_many"]
