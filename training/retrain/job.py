"""`mailroute retrain`: one Ray program from the event log to a registered candidate, or to a reason why not.

Per model (`linear`, `transformer`, or each model an arm serves):

1. **data** (`training.retrain.dataset`): the champion's base data, the feedback-labelled emails and the imported
   labels, merged and split into training rows and held-out rows;
2. **checks** (`training.retrain.validate`): any failed check stops here, before training, naming the check;
3. **training** as Ray work: the linear model by a Ray Tune search and a Ray task (`training.retrain.tune`), the
   transformer with Ray Train, warm-started from the champion's weights (`training.pipeline.fit_transformer`); the
   same code runs on a cluster (`RAY_ADDRESS`), where the registry and run folders must be on shared storage;
4. **evaluation**: candidate and champion on the same held-out rows, overall and per slice (the champion's own
   held-out base rows, the recent feedback), accuracy, macro-F1 and net saving per email at the serving policy;
5. **gate**: the candidate is registered (stage candidate, with its parent, data fingerprint and both evaluations)
   only when it beats the champion by `retrain.gate.margin` on `retrain.gate.metric`; otherwise nothing is
   registered and the outcome says why.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from serving import clock
from serving.config import Home, PolicyConfig, QueuesConfig
from serving.mail.text import PREPROCESSING_VERSION
from serving.models.predictor import Predictor, load_version
from serving.models.registry import ModelMeta, ModelRegistry, RegistryError, open_registry
from serving.store.eventlog import EventLog
from training.config import TrainingConfig
from training.retrain.dataset import RetrainData, assemble, read_sources
from training.retrain.validate import ValidationReport, validate
from training.split import fingerprint

STAGES = 5


class RetrainStopped(ValueError):
    """The data checks failed: nothing was trained or registered. The message is one line; `report` the whole."""

    def __init__(self, model: str, report: ValidationReport, notes: tuple[str, ...] = ()) -> None:
        super().__init__(f"retrain of {model} stopped before training: {report.summary()}")
        self.report = report
        self.notes = notes


class NotRetrainable(ValueError):
    """The model is not learnt from data (a rules file) or is made of others (a cascade): nothing to retrain."""


RETRAINABLE = ("linear", "transformer")
_HOW_INSTEAD = {
    "rules": "its rules are edited, not learnt: edit configs/rules.yaml, then run mailroute train rules",
    "cascade": "it is made of two models: retrain them, then choose its threshold again with mailroute train cascade",
}


@dataclass(frozen=True)
class Scores:
    n: int
    accuracy: float | None
    macro_f1: float | None
    net_saving: float | None  # minutes per email at the serving policy


@dataclass(frozen=True)
class Gate:
    metric: str
    slice: str
    margin: float
    candidate: float | None
    champion: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class RetrainOutcome:
    model: str
    champion: str
    candidate: str | None  # the registered version, or None when the gate refused it
    gate: Gate
    evaluation: dict[str, dict[str, Scores]]  # slice -> {"candidate": .., "champion": ..}
    validation: ValidationReport
    rows: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)  # trials, warm start, notes
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _scores(
    labels: list[str], proba: np.ndarray, truth: list[str], queues: QueuesConfig, policy: PolicyConfig
) -> Scores:
    from sklearn.metrics import f1_score

    from experiments.analysis.thresholds import evaluate

    if not truth:
        return Scores(0, None, None, None)
    pred = np.asarray(labels)[proba.argmax(axis=1)]
    sample = pd.DataFrame({"top": pred, "p_top": proba.max(axis=1), "true_queue": truth})
    return Scores(
        len(truth),
        round(float(np.mean(pred == np.asarray(truth))), 6),
        round(float(f1_score(truth, pred, average="macro", labels=sorted(set(truth)), zero_division=0)), 6),
        round(evaluate(sample, queues, policy).net_saving, 6),
    )


def _evaluate(
    predictor: Predictor, held: pd.DataFrame, queues: QueuesConfig, policy: PolicyConfig
) -> tuple[dict[str, Scores], np.ndarray]:
    proba = predictor.predict_proba(held["text"].tolist())
    truth = held["label"].astype(str).tolist()
    out = {"all": _scores(predictor.labels, proba, truth, queues, policy)}
    for name in ("base", "recent"):
        mask = (held["slice"] == name).to_numpy()
        out[name] = _scores(predictor.labels, proba[mask], [t for t, m in zip(truth, mask, strict=True) if m],
                            queues, policy)  # fmt: skip
    return out, proba


def _gate(cfg: TrainingConfig, candidate: dict[str, Scores], champion: dict[str, Scores]) -> Gate:
    g = cfg.retrain.gate
    ours, theirs = getattr(candidate[g.slice], g.metric), getattr(champion[g.slice], g.metric)
    if ours is None or theirs is None:
        why = f"no held-out {g.slice} mail to compare on"
        return Gate(g.metric, g.slice, g.margin, ours, theirs, False, why)
    diff = ours - theirs
    passed = diff >= g.margin
    word = "beats" if passed else "does not beat"
    reason = (f"the candidate's {g.metric} {ours:.4f} {word} the champion's {theirs:.4f} by the margin {g.margin:g} "
              f"on {candidate[g.slice].n} held-out emails ({g.slice}): difference {diff:+.4f}")  # fmt: skip
    return Gate(g.metric, g.slice, g.margin, ours, theirs, passed, reason)


def retrain_model(
    home: Home,
    store: EventLog,
    name: str,
    cfg: TrainingConfig,
    queues: QueuesConfig,
    policy: PolicyConfig,
    *,
    progress: Callable[[str], None] = print,
    show_ray_logs: bool = False,
) -> RetrainOutcome:
    """Retrain model `name` (module docstring). Raises RetrainStopped when a data check fails."""
    started = time.perf_counter()
    registry = open_registry(home)
    cleaned = registry.clean_partial()  # registrations that died a day or more ago (a killed trainer's upload)
    if cleaned:
        progress(f"removed {cleaned} unfinished registration(s) older than a day from {registry.location}")
    champion_info = registry.get(f"{name}:champion", verify=True)
    champion_meta = champion_info.meta
    champion_ref = f"{name}:{champion_meta.version}"
    if champion_meta.kind not in RETRAINABLE:
        how = _HOW_INSTEAD.get(champion_meta.kind, "only linear and transformer models are retrained")
        raise NotRetrainable(f"{champion_ref} is a {champion_meta.kind} version, not retrained from feedback: {how}")

    def stage(k: int, text: str, since: float) -> float:
        progress(f"[{k}/{STAGES}] {name}: {text} ({time.perf_counter() - since:.1f} s)")
        return time.perf_counter()

    t = time.perf_counter()
    sources = read_sources(store, champion_meta, cfg.split)
    data = assemble(sources, cfg.retrain, champion_feedback_until=champion_meta.params.get("feedback_until"))
    rows = {"base": len(sources.base), "feedback": len(sources.feedback), "imported": len(sources.imported),
            "train": len(data.train), "held_out": len(data.held_out),
            "held_out_recent": int((data.held_out["slice"] == "recent").sum())}  # fmt: skip
    t = stage(1, f"data from {champion_ref}'s base data ({rows['base']} rows), {rows['feedback']} feedback-labelled "
                 f"and {rows['imported']} imported emails: {rows['train']} train, {rows['held_out']} held out "
                 f"({rows['held_out_recent']} recent)", t)  # fmt: skip
    report = validate(data, queues, cfg.retrain.validation)
    if report.failed:
        stage(2, report.summary(), t)
        raise RetrainStopped(name, report, data.notes)
    t = stage(2, report.summary(), t)

    from training.transformer import connect_ray

    started_ray = connect_ray(cfg.transformer, show_ray_logs)
    try:
        candidate, details, write_files = _train(home, name, champion_meta, champion_info.path, data, cfg)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    t = stage(3, details.pop("summary"), t)
    champion_predictor, _ = load_version(registry, champion_ref)
    theirs, _ = _evaluate(champion_predictor, data.held_out, queues, policy)
    ours, proba = _evaluate(candidate, data.held_out, queues, policy)
    evaluation = {s: {"candidate": ours[s], "champion": theirs[s]} for s in ours}
    t = stage(4, " | ".join(f"{s} ({ours[s].n}): accuracy {_fmt(ours[s].accuracy)} vs {_fmt(theirs[s].accuracy)}, "
                             f"net saving {_fmt(ours[s].net_saving)} vs {_fmt(theirs[s].net_saving)} min/email"
                             for s in ours if ours[s].n), t)  # fmt: skip
    gate = _gate(cfg, ours, theirs)
    registered = None
    if gate.passed:
        meta = _register(registry, name, champion_meta, champion_ref, data, candidate, proba, write_files,
                         evaluation, gate, details, cfg)  # fmt: skip
        registered = f"{meta.name}:{meta.version}"
        stage(5, f"registered {registered} (parent {champion_ref}): {gate.reason}", t)
    else:
        stage(5, f"nothing registered: {gate.reason}", t)
    details["notes"] = list(data.notes)
    outcome = RetrainOutcome(name, champion_ref, registered, gate, evaluation, report, rows, details,
                             round(time.perf_counter() - started, 1))  # fmt: skip
    _write_report(home, outcome)
    return outcome


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _train(
    home: Home, name: str, champion: ModelMeta, champion_path: Any, data: RetrainData, cfg: TrainingConfig
) -> tuple[Predictor, dict[str, Any], Callable[[Any], None]]:
    """Fit the candidate on the training rows; returns it, details for the record, and its files' writer."""
    texts = data.train["text"].tolist()
    labels = data.train["label"].astype(str).tolist()
    fp = fingerprint(texts, labels)
    if champion.kind == "linear":
        from training.retrain.tune import tune_linear

        tuned = tune_linear(texts, labels, cfg.linear, cfg.retrain.linear_alphas, storage=home.runs / "tune",
                            name=f"{name}-{fp.removeprefix('sha256:')[:12]}")  # fmt: skip
        trials = [asdict(tr) for tr in tuned.trials]
        summary = (f"Ray Tune over {len(trials)} L2 strengths: best {tuned.best_alpha:g} (validation macro-F1 "
                   + ", ".join(f"{tr['alpha']:g}: {tr['macro_f1']:.4f}" for tr in trials) + ")")  # fmt: skip
        details = {"summary": summary, "trials": trials, "alpha": tuned.best_alpha, "fingerprint": fp}
        return tuned.model, details, tuned.model.save
    from training.pipeline import fit_transformer, run_folder

    label_names = sorted(set(champion.labels) | set(labels))
    warm = cfg.retrain.warm_start and set(label_names) == set(champion.labels)
    tcfg = cfg.transformer.model_copy(update={
        "epochs": cfg.retrain.transformer_epochs, "learning_rate": cfg.retrain.transformer_learning_rate,
        "init_from": champion_path if warm else None,
    })  # fmt: skip
    run_cfg = cfg.model_copy(update={"transformer": tcfg})
    fitted = fit_transformer(
        texts, labels, run_cfg, run_dir=run_folder(home, name, fp, run_cfg), label_names=label_names
    )
    start = f"the champion's weights ({champion.name}:{champion.version})" if warm else "the base model's weights"
    details = {"summary": f"Ray Train, {tcfg.epochs} epochs from {start}; validation macro-F1 "
                          f"{fitted.result.metrics.get('best_val_macro_f1', 'n/a')}",
               "warm_start": warm, "run_dir": str(fitted.run_dir), "fingerprint": fp,
               "warnings": list(fitted.check.warnings), "config": tcfg.model_dump(mode="json")}  # fmt: skip

    def copy_export(folder: Any) -> None:
        shutil.copytree(fitted.export_dir, folder, dirs_exist_ok=True)

    return fitted.predictor, details, copy_export


