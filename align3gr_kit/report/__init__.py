"""The report stage (07): the ablation ladder and baselines as runs of the pipeline, their tables and
figures, the full pipeline stage by stage, the paper's published numbers for context, and a reading
of the numbers generated from them.

The modules form one line; each imports only modules above it in this list (a test,
``tests/test_import_cycles.py``, fails on any cycle):

* the ledger, at the bottom: ``ledger`` (what was measured and where it is kept: metric keys, a
  stage manifest's final metrics, the committed row files, the tables' folder);
  ``stage_metrics`` (a run's models stage by stage, their per-user ranks and paired steps);
* the table definitions: ``specs`` (which rows each table has, how each row's config differs);
* the writers: ``statistics`` (summaries over seeds, verdicts, paired statistics),
  ``reading``, ``paper``, ``figures``, ``pipeline_report`` (stage 07's tables), ``pipeline_file``
  (a run's committed results file), ``table_files`` (a table as JSON/markdown/HTML, with its
  reading), ``headline`` (BENCHMARKS.md's first table: the best model of each chain against SASRec),
  ``benchmarks_md`` (BENCHMARKS.md's generated blocks);
* the commands, on top: ``ablation`` (rungs as papermill runs, through ``stages.runner``),
  ``benchmark`` (baselines and ladder), ``tables`` (``ablate --table``), ``full_test`` (``report
  full-test``: a run's SFT and final models on every test user).
"""
