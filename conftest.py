"""pytest set-up shared by the package tests and nbval over notebooks/."""

import os

# Fewer threads than cores keeps results reproducible across runs and leaves room for the kernel.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collectstart(collector):
    # nbval: plotly output carries random ids and widget/JS payloads; compare text, not those.
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += (
            "text/html",
            "application/javascript",
            "application/vnd.plotly.v1+json",
            "application/vnd.jupyter.widget-view+json",
            "stderr",
        )
