"""The worker loop: pick a study with queued trials, run one trial under ``Study.optimize``,
repeat.

Why ``optimize(n_trials=1)`` per trial rather than ask/tell: Optuna's heartbeat thread, its
stale-trial failing and the retry callback run only inside ``optimize``. The storage is a
``ClaimOnlyStorage``, so ``optimize`` can only claim a trial the API queued; when another
worker took the last one it raises ``NoQueuedTrial`` and this loop moves on.

What becomes of a trial:
- it returns a value: COMPLETE, with its metrics as user attributes and its pictures as
  Optuna artifacts;
- the pruner stops it: PRUNED (never before ``first_prunable_epoch``);
- it raises (NaN loss, out of memory, missing data, ...): FAIL with ``fail_reason``, and the
  worker takes the next trial;
- the study is cancelled: FAIL with reason "study cancelled", seen between epochs;
- the worker gets SIGTERM: the trial ends FAIL between epochs with its reason and a copy is
  queued (the same retry Optuna makes for a trial whose worker died);
- the worker dies: its heartbeat stops; after the grace period the next worker that looks for
  work fails it and Optuna's ``RetryHeartbeatStaleTrialCallback`` queues a copy;
- the store goes away for a moment (a database restart): the trial's writes are retried for up
  to the grace period and training goes on; a longer outage fails the trial with its reason and
  queues a copy, or, when even that write cannot reach the store, leaves it to the heartbeat
  rule above. The loop itself waits for the store to come back.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials

from search_spaces.optuna_space import first_prunable_epoch, make_pruner, make_sampler, suggest
from search_spaces.spec import StudySpec, parse_spec
from search_spaces.store import (
    ATTR_CANCELLED,
    ATTR_FAIL_REASON,
    ATTR_SPEC,
    ATTR_WORKER,
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    MAX_RETRY,
    NoQueuedTrial,
    is_transient_store_error,
    make_storage,
    retry_store,
    trial_counts,
)

log = logging.getLogger("tailtune.worker")


class StudyCancelled(RuntimeError):
    """The study was cancelled while this trial ran."""


class WorkerInterrupted(RuntimeError):
    """The trial must end now and be queued again: SIGTERM, or the store was gone too long."""


@dataclass
class WorkerConfig:
    storage_url: str
    device: str = "cpu"
    studies: list[str] | None = None  # study names to serve; None: all
    data_root: str | None = None
    artifacts_dir: str | None = None
    poll_interval_s: float = 2.0
    heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S
    grace_period_s: int = GRACE_PERIOD_S
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.storage = make_storage(config.storage_url, worker=True, create=False,
                                    heartbeat_interval=config.heartbeat_interval_s,
                                    grace_period=config.grace_period_s)
        self.stop_event = threading.Event()
        self._specs: dict[int, StudySpec] = {}
        self._studies: dict[int, optuna.Study] = {}
        self._artifact_store = None
        if config.artifacts_dir:
            from optuna.artifacts import FileSystemArtifactStore

            Path(config.artifacts_dir).mkdir(parents=True, exist_ok=True)
            self._artifact_store = FileSystemArtifactStore(config.artifacts_dir)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, *, max_trials: int | None = None, exit_when_idle: bool = False) -> int:
        """Run trials until stopped; return how many this worker ran."""
        ran = 0
        log.info("worker %s serving %s on %s", self.config.worker_id,
                 ", ".join(self.config.studies) if self.config.studies else "all studies",
                 self.config.device)
        outage_wait_s = 0.0
        while not self.stop_event.is_set() and (max_trials is None or ran < max_trials):
            try:
                study = self._pick_study()
                if study is None:
                    if exit_when_idle and not self._anything_running():
                        break
                    self.stop_event.wait(self.config.poll_interval_s)
                    continue
                if self.run_one(study):
                    ran += 1
                outage_wait_s = 0.0
            except Exception as exc:
                if not is_transient_store_error(exc):
                    raise
                outage_wait_s = min(max(2 * outage_wait_s, 0.5), 10.0)
                log.warning("the store is unavailable (%s); trying again in %.1fs",
                            _reason(exc), outage_wait_s)
                self.stop_event.wait(outage_wait_s)
        log.info("worker %s stopping after %d trial(s)", self.config.worker_id, ran)
        return ran

    def _active_studies(self) -> list[optuna.study.FrozenStudy]:
        studies = [s for s in self.storage.get_all_studies()
                   if ATTR_SPEC in s.user_attrs and not s.user_attrs.get(ATTR_CANCELLED)]
        if self.config.studies:
            studies = [s for s in studies if s.study_name in self.config.studies]
        return studies

    def _pick_study(self) -> optuna.study.FrozenStudy | None:
        """The active study with queued trials, fewest running first, then fewest started (so
        studies progress evenly), then oldest; also fails stale trials so their retries get
        queued."""
        studies = self._active_studies()
        counts = trial_counts(self.storage, [s._study_id for s in studies])
        for s in studies:
            c = counts.get(s._study_id)
            if c is not None and c.running:
                fail_stale_trials(self._study(s, self.spec_of(s)))
        counts = trial_counts(self.storage, [s._study_id for s in studies])
        ready = [s for s in studies if counts.get(s._study_id) and counts[s._study_id].waiting]
        if not ready:
            return None
        def share(s: optuna.study.FrozenStudy) -> tuple[int, int, int]:
            c = counts[s._study_id]
            return (c.running, c.running + c.finished, s._study_id)

        return min(ready, key=share)

    def _anything_running(self) -> bool:
        counts = trial_counts(self.storage, [s._study_id for s in self._active_studies()])
        return any(c.running or c.waiting for c in counts.values())

    def spec_of(self, study: optuna.study.FrozenStudy) -> StudySpec:
        if study._study_id not in self._specs:
            self._specs[study._study_id] = parse_spec(json.loads(study.user_attrs[ATTR_SPEC]))
        return self._specs[study._study_id]

    def _study(self, frozen: optuna.study.FrozenStudy, spec: StudySpec) -> optuna.Study:
        """One ``Study`` per study for the worker's life.

        Its storage cache keeps the finished trials, so each trial re-reads only what changed;
        a fresh ``load_study`` per trial re-read every trial of the study (seconds at 2,000).
        """
        study = self._studies.get(frozen._study_id)
        if study is None:
            study = optuna.load_study(study_name=frozen.study_name, storage=self.storage,
                                      sampler=make_sampler(spec), pruner=make_pruner(spec))
            self._studies[frozen._study_id] = study
        return study

    def run_one(self, frozen: optuna.study.FrozenStudy) -> bool:
        """Claim and run one queued trial of ``frozen``; False when none was left to claim."""
        spec = self.spec_of(frozen)
        study = self._study(frozen, spec)
        current: dict[str, Any] = {}
        objective = self._objective(study, spec, current)
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        except NoQueuedTrial:
            return False
        except Exception:
            if "trial_id" not in current or not self._ended_elsewhere(current["trial_id"]):
                raise
            # Cut off from the store longer than the grace period, the trial was failed as
            # stale by another worker, which queued its retry; this result is dropped.
            log.warning("trial %s was ended by another worker while this one ran it (the store "
                        "was out of reach); its retry runs instead", current.get("number"))
            return True
        if current.get("interrupted"):
            trial = self.storage.get_trial(current["trial_id"])
            RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
            log.info("trial %d interrupted; queued again", trial.number)
        return "trial_id" in current

    def _ended_elsewhere(self, trial_id: int) -> bool:
        try:
            return self.storage.get_trial(trial_id).state.is_finished()
        except Exception:
            return False

    # -- one trial --------------------------------------------------------------------------

    def _objective(self, study: optuna.Study, spec: StudySpec,
                   current: dict[str, Any]) -> Callable[[optuna.Trial], float]:
        from worker.train import train_trial  # torch is imported on first use only

        patience = float(self.config.grace_period_s)

        def store(fn: Callable[[], Any], what: str) -> Any:
            return retry_store(fn, within_s=patience, what=what)

        def objective(trial: optuna.Trial) -> float:
            current["trial_id"] = trial._trial_id
            current["number"] = trial.number
            try:
                store(lambda: self._start(trial), "starting the trial")
                params = suggest(trial, spec)
                store(lambda: trial.set_user_attr("loss_params", params.loss_params), "recording params")
                first_prunable = first_prunable_epoch(spec, params)
                log.info("trial %d of %r: %s %s lr=%.4g", trial.number, study.study_name,
                         params.loss, params.loss_params, params.lr)

                def on_epoch(epoch: int, value: float, metrics: dict[str, Any]) -> None:
                    store(lambda: trial.report(value, epoch), f"reporting epoch {epoch}")
                    if self.stop_event.is_set():
                        raise WorkerInterrupted("the worker received SIGTERM; the trial is "
                                                "queued again")
                    attrs = store(lambda: self.storage.get_study_user_attrs(study._study_id),
                                  "checking for cancellation")
                    if attrs.get(ATTR_CANCELLED):
                        raise StudyCancelled("study cancelled")
                    if epoch >= first_prunable and store(trial.should_prune, "asking the pruner"):
                        raise optuna.TrialPruned(f"pruned at epoch {epoch} (value {value:.4f})")

                result = train_trial(spec, params, device=self.config.device,
                                     data_root=self.config.data_root, on_epoch=on_epoch)
                store(lambda: self._record(trial, result), "recording the result")
                log.info("trial %d finished: %s = %.4f (%.1fs)", trial.number,
                         spec.objective.metric, result.value, result.wall_time_s)
                return result.value
            except optuna.TrialPruned:
                raise
            except WorkerInterrupted as exc:
                current["interrupted"] = True
                trial.set_user_attr(ATTR_FAIL_REASON, str(exc))
                raise
            except Exception as exc:
                if is_transient_store_error(exc):
                    current["interrupted"] = True
                    reason = (f"the store was out of reach for over {patience:.0f}s "
                              f"({_reason(exc)}); the trial is queued again")
                    trial.set_user_attr(ATTR_FAIL_REASON, reason[:500])
                    raise WorkerInterrupted(reason) from exc
                trial.set_user_attr(ATTR_FAIL_REASON, _reason(exc))
                _free_device_memory()
                raise

        return objective

    def _start(self, trial: optuna.Trial) -> None:
        trial.set_user_attr(ATTR_WORKER, self.config.worker_id)
        trial.set_user_attr("device", self.config.device)
        if trial.user_attrs.get(ATTR_FAIL_REASON):  # a retry carries its original's attrs
            trial.set_user_attr(ATTR_FAIL_REASON, None)

    def _record(self, trial: optuna.Trial, result: Any) -> None:
        for key, value in result.metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("counts", result.counts)
        trial.set_user_attr("val_confusion", result.val_confusion)
        trial.set_user_attr("test_confusion", result.test_confusion)
        trial.set_user_attr("wall_time_s", round(result.wall_time_s, 3))
        trial.set_user_attr("device", result.device)
        if self._artifact_store is not None:
            self._upload_pictures(trial, result)

    def _upload_pictures(self, trial: optuna.Trial, result: Any) -> None:
        try:
            from worker.plots import confusion_png, per_class_png
        except ImportError:
            return
        pictures = {
            "confusion_test.png": confusion_png(result.test_confusion,
                                                f"trial {trial.number}: test confusion matrix"),
            "per_class_test.png": per_class_png(result.metrics["test_per_class_accuracy"],
                                                result.counts["train"],
                                                f"trial {trial.number}: test accuracy per class"),
        }
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in pictures.items():
                path = Path(tmp) / name
                path.write_bytes(data)
                optuna.artifacts.upload_artifact(artifact_store=self._artifact_store,
                                                 file_path=str(path), study_or_trial=trial,
                                                 mimetype="image/png")

    # -- signals ----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT: finish the current epoch, fail and requeue the trial, exit.
        A second signal exits at once (the heartbeat then recovers the trial)."""

        def handle(signum: int, _frame: Any) -> None:
            if self.stop_event.is_set():
                raise SystemExit(128 + signum)
            log.warning("signal %d: stopping after the current epoch", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

