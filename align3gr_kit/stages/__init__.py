"""The pipeline's stages behind one contract (see :mod:`align3gr_kit.stages.contract`).

* ``contract``: :class:`Stage`, :data:`STAGES`, :class:`StageRun` (typed inputs, a private folder
  renamed into place when finished, the manifest), fingerprints, ``is_current``, reuse, ``run_stage``;
* ``s00_data`` … ``s07_report``: one ``run(cfg, stage) -> metrics`` per stage, called alike by the
  notebooks and the command line;
* ``runner``: the notebooks through papermill, and ``reports/<run_name>/``;
* ``notebook``: what the notebooks' setup cells call (``start_stage``, ``save_figure``, ``table``);
* ``refresh``: re-executing the committed notebooks on the smoke config.
"""

from align3gr_kit.stages.contract import (
    STAGES,
    Stage,
    StageRun,
    ensure_stage,
    fingerprint,
    get_stage,
    is_current,
    read_manifest,
    run_stage,
    stage_artifacts,
)

__all__ = ["STAGES", "Stage", "StageRun", "ensure_stage", "fingerprint", "get_stage", "is_current",
           "read_manifest", "run_stage", "stage_artifacts"]
