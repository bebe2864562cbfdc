"""`mailroute ...`: the one command line for every user of the system.

This is the single entry point that composes all packages; each subcommand imports what it needs when it runs, so
`mailroute models list` does not pay for torch, and serving's runtime modules still never import `training`.
Every failure is one line on stderr: exit 2 for usage and config errors, 1 for everything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from serving.config import ConfigError, Home, parse_config

log = logging.getLogger("mailroute")
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command line; exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        raise UsageError(f"{self.prog}: {message}")


HOLDOUT_HELP = "share of the data held out of training, half to calibrate and half to test (default: config)"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# ---- data ----------------------------------------------------------------------------------------------------
def cmd_data_synth(args: argparse.Namespace) -> int:
    from training.synth import generate, write_corpus

    length = "long" if args.long else "short"
    frame = generate(args.n, seed=args.seed, drift=args.drift, label_noise=args.label_noise, length=length)
    write_corpus(frame, Path(args.out))
    counts = frame["queue"].value_counts().to_dict()
    if args.json:
        _print_json({"path": str(args.out), "rows": len(frame), "length": length, "queues": counts})
    else:
        kind = "long emails" if args.long else "emails"
        print(f"wrote {len(frame)} {kind} to {args.out} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0


# ---- training and evaluation ---------------------------------------------------------------------------------
def _data_spec(args: argparse.Namespace) -> Any:
    from training.pipeline import DataSpec

    return DataSpec(Path(args.data), text_col=args.text_col, label_col=args.label_col)


def _training_config(args: argparse.Namespace, transformer: dict[str, Any] | None = None) -> Any:
    """The training config file with the command line's overrides, validated like the file itself."""
    from training.config import TrainingConfig, load_training

    cfg = load_training(args.config)
    data = cfg.model_dump()
    if args.holdout is not None:
        data["split"]["holdout_fraction"] = args.holdout
    data["transformer"].update({k: v for k, v in (transformer or {}).items() if v is not None})
    return parse_config(data, TrainingConfig, "command line")


def cmd_train_linear(args: argparse.Namespace) -> int:
    from training.pipeline import train_linear

    cfg = _training_config(args)
    outcome = train_linear(_data_spec(args), cfg, Home.resolve(args.home), name=args.name)
    _print_train_outcome(outcome)
    return 0


def cmd_train_transformer(args: argparse.Namespace) -> int:
    from training.pipeline import train_transformer_job

    overrides = {"num_workers": args.workers, "epochs": args.epochs, "learning_rate": args.learning_rate}
    cfg = _training_config(args, overrides)
    outcome = train_transformer_job(_data_spec(args), cfg, Home.resolve(args.home), name=args.name)
    _print_train_outcome(outcome)
    return 0


def _print_train_outcome(outcome: Any) -> None:
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.pipeline import evaluate_version

    outcome = evaluate_version(args.model, _data_spec(args), Home.resolve(args.home), threshold=args.threshold)
    r = outcome.result
    if args.json:
        _print_json(
            {
                "model": f"{outcome.meta.name}:{outcome.meta.version}",
                "report": str(outcome.report),
                "data": outcome.data,
                "skipped": outcome.skipped,
                **r.to_json(),
                "parts": {name: part.summary() for name, part in outcome.parts.items()},
            }
        )
        return 0
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
    return 0


# ---- registry ------------------------------------------------------------------------------------------------
def _registry(args: argparse.Namespace) -> Any:
    from serving.models.registry import ModelRegistry

    return ModelRegistry(Home.resolve(args.home).registry)


def cmd_models_list(args: argparse.Namespace) -> int:
    from serving.models.registry import VersionInfo

    rows = []
    for item in _registry(args).versions(args.name):
        if isinstance(item, VersionInfo):
            m = item.meta
            rows.append(
                {
                    "model": f"{m.name}:{m.version}",
                    "kind": m.kind,
                    "stage": item.stage,
                    "created": m.created,
                    "labels": len(m.labels),
                    "accuracy": m.metrics.get("accuracy"),
                    "macro_f1": m.metrics.get("macro_f1"),
                }
            )
        else:
            rows.append({"model": f"{item[0]}:{item[1]}", "stage": "corrupt", "error": item[2]})
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no models registered yet (train one: mailroute train linear --data PATH)")
    else:
        for row in rows:
            if row["stage"] == "corrupt":
                print(f"{row['model']:<24} CORRUPT  {row['error']}")
            else:
                print(
                    f"{row['model']:<24} {row['kind']:<12} {row['stage']:<10} {row['created']}  "
                    f"labels {row['labels']:<3} accuracy {row['accuracy']}  macro-F1 {row['macro_f1']}"
                )
    return 0


