"""The worker: pulls queued trials from the store, trains long-tailed models, tells results.

Public surface: ``build_loss`` (worker.losses), ``build_dataset`` (worker.data),
``build_model`` (worker.models), ``train_trial`` (worker.train), ``run_worker``
(worker.trial_loop). Nothing here imports FastAPI.
"""
