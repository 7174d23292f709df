"""Plan search at scale: per-layer sweeps and a multi-objective (WER x size x latency) search.

    from workbench.search import EvaluatorSpec, SearchConfig, SearchSpace, search
    result = search(EvaluatorSpec(device="rpi5"), SearchConfig(trials=48, max_delta_wer=0.01),
                    executor="ray", out_dir="plans/")

Optuna (NSGA-II) and Ray are imported only when a search runs: `import workbench` and
`import workbench.search` load neither.
"""
from workbench.search.api import search, write_front
from workbench.search.executors import Job, RayExecutor, SearchCancelled, SerialExecutor
from workbench.search.front import hypervolume, pareto_indices
from workbench.search.objective import EvaluatorSpec, Measures, PlanEvaluator
from workbench.search.runner import SearchConfig, SearchResult, Trial, run_search
from workbench.search.space import Gene, SearchSpace

__all__ = [
    "EvaluatorSpec", "Gene", "Job", "Measures", "PlanEvaluator", "RayExecutor", "SearchCancelled",
    "SearchConfig", "SearchResult", "SearchSpace", "SerialExecutor", "Trial", "hypervolume",
    "pareto_indices", "run_search", "search", "write_front",
]
