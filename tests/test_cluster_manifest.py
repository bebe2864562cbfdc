"""The cluster deployment on paper (docs/cluster/): KubeRay's RayService manifest, the Serve config it embeds and the
container recipe, checked offline by the tools that can check them: Ray Serve's own config schema, KubeRay's CRD
schema (vendored under tests/data/kuberay/) with jsonschema, and the generator the Serve config comes from. Nothing
here starts Ray or reaches Kubernetes; docs/cluster/README.md lists what stays unchecked."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from serving.ops import apps
from serving.ops.cluster import (
    CLUSTER_CONFIG_DIR,
    CLUSTER_HOME,
    ArmPin,
    embed,
    embedded,
    pin_experiment,
    pins_of,
    render,
    serve_config,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "docs/cluster/rayservice.yaml"
DOCKERFILE = ROOT / "docs/cluster/Dockerfile"
CRD = ROOT / "tests/data/kuberay/ray.io_rayservices.yaml"
REGENERATE = ".venv/bin/python docs/cluster/make_serve_config.py --write"
# Environment variables whose value would be a credential; a name ending in _FILE holds the path of a mounted one.
SECRET_NAME = re.compile(r"URL|SALT|TOKEN|PASSWORD|SECRET|ACCESS_KEY", re.IGNORECASE)
PASSWORD_IN_URL = re.compile(r"://[^/\s@:]+:[^/\s@]+@")


def manifest_text() -> str:
    return MANIFEST.read_text(encoding="utf-8")


def rayservice() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(manifest_text()) if d is not None]
    assert len(docs) == 1, "rayservice.yaml holds the RayService only (Secrets are made apart, never in a file)"
    return docs[0]


def shipped_serve_config() -> dict[str, Any]:
    return yaml.safe_load(embedded(manifest_text()))


def containers(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ---- the Serve config ---------------------------------------------------------------------------------------------


def _unknown_keys(config: dict[str, Any]) -> list[str]:
    """Keys Serve's schema does not know: ServeDeploySchema and its parts ignore extra keys (for forward
    compatibility), so a misspelt option would pass its validation and be dropped in silence."""
    from ray.serve.schema import DeploymentSchema, HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    def extra(data: dict[str, Any], model: Any, where: str) -> list[str]:
        known = {*model.model_fields, *(f.alias for f in model.model_fields.values() if f.alias)}
        return [f"{where}.{key}" for key in data if key not in known]

    found = extra(config, ServeDeploySchema, "")
    found += extra(config.get("http_options", {}), HTTPOptionsSchema, "http_options")
    for app in config["applications"]:
        found += extra(app, ServeApplicationSchema, app["name"])
        for dep in app.get("deployments", []):
            found += extra(dep, DeploymentSchema, f"{app['name']}.{dep['name']}")
    return found


def test_the_embedded_serve_config_passes_serves_own_schema() -> None:
    from ray.serve.config import ProxyLocation
    from ray.serve.schema import ServeDeploySchema

    config = shipped_serve_config()
    schema = ServeDeploySchema.model_validate(config)
    assert _unknown_keys(config) == []
    assert schema.proxy_location == ProxyLocation.HeadOnly  # one proxy, on the head: two nodes never bind one port
    assert schema.http_options.host == "0.0.0.0"  # reachable from the pod's Service, not only its loopback
    assert schema.applications[0].name == apps.APP_NAME  # the router first, then the arms


def test_the_embedded_serve_config_is_what_the_configs_give() -> None:
    config = shipped_serve_config()
    expected = serve_config(ROOT / "configs", pins_of(config))
    assert config == expected, (
        f"docs/cluster/rayservice.yaml's serveConfigV2 differs from what configs/ give: run `{REGENERATE}` "
        "(add --pin ARM=VERSION:KIND for a new arm) and commit the manifest"
    )


def test_every_arm_is_pinned_to_a_concrete_version() -> None:
    config = shipped_serve_config()
    router = next(a for a in config["applications"] if a["name"] == apps.APP_NAME)
    experiment = router["deployments"][0]["user_config"]["experiment"]
    refs = {arm: f"{spec['model']}:{spec['version']}" for arm, spec in experiment["arms"].items()}
    served = {arm: f"{arm_model}:{pin.version}" for arm, pin in pins_of(config).items()
              for arm_model in [experiment["arms"][arm]["model"]]}  # fmt: skip
    assert refs == served  # the router's experiment and the arm applications name the same versions
    assert all(re.fullmatch(r"v\d+", pin.version) for pin in pins_of(config).values())


def test_the_builders_accept_the_embedded_arguments() -> None:
    """Each import_path resolves, its builder takes the args, and the deployment the config overrides is the one the
    builder makes (Serve refuses a config naming another); building an application does not start Ray. It runs in a
    fresh interpreter: the Ray tests' session may be up in this one, and then "did not start Ray" could not fail."""
    script = """
import importlib, json, sys
import ray
from tests.test_cluster_manifest import shipped_serve_config
for app in shipped_serve_config()["applications"]:
    module, _, attr = app["import_path"].partition(":")
    built = getattr(importlib.import_module(module), attr)(app["args"])
    assert [d["name"] for d in app["deployments"]] == [built._bound_deployment.name], app["name"]
print(json.dumps({"ray_started": ray.is_initialized()}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ray_started": False}


def test_pins_are_checked() -> None:
    from experiments.config import ShadowSpec, load_experiments

    experiment = load_experiments(ROOT / "configs/experiments.yaml").experiment
    pins = {arm: ArmPin("v2", "linear") for arm in experiment.arms}
    assert {s.version for s in pin_experiment(experiment, pins).arms.values()} == {"v2"}
    with pytest.raises(ValueError, match="no pinned version for"):
        pin_experiment(experiment, dict(list(pins.items())[:1]))
    with pytest.raises(ValueError, match="does not have"):
        pin_experiment(experiment, {**pins, "ghost": ArmPin("v1", "linear")})
    with pytest.raises(ValueError, match="concrete version"):
        ArmPin("champion", "linear")
    with pytest.raises(ValueError, match="kind"):
        ArmPin.parse("v1:rules")
    concrete = experiment.model_copy(update={"arms": {a: s.model_copy(update={"version": "v1"})
                                                      for a, s in experiment.arms.items()}})  # fmt: skip
    with pytest.raises(ValueError, match="names v1, the pin v2"):
        pin_experiment(concrete, pins)
    shadowed = experiment.model_copy(update={"shadow": ShadowSpec(model="transformer", sample_rate=0.1)})
    with pytest.raises(ValueError, match="no pinned version for shadow"):
        pin_experiment(shadowed, pins)
    pinned = pin_experiment(shadowed, {**pins, "shadow": ArmPin("v5", "transformer")})
    assert pinned.shadow is not None and pinned.shadow.version == "v5"


def test_embedding_changes_only_the_serve_config_block() -> None:
    text = manifest_text()
    assert embed(text, embedded(text)) == text  # regenerating an up-to-date manifest changes nothing
    other = render({"applications": []})
    changed = embed(text, other)
    before, after = rayservice(), next(yaml.safe_load_all(changed))
    assert after["spec"].pop("serveConfigV2") == other
    before["spec"].pop("serveConfigV2")
    assert after == before
    assert changed.splitlines()[:5] == text.splitlines()[:5]  # comments kept


# ---- the manifest against KubeRay's CRD ---------------------------------------------------------------------------


def _crd_schema() -> dict[str, Any]:
    text = CRD.read_text(encoding="utf-8")
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB: the C parser when there is one
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version["served"] and crd["spec"]["names"]["kind"] == "RayService"
    return _strict(version["schema"]["openAPIV3Schema"])


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the fields, as the API server does under strict field
    validation (kubectl's default), where a plain JSON Schema would let a misspelt field through."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validator() -> jsonschema.protocols.Validator:
    # OpenAPI v3.0 schemas (what Kubernetes CRDs hold) are closest to JSON Schema draft 4.
    schema = _crd_schema()
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def test_the_manifest_passes_kuberays_rayservice_crd(crd_validator: jsonschema.protocols.Validator) -> None:
    service = rayservice()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator.iter_errors(service)]
    assert errors == []


def test_the_crd_check_has_teeth(crd_validator: jsonschema.protocols.Validator) -> None:
    """A misspelt field, a wrong type, a bad quantity and a missing required field are each caught."""
    service = rayservice()
    misspelt = copy.deepcopy(service)
    misspelt["spec"]["serveConfig"] = misspelt["spec"].pop("serveConfigV2")
    wrong_type = copy.deepcopy(service)
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    bad_quantity = copy.deepcopy(service)
    containers(bad_quantity)[0]["resources"]["limits"]["memory"] = "4 gigs"
    missing = copy.deepcopy(service)
    del missing["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"]
    for broken in (misspelt, wrong_type, bad_quantity, missing):
        assert not crd_validator.is_valid(broken)


# ---- secrets, and the manifest agreeing with the image and the Serve config ---------------------------------------


def test_no_secret_sits_in_the_manifest() -> None:
    service = rayservice()
    envs = [e for c in containers(service) for e in c.get("env", [])]
    assert envs, "the containers carry mailroute's environment"
    for var in envs:
        if SECRET_NAME.search(var["name"]) and not var["name"].endswith("_FILE"):
            assert "value" not in var, f"{var['name']} holds its value in the manifest"
            assert var.get("valueFrom", {}).get("secretKeyRef"), f"{var['name']} must come from a Secret"
        assert not PASSWORD_IN_URL.search(str(var.get("value", ""))), f"{var['name']}: a URL with a password"
    names = {e["name"] for e in envs}
    assert {"MAILROUTE_EVENT_LOG_URL", "MAILROUTE_USER_SALT", "MAILROUTE_ADMIN_TOKEN"} <= names
    assert not PASSWORD_IN_URL.search(manifest_text())
    for app in shipped_serve_config()["applications"]:
        assert app["args"]["serving"]["event_log"]["url"] is None  # each replica reads the URL from its environment


def test_the_manifest_agrees_with_the_image_and_the_serve_config() -> None:
    import ray

    service = rayservice()
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__  # the image installs pyproject.toml's pin, as this venv does
    assert cluster["authOptions"]["mode"] == "token"  # Ray's token authentication on every node
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    serve_port = next(p["containerPort"] for p in head["ports"] if p["name"] == "serve")
    assert serve_port == shipped_serve_config()["http_options"]["port"]
    assert len({c["image"] for c in containers(service)}) == 1  # one image for every node
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # replicas on the workers only
    haproxy = {e["name"]: e.get("value") for e in head["env"]}.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    assert haproxy in (None, "/usr/sbin/haproxy")  # where Debian's haproxy package, in the image, puts it


def test_the_dockerfile_states_what_the_image_must_hold() -> None:
    """Cheap facts only: the image is not built here (no container engine), so this reads the recipe."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert re.search(r"^\s*HF_HUB_OFFLINE=1\b", text, re.MULTILINE)
    assert re.search(r"^\s*DO_NOT_TRACK=1\b", text, re.MULTILINE)
    assert re.search(rf"^\s*MAILROUTE_HOME={re.escape(CLUSTER_HOME)}\b", text, re.MULTILINE)
    assert re.search(rf"^\s*MAILROUTE_CONFIG_DIR={re.escape(CLUSTER_CONFIG_DIR)}\b", text, re.MULTILINE)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    torch_pin = next(d.split("#")[0].strip() for d in deps if d.startswith("torch=="))
    assert torch_pin == "torch==2.13.0"
    torch_line = next(line for line in lines if torch_pin in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_line  # the CPU wheel, not CUDA's
    assert any(line.startswith("RUN pip install .") for line in lines)
    assert any("install" in line and "haproxy" in line for line in lines)
    assert "COPY configs ./configs" in lines and "WORKDIR /app" in lines
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("root", "0")
