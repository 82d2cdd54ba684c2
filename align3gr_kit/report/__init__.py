"""The report stage (07): the ablation ladder and baselines as runs of the pipeline, their tables and
figures, the full pipeline stage by stage, the paper's published numbers for context, and a reading
of the numbers generated from them."""