def _info_json(info: Any) -> dict[str, Any]:
    return {**info.meta.to_json(), "stage": info.stage, "path": str(info.path)}


def cmd_models_show(args: argparse.Namespace) -> int:
    info = _registry(args).get(args.model, verify=True)
    data = _info_json(info)
    if args.json:
        _print_json(data)
    else:
        data.pop("files")
        warnings = data.pop("warnings")
        for key, value in data.items():
            print(f"{key}: {value}")
        for warning in warnings:
            print(f"WARNING: {warning}")
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    info = _registry(args).promote(args.model, args.stage)
    print(f"{info.meta.name}:{info.meta.version} is now {info.stage}")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    info = _registry(args).rollback(args.name)
    print(f"{info.meta.name}:{info.meta.version} is champion again")
    return 0


# ---- serving and experiments ---------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import time

    from experiments.config import load_experiments
    from serving import launch
    from serving.config import load_queues, load_serving

    queues, serving = load_queues(), load_serving()
    experiment = load_experiments().experiment

    running = launch.start(Home.resolve(args.home), queues, serving, experiment, port=args.port)

    def terminate(signum: int, frame: object) -> None:  # SIGTERM stops as cleanly as Ctrl-C: no orphan proxy
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # after ray.init, which installs a handler of its own
    print(f"mailroute serving at {running.url} ({running.proxy} proxy); Ctrl-C stops", flush=True)
    if args.exit_after_start:
        launch.stop(running.started_ray)
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping (flushing the event log)...", file=sys.stderr)
        launch.stop(running.started_ray)
    return 0


def _client(args: argparse.Namespace) -> Any:
    from serving.client import MailrouteClient
    from serving.config import load_serving

    token = os.environ.get(load_serving().admin_token_env)
    return MailrouteClient(args.url, admin_token=token, retries=1)


def _http_errors() -> tuple[type[BaseException], ...]:
    from serving.client import MailrouteError

    return (MailrouteError,)


def cmd_experiment_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        data = client.experiment()
    if args.json:
        _print_json(data)
        return 0
    exp = data["experiment"]
    print(f"experiment {exp['name']} ({'active' if exp['active'] else 'stopped'}), coverage {exp['coverage']}")
    for arm, spec in exp["arms"].items():
        print(f"  {arm:<14} {spec['model']}:{spec['version']:<10} weight {spec['weight']}")
    print("  ranges: " + ", ".join(f"{r['arm']} [{r['start']:.4f}, {r['end']:.4f})" for r in data["ranges"]))
    return 0


def cmd_experiment_set_weights(args: argparse.Namespace) -> int:
    weights: dict[str, float] = {}
    for item in args.weights:
        arm, sep, value = item.partition("=")
        try:
            weights[arm] = float(value)
        except ValueError:
            raise UsageError(f"mailroute experiment set-weights: expected ARM=WEIGHT, got '{item}'") from None
        if not sep:
            raise UsageError(f"mailroute experiment set-weights: expected ARM=WEIGHT, got '{item}'")
    with _client(args) as client:
        name = args.name or client.experiment()["experiment"]["name"]
        result = client.change_experiment(name, {"arms": weights})
    print(f"experiment {name}: weights {weights}; {result['moved_share']:.2%} of users changed arm")
    return 0


