"""The benchmark harness: cuecard's teleprompters and DSPy's own optimizers, side by side.

Every method runs on the same program, task, models and cap on LM calls; each (task, method, seed)
cell is stored as it finishes, so a killed run resumes where it stopped. Run it from the repository
root (``python -m benchmarks.harness --help``).
"""

from .methods import METHOD_NAMES, MethodRun
from .results import CellResult, SummaryRow, markdown_table, summarize
from .run import HarnessConfig, load_task, run

__all__ = ["METHOD_NAMES", "CellResult", "HarnessConfig", "MethodRun", "SummaryRow", "load_task", "markdown_table", "run", "summarize"]
