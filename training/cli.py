"""Training's commands: `mailroute data synth`, `train linear`, `train transformer` and `evaluate`.

Each command reads its options, calls the job in `training.pipeline` (imported in the body: it pulls in pandas and
scikit-learn, the transformer torch and Ray) and prints the job's result object. The transformer's progress comes
from its Train workers through `training.progress`; Ray's own output reaches the terminal only with `-v`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from serving.cli import options, print_json
from serving.config import parse_config

if TYPE_CHECKING:
    from training.config import TrainingConfig
    from training.pipeline import DataSpec, TrainOutcome
    from training.rules import RulesOutcome

app = typer.Typer()
data_app = typer.Typer(help="data tools")
train_app = typer.Typer(help="train a model and register it")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")

DataOption = Annotated[Path, typer.Option("--data", help="CSV, JSONL, mbox file or a folder of .eml files")]
TextColOption = Annotated[
    str | None, typer.Option(help="column holding the whole text (else subject + body)", show_default=False)
]
LabelColOption = Annotated[str, typer.Option(help="column holding the label")]
ConfigOption = Annotated[
    Path | None, typer.Option(help="training config (default: configs/training.yaml)", show_default=False)
]
HoldoutOption = Annotated[
    float | None,
    typer.Option(
        help="share of the data held out of training, half to calibrate and half to test (default: config)",
        show_default=False,
    ),
]


@data_app.command("synth", help="write a synthetic support-email corpus")
def data_synth(
    out: Annotated[Path, typer.Option(help=".jsonl or .csv path")],
    n: Annotated[int, typer.Option("--n", min=1, help="number of emails")] = 20_000,
    seed: Annotated[int, typer.Option()] = 1,
    drift: Annotated[float, typer.Option(min=0.0, max=1.0, help="0..1: how far the mail has drifted")] = 0.0,
    label_noise: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of wrongly labelled emails")] = 0.02,
    long: Annotated[
        bool,
        typer.Option(
            "--long",
            help="long emails as agents see them (request among paragraphs of context); adds a key_sentence column",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    from training.synth import generate, write_corpus

    length = "long" if long else "short"
    frame = generate(n, seed=seed, drift=drift, label_noise=label_noise, length=length)
    write_corpus(frame, out)
    counts = frame["queue"].value_counts().to_dict()
    if as_json:
        print_json({"path": str(out), "rows": len(frame), "length": length, "queues": counts})
    else:
        kind = "long emails" if long else "emails"
        print(f"wrote {len(frame)} {kind} to {out} ({', '.join(f'{k} {v}' for k, v in counts.items())})")


def _data_spec(data: Path, text_col: str | None, label_col: str) -> DataSpec:
    from training.pipeline import DataSpec

    return DataSpec(data, text_col=text_col, label_col=label_col)


def _training_config(
    config: Path | None, holdout: float | None, transformer: dict[str, Any] | None = None
) -> TrainingConfig:
    """The training config file with the command line's overrides, validated like the file itself."""
    from training.config import TrainingConfig, load_training

    data = load_training(config).model_dump()
    if holdout is not None:
        data["split"]["holdout_fraction"] = holdout
    data["transformer"].update({k: v for k, v in (transformer or {}).items() if v is not None})
    return parse_config(data, TrainingConfig, "command line")


def _print_train_outcome(outcome: TrainOutcome) -> None:
    t = outcome.test
    print(
        f"held-out test ({t.n} emails): accuracy {t.accuracy:.4f}, macro-F1 {t.macro_f1:.4f}, "
        f"coverage {t.coverage:.3f} at threshold {t.threshold} "
        f"(accuracy on routed {t.accuracy_on_routed:.4f}); trained in {outcome.seconds:.1f} s"
    )
    if outcome.skipped:
        print(f"skipped {outcome.skipped} malformed records (see the warnings above)", file=sys.stderr)
    for warning in outcome.meta.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report: {outcome.report.parent}")
    print(f"{outcome.meta.name}:{outcome.meta.version}")


@train_app.command("linear", help="train TF-IDF + logistic regression")
def train_linear(
    ctx: typer.Context,
    data: DataOption,
    text_col: TextColOption = None,
    label_col: LabelColOption = "label",
    config: ConfigOption = None,
    name: Annotated[str, typer.Option(help="model name in the registry")] = "linear",
    holdout: HoldoutOption = None,
) -> None:
    from training import pipeline
    from training.progress import spinner

    cfg = _training_config(config, holdout)
    spec = _data_spec(data, text_col, label_col)
    with spinner(f"training the linear model on {data.name}"):
        outcome = pipeline.train_linear(spec, cfg, options(ctx).resolve_home(), name=name)
    _print_train_outcome(outcome)


