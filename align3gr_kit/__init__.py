"""align3gr-kit: Align3GR (token-, behaviour- and preference-level alignment) for generative recommendation.

Logic lives in this package; the notebooks under ``notebooks/`` call it, explain it and draw it.
"""

__version__ = "0.1.0"
