"""The keys a trial's results carry besides its own metrics (worker -> driver).

A small module of its own: every Ray worker imports it, and nothing heavy comes with it.
"""

#: the key of the trial config (and results) that carries the Ax trial index
INDEX_KEY = "ax_trial_index"
#: set in the result that a trial reports after its trainable returned
FINAL_KEY = "search/final"
#: in a final result: the trial ended itself as ``failed`` or ``early_stopped`` (it
#: diverged, or ran out of memory again after its retry); ``REASON_KEY`` says why
OUTCOME_KEY = "search/outcome"
REASON_KEY = "search/reason"
#: in a final result: values the trainable returned that are not finite (``val/auroc=nan``)
NONFINITE_KEY = "search/nonfinite"
#: in every result after a retry inside the trial: why, and the batch size it now uses
RETRY_KEY = "search/retry_reason"
BATCH_KEY = "search/reduced_batch_size"
#: a reported metric's standard error: ``val/auroc`` -> ``val/auroc_sem``
SEM_SUFFIX = "_sem"
