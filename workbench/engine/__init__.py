"""The engine behind the app: background jobs (one model run at a time, by priority) and the
cost caches the UI prices plans with. The Session (workbench.session) evaluates WER.

    jobs.py    RUN_LOCK (a priority lock), JOBS (a job queue: priority, cancel, progress)
    costs.py   CostCache: size / latency (host and edge) / profile / importance of plans, cached
"""