def _register(
    registry: ModelRegistry, name: str, champion: ModelMeta, champion_ref: str, data: RetrainData,
    candidate: Predictor, proba: np.ndarray, write_files: Callable[[Any], None],
    evaluation: dict[str, dict[str, Scores]], gate: Gate, details: dict[str, Any], cfg: TrainingConfig,
) -> ModelMeta:  # fmt: skip
    from monitoring.reference import training_reference, with_reference

    frame = pd.concat([data.train, data.held_out.drop(columns=["slice"])], ignore_index=True)
    held = np.arange(len(data.train), len(frame))
    reference = training_reference(frame, held, proba, candidate.labels)  # the mail of now, for drift monitoring
    ours = evaluation["all"]["candidate"]
    spec = data.sources.base_spec
    try:
        return registry.register(
            name,
            with_reference(write_files, reference),
            kind=champion.kind,
            labels=list(candidate.labels),
            preprocessing_version=PREPROCESSING_VERSION,
            data_fingerprint=details["fingerprint"],
            metrics={
                "accuracy": ours.accuracy,
                "macro_f1": ours.macro_f1,
                "net_saving": ours.net_saving,
                "evaluation": {s: {k: asdict(v) for k, v in d.items()} for s, d in evaluation.items()},
                "gate": asdict(gate),
            },
            params={
                **(cfg.linear.model_dump() if champion.kind == "linear" else {}),
                **{k: v for k, v in details.items() if k not in ("fingerprint",)},
                "retrained_from": champion_ref,
                "base_data": None if spec is None else spec.to_json(),
                "split": champion.params.get("split") or cfg.split.model_dump(),
                "feedback_until": data.feedback_until,
                "rows": {
                    "train": len(data.train),
                    "held_out": len(data.held_out),
                    "feedback": len(data.sources.feedback),
                    "imported": len(data.sources.imported),
                    "base": len(data.sources.base),
                },
            },
            parent=champion_ref,
            warnings=details.get("warnings", ()),
        )
    except RegistryError:
        raise


def _write_report(home: Home, outcome: RetrainOutcome) -> None:
    out = home.reports / "retrain"
    out.mkdir(parents=True, exist_ok=True)
    stamp = clock.now().strftime("%Y%m%dT%H%M%S")
    (out / f"{stamp}-{outcome.model}.json").write_text(json.dumps(outcome.to_json(), indent=2, default=str))
