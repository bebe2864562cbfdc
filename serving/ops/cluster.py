"""The Serve config a Kubernetes cluster runs: KubeRay's RayService embeds it as `serveConfigV2`
(docs/cluster/rayservice.yaml), and `docs/cluster/make_serve_config.py` writes it there.

It is built from the same pieces as `mailroute serve`'s deploy (`serving.ops.apps`): the router application and one
application per arm (and the shadow), with the configs' contents as their arguments, so that a config edited
without regenerating the manifest is a failing test (tests/test_cluster_manifest.py). Three things differ from a
local start, each because KubeRay, not `mailroute serve`, hands this config to Serve:

- every arm's version and kind are inputs (`ArmPin`), not read from a registry: the generator runs where no
  registry is, and Serve gets the config as written, so each arm must name a concrete `vN` (a `champion` left in
  would be resolved by every replica at its own load, and two replicas could serve two versions after a promotion);
- the paths are the container's (`CLUSTER_HOME`, and `CLUSTER_CONFIG_DIR` where the image keeps the configs), not
  the generating machine's;
- there is no runtime environment: a cluster runs on the wall clock (`serving.clock`'s scaled clock is for
  simulations), and the image holds the code.

No secret is in it: the event log's URL, the user salt and the tokens reach the replicas through the pods'
environment (Kubernetes Secrets), which each replica reads itself (`serving.store.location`, `serving.auth`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.config import ExperimentConfig, load_experiments
from serving.config import ConfigError, Home, load_queues, load_serving
from serving.ops.apps import arm_app_config, arm_of_app, arm_specs, router_app
from serving.router import SHADOW

CLUSTER_HOME = "/var/lib/mailroute"  # MAILROUTE_HOME in the image (docs/cluster/Dockerfile)
CLUSTER_CONFIG_DIR = "/app/configs"  # MAILROUTE_CONFIG_DIR in the image: the configs baked in at build
KINDS = ("linear", "transformer")  # the registry's model kinds (serving.models.predictor loads each)
MANIFEST_KEY = "serveConfigV2"
_VERSION = re.compile(r"v\d+")


@dataclass(frozen=True)
class ArmPin:
    """What one arm serves on the cluster: a concrete registry version and the model's kind (its loader)."""

    version: str
    kind: str

    def __post_init__(self) -> None:
        if not _VERSION.fullmatch(self.version):
            raise ValueError(f"version '{self.version}': give a concrete version such as v3, not a stage name")
        if self.kind not in KINDS:
            raise ValueError(f"kind '{self.kind}': one of {', '.join(KINDS)}")

    @classmethod
    def parse(cls, text: str) -> ArmPin:
        """`v3:linear` -> ArmPin('v3', 'linear')."""
        version, sep, kind = text.partition(":")
        if not sep:
            raise ValueError(f"'{text}': expected VERSION:KIND, e.g. v3:linear")
        return cls(version, kind)

    def __str__(self) -> str:
        return f"{self.version}:{self.kind}"


def pin_experiment(experiment: ExperimentConfig, pins: Mapping[str, ArmPin]) -> ExperimentConfig:
    """The experiment with every arm's (and the shadow's, under `shadow`) version replaced by its pin. ValueError
    when an arm has no pin, a pin names no arm, or a pin contradicts a concrete version the file names."""
    data = experiment.model_dump(mode="json")
    specs = dict(data["arms"])
    if data.get("shadow"):
        specs[SHADOW] = data["shadow"]
    missing = sorted(set(specs) - set(pins))
    if missing:
        raise ValueError(f"no pinned version for {', '.join(missing)}: give --pin ARM=VERSION:KIND for each")
    unknown = sorted(set(pins) - set(specs))
    if unknown:
        raise ValueError(f"pins for {', '.join(unknown)}, which the experiment does not have ({', '.join(specs)})")
    for arm, spec in specs.items():
        wanted = pins[arm].version
        if _VERSION.fullmatch(spec["version"]) and spec["version"] != wanted:
            raise ValueError(f"{arm}: experiments.yaml names {spec['version']}, the pin {wanted}")
        spec["version"] = wanted
    return ExperimentConfig.model_validate(data)