def cmd_experiment_stop(args: argparse.Namespace) -> int:
    with _client(args) as client:
        name = args.name or client.experiment()["experiment"]["name"]
        client.change_experiment(name, {"active": False})
    print(f"experiment {name} stopped: every user is served by the holdout arm")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Send a labelled file's emails to a running service, as a mail gateway would, and the labels back as
    agent feedback, as a helpdesk would."""
    from serving.client import MailrouteClient
    from training.data import read_dataset

    data = read_dataset(Path(args.data), label_col=args.label_col, require_labels=args.feedback)
    frame = data.frame.head(args.n) if args.n else data.frame
    routed = correct = triaged = 0
    with MailrouteClient(args.url, retries=3) as client:
        for row in frame.itertuples():
            user = str(row.user_id or f"replay-{row.Index}")
            answer = client.route(user, subject=str(row.subject), body=str(row.body), email_id=str(row.email_id))
            routed += 1
            triaged += answer["queue"] == "triage"
            correct += answer["queue"] == row.label
            if args.feedback:
                client.feedback(answer["request_id"], str(row.label), handling_seconds=30.0, agent_id="replay")
    auto = routed - triaged
    print(f"routed {routed} emails: {auto} auto-routed ({correct} to the right queue), {triaged} to triage"
          + (f"; sent {routed} feedback records" if args.feedback else ""))  # fmt: skip
    return 0


def cmd_log_stats(args: argparse.Namespace) -> int:
    from serving.config import load_serving
    from serving.store.eventlog import open_event_log

    home = Home.resolve(args.home)
    url = load_serving().event_log.url or f"sqlite:///{home.event_log}"
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise FileNotFoundError(f"no event log at {url.removeprefix('sqlite:///')}: nothing was routed yet")
    stats = open_event_log(url).stats()
    data: dict[str, Any] = {"predictions": stats.predictions, "feedback": stats.feedback, "by_arm": stats.by_arm,
            "by_queue": stats.by_queue, "by_fallback_reason": stats.by_fallback_reason,
            "feedback_accuracy": stats.feedback_accuracy}  # fmt: skip
    if args.json:
        _print_json(data)
        return 0
    print(f"{stats.predictions} routed emails, {stats.feedback} with feedback")
    for key in ("by_arm", "by_queue", "by_fallback_reason"):
        print(
            f"  {key.removeprefix('by_')}: " + (", ".join(f"{k} {v}" for k, v in sorted(data[key].items())) or "none")
        )
    if stats.feedback_accuracy is not None:
        print(f"  accuracy on feedback: {stats.feedback_accuracy:.4f}")
    return 0


# ---- parser --------------------------------------------------------------------------------------------------
def _add(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(func=func)
    return parser


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="CSV, JSONL, mbox file or a folder of .eml files")
    parser.add_argument("--text-col", default=None, help="column holding the whole text (else subject + body)")
    parser.add_argument("--label-col", default="label", help="column holding the label (default: label)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mailroute", description="Route customer emails to specialist queues.")
    parser.add_argument("--home", default=None, help="state folder (default: $MAILROUTE_HOME or ./.mailroute)")
    parser.add_argument("--config-dir", default=None, help="folder of the YAML configs (default: ./configs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (and tracebacks) to stderr")
    top = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = top.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    synth = _add(data, "synth", cmd_data_synth, "write a synthetic support-email corpus")
    synth.add_argument("--n", type=int, default=20_000, help="number of emails")
    synth.add_argument("--seed", type=int, default=1)
    synth.add_argument("--drift", type=float, default=0.0, help="0..1: how far the mail has drifted")
    synth.add_argument("--label-noise", type=float, default=0.02, help="share of wrongly labelled emails")
    synth.add_argument(
        "--long",
        action="store_true",
        help="long emails as agents see them (request among paragraphs of context); adds a key_sentence column",
    )
    synth.add_argument("--out", required=True, help=".jsonl or .csv path")
    synth.add_argument("--json", action="store_true")

    train = top.add_parser("train", help="train a model and register it").add_subparsers(
        dest="train_command", required=True
    )
    linear = _add(train, "linear", cmd_train_linear, "train TF-IDF + logistic regression")
    _data_args(linear)
    linear.add_argument("--config", default=None, help="training config (default: configs/training.yaml)")
    linear.add_argument("--name", default="linear", help="model name in the registry (default: linear)")
    linear.add_argument("--holdout", type=float, default=None, help=HOLDOUT_HELP)

    transformer = _add(train, "transformer", cmd_train_transformer, "fine-tune MiniLM with Ray Train")
    _data_args(transformer)
    transformer.add_argument("--config", default=None, help="training config (default: configs/training.yaml)")
    transformer.add_argument("--name", default="transformer", help="model name in the registry")
    transformer.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: config)")
    transformer.add_argument("--epochs", type=int, default=None, help="most epochs (default: config)")
    transformer.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: config)")
    transformer.add_argument("--holdout", type=float, default=None, help=HOLDOUT_HELP)

    evaluate = _add(top, "evaluate", cmd_evaluate, "score a registered model on labelled data")
    evaluate.add_argument("--model", required=True, help="name, name:champion, name:latest or name:vN")
    _data_args(evaluate)
    evaluate.add_argument("--threshold", type=float, default=None, help="override the policy's threshold")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")

    models = top.add_parser("models", help="the model registry").add_subparsers(dest="models_command", required=True)
    lst = _add(models, "list", cmd_models_list, "list registered versions")
    lst.add_argument("--name", default=None)
    lst.add_argument("--json", action="store_true")
    show = _add(models, "show", cmd_models_show, "show one version")
    show.add_argument("model")
    show.add_argument("--json", action="store_true")
    promote = _add(models, "promote", cmd_models_promote, "make a version champion (or canary)")
    promote.add_argument("model")
    promote.add_argument("--stage", choices=["champion", "canary"], default="champion")
    rollback = _add(models, "rollback", cmd_models_rollback, "restore the previous champion")
    rollback.add_argument("name")

    serve_cmd = _add(top, "serve", cmd_serve, "serve the A/B experiment over HTTP (local Ray, or $RAY_ADDRESS)")
    serve_cmd.add_argument("--port", type=int, default=None, help="HTTP port (default: serving.yaml's, 8000)")
    serve_cmd.add_argument("--exit-after-start", action="store_true", help=argparse.SUPPRESS)

    exp = top.add_parser("experiment", help="read or change the running experiment").add_subparsers(
        dest="experiment_command", required=True
    )
    show_exp = _add(exp, "show", cmd_experiment_show, "show the running experiment")
    weights = _add(exp, "set-weights", cmd_experiment_set_weights, "change arm weights (admin token from env)")
    weights.add_argument("weights", nargs="+", help="ARM=WEIGHT ... (weights sum to 1)")
    stop_exp = _add(exp, "stop", cmd_experiment_stop, "stop the experiment: everyone gets the holdout arm")
    for sub_parser in (show_exp, weights, stop_exp):
        sub_parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    for sub_parser in (weights, stop_exp):
        sub_parser.add_argument("--name", default=None, help="experiment name (default: the running one)")
    show_exp.add_argument("--json", action="store_true")

    replay = _add(top, "replay", cmd_replay, "send a labelled file's emails (and labels as feedback) to a server")
    replay.add_argument("--data", required=True, help="CSV, JSONL, mbox or .eml folder")
    replay.add_argument("--label-col", default="label", help="column holding the true queue")
    replay.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    replay.add_argument("--n", type=int, default=0, help="at most this many emails (0: all)")
    replay.add_argument("--feedback", action="store_true", help="send each label back as agent feedback")

    logs = top.add_parser("log", help="the event log").add_subparsers(dest="log_command", required=True)
    stats = _add(logs, "stats", cmd_log_stats, "count logged emails by arm, queue and fallback reason")
    stats.add_argument("--json", action="store_true")
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    from serving.models.registry import RegistryError

    return (RegistryError, ValueError, OSError, *_http_errors())


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.config_dir:
        os.environ["MAILROUTE_CONFIG_DIR"] = args.config_dir
    try:
        return int(args.func(args))
    except UsageError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as err:
        print(f"mailroute: config error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except _expected_errors() as err:
        if args.verbose:
            log.exception("failed")
        print(f"mailroute: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("mailroute: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: still one line for the user, the traceback with -v
        if args.verbose:
            log.exception("internal error")
        print(
            f"mailroute: internal error: {type(err).__name__}: {err} (run with -v for details)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
