"""The final model: one configuration trained for real, kept by a rule fixed in advance,
tested once, and reported.

    from pipeline.final import run_final
    summary = run_final(config, "results/x/final", reference="results/x/ray/.../checkpoint")

See :mod:`pipeline.final.run` for the protocol and :mod:`pipeline.final.report` for
what the model folder holds.
"""

from pipeline.final.report import write_plots, write_report
from pipeline.final.run import KEEP_RULE, run_final

__all__ = ["KEEP_RULE", "run_final", "write_plots", "write_report"]