@train_app.command("transformer", help="fine-tune MiniLM with Ray Train")
def train_transformer(
    ctx: typer.Context,
    data: DataOption,
    text_col: TextColOption = None,
    label_col: LabelColOption = "label",
    config: ConfigOption = None,
    name: Annotated[str, typer.Option(help="model name in the registry")] = "transformer",
    workers: Annotated[int | None, typer.Option(help="Ray Train workers (default: config)", show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(help="most epochs (default: config)", show_default=False)] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="peak learning rate (default: config)", show_default=False)
    ] = None,
    holdout: HoldoutOption = None,
) -> None:
    from training.pipeline import train_transformer_job
    from training.progress import TrainingDisplay

    overrides = {"num_workers": workers, "epochs": epochs, "learning_rate": learning_rate}
    cfg = _training_config(config, holdout, overrides)
    verbose = options(ctx).verbose
    with TrainingDisplay(cfg.transformer.num_workers) as display:
        outcome = train_transformer_job(
            _data_spec(data, text_col, label_col),
            cfg,
            options(ctx).resolve_home(),
            name=name,
            on_progress=display,
            show_ray_logs=verbose,
        )
    _print_train_outcome(outcome)


RulesOption = Annotated[Path, typer.Option("--rules", help="a rules file (configs/rules.yaml)")]
ThresholdOption = Annotated[float | None, typer.Option(help="override the policy's threshold", show_default=False)]


def _print_rules(outcome: RulesOutcome) -> None:
    r = outcome.result
    print(f"rules on {r.n} held-out emails (each rule's precision measured on the other half as its confidence):")
    print(f"  a rule matched {outcome.matched:.1%} of them, {outcome.matched_accuracy:.1%} of those rightly")
    print(f"  threshold {r.threshold}: {r.coverage:.1%} auto-routed (accuracy {r.accuracy_on_routed:.4f}), "
          f"{r.triage_share:.1%} to triage")  # fmt: skip
    width = max(len(rule.name) for rule in outcome.rules.rules)
    print(f"  {'rule'.ljust(width)}  queue          fired  precision   (all {outcome.n} emails)")
    for rule in outcome.rules.rules:
        score = outcome.scores[rule.name]
        shown = f"{score.precision:9.3f}" if score.fired else "    never"
        print(f"  {rule.name.ljust(width)}  {rule.queue:<13} {score.fired:6d}  {shown}")


def _rules_json(outcome: RulesOutcome) -> dict[str, Any]:
    return {**outcome.result.to_json(), "matched_share": outcome.matched, "matched_accuracy": outcome.matched_accuracy,
            "rules": {name: {"fired": s.fired, "correct": s.correct, "precision": s.precision}
                      for name, s in outcome.scores.items()}}  # fmt: skip


@train_app.command("rules", help="measure a rules file on labelled data and register it (kind rules)")
def train_rules(
    ctx: typer.Context,
    rules: RulesOption,
    data: DataOption,
    text_col: TextColOption = None,
    label_col: LabelColOption = "label",
    name: Annotated[str, typer.Option(help="name in the registry")] = "rules",
    threshold: ThresholdOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    from serving.config import load_queues, load_serving
    from training.rules import register_rules

    thr = load_serving().policy.confidence_threshold if threshold is None else threshold
    spec = _data_spec(data, text_col, label_col)
    meta, outcome = register_rules(rules, spec, load_queues(), options(ctx).resolve_home(), thr, name=name)
    if as_json:
        print_json({"model": f"{meta.name}:{meta.version}", **_rules_json(outcome)})
        return
    _print_rules(outcome)
    print(f"{meta.name}:{meta.version}")


def _print_cascade(plan: Any) -> None:
    print(f"cascade {plan.first} -> {plan.second} on {plan.n} validation emails (CPU ms per email, one thread):")
    print(f"  {plan.first} alone: accuracy {plan.first_accuracy:.4f}, {plan.first_ms:.2f} ms")
    print(f"  {plan.second} alone: accuracy {plan.second_accuracy:.4f}, {plan.second_ms:.2f} ms")
    print("  threshold  sent on  accuracy  CPU ms  share of the second's cost")
    shown = {round(p.threshold, 3) for p in plan.curve[::5]} | {plan.chosen.threshold}
    for p in plan.curve:
        if round(p.threshold, 3) in shown:
            mark = "  <- chosen" if p is plan.chosen or p.threshold == plan.chosen.threshold else ""
            print(f"  {p.threshold:9.2f}  {p.escalated:7.1%}  {p.accuracy:8.4f}  {p.cpu_ms:6.2f}  "
                  f"{p.cpu_ms / plan.second_ms if plan.second_ms else 0:26.2f}{mark}")  # fmt: skip
    c = plan.chosen
    verdict = "at least the better model's accuracy" if plan.reached else "below the better model's accuracy"
    print(f"  chosen: threshold {c.threshold:.2f}, {c.escalated:.1%} sent on, accuracy {c.accuracy:.4f} ({verdict}), "
          f"{c.cpu_ms:.2f} ms per email")  # fmt: skip


@train_app.command("cascade", help="choose a cascade's threshold on validation data and register it (kind cascade)")
def train_cascade(
    ctx: typer.Context,
    data: DataOption,
    first: Annotated[str, typer.Option(help="the cheap stage: name, name:champion or name:vN")] = "linear",
    second: Annotated[str, typer.Option(help="the strong stage: name, name:champion or name:vN")] = "transformer",
    text_col: TextColOption = None,
    label_col: LabelColOption = "label",
    name: Annotated[str, typer.Option(help="name in the registry")] = "cascade",
    max_cost_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="CPU budget per email, as a share of the second stage's")
    ] = 1 / 3,
    as_json: Annotated[bool, typer.Option("--json", help="print the curve and the result as JSON")] = False,
) -> None:
    from serving.config import load_serving
    from serving.models.registry import open_registry
    from training.cascade import plan_cascade, register_cascade
    from training.pipeline import load_labelled

    home = options(ctx).resolve_home()
    spec = _data_spec(data, text_col, label_col)
    frame = load_labelled(spec).frame
    registry = open_registry(home)
    plan, _, proba = plan_cascade(registry, first, second, [str(t) for t in frame["text"]],
                                  [str(v) for v in frame["label"]], cost_share=max_cost_share)  # fmt: skip
    threshold = load_serving().policy.confidence_threshold
    meta, result = register_cascade(home, plan, frame, proba, threshold, name=name, data=spec.to_json())
    if as_json:
        print_json({"model": f"{meta.name}:{meta.version}", **plan.to_json(), "result": result.to_json()})
        return
    _print_cascade(plan)
    print(f"{meta.name}:{meta.version}")


