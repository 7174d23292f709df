"""The engine behind the app: background jobs (one model run at a time, by priority), the cost
caches the UI prices plans with, and the Sessions that evaluate WER.

    jobs.py             RUN_LOCK (a priority lock), JOBS (a job queue: priority, cancel, progress)
    costs.py            CostCache: size / latency (host and edge) / profile / importance, cached
    session.py          Session: cached block states, quick then full WER of a plan
    whisper_session.py  WhisperSession: the same for the full Whisper model (decoder re-runs)
"""
