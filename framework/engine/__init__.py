"""The evaluation engine: candidates scored on examples (``evaluate``) and kept as Optuna trials
(``study``; ``store`` is the one module touching Optuna's storage), work claims between processes,
allocation policies, the do-no-harm acceptance rules, the metric checked by behaviour, why a search stopped.

It stands on the model layer (:mod:`cuecard.clients`) and imports nothing from the reporting or the
command line.
"""