@data_app.command("suggest-rules", help="a first rules file from labelled data: each queue's most telling words")
def suggest_rules_command(
    data: DataOption,
    text_col: TextColOption = None,
    label_col: LabelColOption = "label",
    per_queue: Annotated[int, typer.Option(min=1, max=50, help="words per queue")] = 6,
) -> None:
    import yaml

    from serving.models.rules import suggest_rules
    from training.pipeline import load_labelled

    frame = load_labelled(_data_spec(data, text_col, label_col)).frame
    rules = suggest_rules([str(t) for t in frame["text"]], [str(v) for v in frame["label"]], per_queue=per_queue)
    print("# Suggested from " + data.name + ": review each rule before use (order matters: the first match answers)")
    print(yaml.safe_dump({"rules": rules}, sort_keys=False), end="")


@app.command("evaluate", help="score a registered model, or a rules file, on labelled data")
def evaluate(
    ctx: typer.Context,
    data: DataOption,
    model: Annotated[
        str | None, typer.Option(help="name, name:champion, name:latest or name:vN", show_default=False)
    ] = None,
    rules: Annotated[
        Path | None, typer.Option("--rules", help="a rules file instead of a model", show_default=False)
    ] = None,
    text_col: TextColOption = None,
    label_col: LabelColOption = "label",
    threshold: ThresholdOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    from training.pipeline import evaluate_version

    if (model is None) == (rules is None):
        raise typer.BadParameter("give --model or --rules (one of them)")
    spec = _data_spec(data, text_col, label_col)
    if rules is not None:
        from serving.config import load_queues, load_serving
        from training.rules import evaluate_rules

        thr = load_serving().policy.confidence_threshold if threshold is None else threshold
        outcome_rules = evaluate_rules(rules, spec, load_queues(), thr)
        if as_json:
            print_json({"rules": str(rules), "data": str(data), **_rules_json(outcome_rules)})
        else:
            _print_rules(outcome_rules)
        return
    assert model is not None
    outcome = evaluate_version(model, spec, options(ctx).resolve_home(), threshold=threshold)
    r = outcome.result
    if as_json:
        print_json(
            {
                "model": f"{outcome.meta.name}:{outcome.meta.version}",
                "report": str(outcome.report),
                "data": outcome.data,
                "skipped": outcome.skipped,
                **r.to_json(),
                "parts": {name: part.summary() for name, part in outcome.parts.items()},
            }
        )
        return
    print(f"model {outcome.meta.name}:{outcome.meta.version} on {outcome.data} ({r.n} emails)")
    print(f"  accuracy {r.accuracy:.4f}   macro-F1 {r.macro_f1:.4f}   ECE {r.ece:.4f}")
    for name, part in outcome.parts.items():
        print(f"  {name.replace('_', ' ')} alone: accuracy {part.accuracy:.4f}   macro-F1 {part.macro_f1:.4f}")
    print(
        f"  threshold {r.threshold}: {r.coverage:.1%} auto-routed (accuracy {r.accuracy_on_routed:.4f}), "
        f"{r.triage_share:.1%} to triage"
    )
    width = max(len(c.label) for c in r.per_class)
    print(f"  {'queue'.ljust(width)}  precision  recall     f1  support")
    for c in r.per_class:
        print(f"  {c.label.ljust(width)}  {c.precision:9.3f}  {c.recall:6.3f}  {c.f1:5.3f}  {c.support:7d}")
    print("  coverage/accuracy: " + ", ".join(f"{p.threshold}: {p.coverage:.2f}/{p.accuracy:.3f}" for p in r.curve))
    print(f"report: {outcome.report.parent}")