def serve_config(
    configs: Path,
    pins: Mapping[str, ArmPin],
    *,
    home: str = CLUSTER_HOME,
    config_dir: str = CLUSTER_CONFIG_DIR,
) -> dict[str, Any]:
    """The Serve config (`ServeDeploySchema`'s shape) of the configs in `configs` with these pins: Serve's proxy where
    serving.yaml's `proxy_location` says (HeadOnly by default: one proxy, so the Kubernetes Service has one target),
    listening on every interface of the pod at serving.yaml's port; the router; one app per arm.
    A config that does not load is a ConfigError; a pin that does not fit, a ValueError."""
    from monitoring.schedule import monitoring_config

    queues, serving = load_queues(configs / "queues.yaml"), load_serving(configs / "serving.yaml")
    experiment = pin_experiment(load_experiments(configs / "experiments.yaml").experiment, pins)
    monitoring_config(configs)  # read in the pods by the scheduled jobs: a broken file fails here, not there
    serving.policy.check_queues(queues.names)
    if serving.in_router_arms:  # the manifest's pins are read back from the arm applications (pins_of)
        raise ConfigError(
            f"serving.yaml: in_router_arms ({', '.join(serving.in_router_arms)}) is not supported in the cluster "
            "manifest yet: leave it empty there (each arm runs as its own application)"
        )
    root = Home(Path(home))
    queues_args = queues.model_dump(mode="json")
    router = router_app(root, queues_args, serving, experiment, serving.policy)
    router["runtime_env"] = {}
    router["args"]["config_dir"] = config_dir
    arms = []
    for arm, (model, version) in arm_specs(experiment).items():
        app = arm_app_config(root, queues_args, serving, arm, model, version, kind=pins[arm].kind)
        arms.append({**app, "runtime_env": {}})
    return {
        "proxy_location": serving.proxy_location,
        "http_options": {"host": "0.0.0.0", "port": serving.port},
        "applications": [router, *arms],
    }


def pins_of(config: Mapping[str, Any]) -> dict[str, ArmPin]:
    """The pins a Serve config was made with (its arm applications' kind and version), to regenerate it alike."""
    pins: dict[str, ArmPin] = {}
    for app in config.get("applications") or []:
        arm = arm_of_app(str(app.get("name")))
        if arm is None:
            continue
        ref = str(app["deployments"][0]["user_config"]["ref"])
        pins[arm] = ArmPin(ref.rpartition(":")[2], str(app["args"]["kind"]))
    return pins


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared by two applications (the configs) out twice instead of as a YAML anchor and alias, which
    a reader of the manifest would have to resolve by hand."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(config: Mapping[str, Any]) -> str:
    """The Serve config as the YAML text the manifest embeds (keys in the order built, one value per line)."""
    return yaml.dump(
        dict(config), Dumper=_PlainDumper, sort_keys=False, default_flow_style=False, width=1_000, allow_unicode=True
    )


def embedded(manifest: str) -> str:
    """The Serve config text of the RayService in a manifest; ValueError when it has none."""
    for doc in yaml.safe_load_all(manifest):
        if isinstance(doc, dict) and doc.get("kind") == "RayService":
            text = (doc.get("spec") or {}).get(MANIFEST_KEY)
            if isinstance(text, str):
                return text
    raise ValueError(f"no RayService with spec.{MANIFEST_KEY} in the manifest")


def embed(manifest: str, config_text: str) -> str:
    """The manifest with its `serveConfigV2: |` block replaced by `config_text` (everything else kept as written,
    comments included). ValueError unless the manifest has exactly one such block."""
    lines = manifest.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == f"{MANIFEST_KEY}: |"]
    if len(starts) != 1:
        raise ValueError(f"expected one '{MANIFEST_KEY}: |' line in the manifest, found {len(starts)}")
    start = starts[0]
    indent = len(lines[start]) - len(lines[start].lstrip(" "))
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip(" ")) > indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # blank lines after the block stay where they were
        end -= 1
    pad = " " * (indent + 2)
    block = [f"{pad}{line}" if line.strip() else "\n" for line in config_text.splitlines(keepends=True)]
    return "".join([*lines[: start + 1], *block, *lines[end:]])
