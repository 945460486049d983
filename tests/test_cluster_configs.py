"""The cluster kit, checked without a cluster: cluster.yaml against the autoscaler's own schema
and checks, the runtime env's upload as Ray packs it, the Dockerfile and the KubeRay manifests
against the pins and the repository, the RayService's Serve config against
serve_apps/serve_config.yaml, and the Grafana dashboard against the metrics the code exports.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import json
import logging
import re
import shlex
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from raygpt.config import load_experiment
from raygpt.train.metrics import GAUGES

from .conftest import REPO

RAY_PIN = next(
    line.split("==", 1)[1].strip()
    for line in (REPO / "constraints.txt").read_text().splitlines()
    if line.startswith("ray==")
)
PYTHON = "3.11"  # the cluster's Python: Ray's image and the Dockerfile are built for it
K8S = REPO / "configs" / "k8s"
SHARED = "/mnt/shared"  # the shared filesystem, at this path on every node and pod
# The RayService may differ from serve_apps/serve_config.yaml in these args only: it serves
# the RayJob's model, one GPU per generator replica.
RAYSERVICE_ARG_CHANGES = {"checkpoint", "num_gpus"}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def by_kind(path: Path) -> dict:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


CLUSTER = load(REPO / "cluster.yaml")
RUNTIME_ENV = load(REPO / "configs" / "runtime_env.yaml")
SERVE_CONFIG = load(REPO / "serve_apps" / "serve_config.yaml")
MANIFESTS = {
    name: by_kind(K8S / name)
    for name in ("raycluster.yaml", "rayjob-train.yaml", "rayservice.yaml")
}
RAYJOB = MANIFESTS["rayjob-train.yaml"]["RayJob"]
RAYSERVICE = MANIFESTS["rayservice.yaml"]["RayService"]
CLUSTER_SPECS = {
    "raycluster.yaml": MANIFESTS["raycluster.yaml"]["RayCluster"]["spec"],
    "rayjob-train.yaml": RAYJOB["spec"]["rayClusterSpec"],
    "rayservice.yaml": RAYSERVICE["spec"]["rayClusterConfig"],
}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def docker_env() -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(args))
    return env


def docker_workdir() -> str:
    return [args for instruction, args in dockerfile() if instruction == "WORKDIR"][-1]


def image_parts(image: str) -> tuple[str, str, str]:
    """rayproject/ray:<ray>-py<XY>-<platform> -> (ray version, python version, platform)."""
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cpu|gpu|cu\d+)", image)
    assert match, f"{image} is not a rayproject/ray <version>-py<XY>-<platform> tag"
    return match[1], f"{match[2]}.{match[3]}", match[4]


def experiment_configs() -> dict[str, object]:
    """Every experiment YAML in configs/ (the ones with a scaling section), loaded and checked."""
    return {
        path.name: load_experiment(str(path), [])
        for path in sorted((REPO / "configs").glob("*.yaml"))
        if isinstance(load(path), dict) and "scaling" in load(path)
    }


def pod_groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]


def containers(spec: dict) -> list[dict]:
    return [c for group in pod_groups(spec) for c in group["template"]["spec"]["containers"]]


def quantity(value) -> float:
    return float(str(value).removesuffix("m")) / (1000 if str(value).endswith("m") else 1)


def gpu_groups(spec: dict) -> list[dict]:
    return [
        group
        for group in spec.get("workerGroupSpecs", [])
        if any(
            "nvidia.com/gpu" in c["resources"]["limits"]
            for c in group["template"]["spec"]["containers"]
        )
    ]


def group_limits(group: dict) -> tuple[float, float]:
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return quantity(limits["cpu"]), quantity(limits.get("nvidia.com/gpu", 0))


# ---- cluster.yaml (`ray up`) ----


def test_cluster_yaml_validates_against_the_autoscalers_schema():
    schema = json.loads(resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)


def test_cluster_yaml_passes_the_launchers_own_checks():
    """What `ray up` does before it talks to the cloud: merge the provider's defaults, check the
    Docker section, fill in per-type worker caps, validate again."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(CLUSTER))
    validate_config(prepared)
    assert prepared["available_node_types"][CLUSTER["head_node_type"]]["max_workers"] == 0
    # Our setup_commands survive the merge, before the head's own.
    assert (
        prepared["head_setup_commands"][: len(CLUSTER["setup_commands"])]
        == (CLUSTER["setup_commands"])
    )


def test_cluster_head_schedules_nothing_and_gpu_workers_scale_from_zero():
    types = CLUSTER["available_node_types"]
    head = types[CLUSTER["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = {name: t for name, t in types.items() if name != CLUSTER["head_node_type"]}
    gpus = sorted(
        t["resources"].get("GPU", 0) for t in workers.values() if t["resources"].get("GPU")
    )
    assert gpus == [1, 8], "one-GPU and eight-GPU worker types"
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, f"{name} must scale down to zero"
        assert 1 <= node_type["max_workers"] <= CLUSTER["max_workers"], name
    # Every GPU experiment fits on the GPUs one cluster can have.
    most_gpus = sum(t["resources"].get("GPU", 0) * t["max_workers"] for t in workers.values())
    for name, config in experiment_configs().items():
        if config.scaling.use_gpu:
            need = config.scaling.num_workers * config.scaling.gpus_per_worker
            assert need <= most_gpus, name


def test_cluster_yaml_runs_the_pinned_ray_image_like_the_dockerfile():
    image = CLUSTER["docker"]["image"]
    ray_version, python, platform = image_parts(image)
    assert ray_version == RAY_PIN
    assert python == PYTHON
    assert platform != "cpu", "the workers need the CUDA image"
    assert image == dict(dockerfile())["FROM"], "cluster.yaml and the Dockerfile share one base"


def test_cluster_yaml_starts_ray_with_token_auth_a_private_dashboard_and_metrics():
    run_options = " ".join(CLUSTER["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in run_options
    # The token made by `ray get-auth-token --generate` goes to the default path on every node.
    assert CLUSTER["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert f"-v {SHARED}:{SHARED}" in run_options

    head = shlex.split(" ".join(CLUSTER["head_start_ray_commands"]).replace(";", " ; "))
    assert head[head.index("start") - 1] == "ray" and "--head" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "--metrics-export-port=8080" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    worker = shlex.split(" ".join(CLUSTER["worker_start_ray_commands"]).replace(";", " ; "))
    assert "--address=$RAY_HEAD_IP:6379" in worker
    assert "--metrics-export-port=8080" in worker


def test_cluster_yaml_installs_this_checkout_with_the_pins():
    assert CLUSTER["file_mounts"]["~/raygpt"] == "."  # `ray up` runs from the repository root
    assert ".gitignore" in CLUSTER["rsync_filter"]  # .venv, data/ and runs/ stay local
    install, tokenizer = CLUSTER["setup_commands"]
    assert install.startswith("cd ~/raygpt && ")
    assert "pip install" in install and "-c constraints.txt" in install
    assert "-e '.[ray]'" in install
    assert tokenizer == "cd ~/raygpt && python -m raygpt.tokenizer_setup"
    assert (REPO / "platform" / "raygpt" / "tokenizer_setup.py").is_file()
    # The tokenizer cache: where the image provisions it, and where cluster.yaml does.
    env = dict(
        option.removeprefix("--env ").split("=", 1)
        for option in CLUSTER["docker"]["run_options"]
        if option.startswith("--env ")
    )
    for name in ("RAYGPT_CACHE_DIR", "TIKTOKEN_CACHE_DIR"):
        assert env[name] == docker_env()[name], name


# ---- configs/runtime_env.yaml (`ray job submit --runtime-env`) ----


def pack(source: Path, parent_dir: bool, excludes: list[str]) -> list[str]:
    """The file names Ray would upload for a working_dir (or, with parent_dir, a py_module),
    packed by Ray's own code. .gitignore is ignored: the excludes alone must do the job."""
    from ray._private.runtime_env.packaging import create_package

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "package.zip"
        create_package(
            str(source),
            out,
            include_gitignore=False,
            include_parent_dir=parent_dir,
            excludes=excludes,
            logger=logging.getLogger(__name__),
        )
        with zipfile.ZipFile(out) as package:
            return [i.filename for i in package.infolist() if not i.is_dir()]


def test_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**RUNTIME_ENV)  # raises on an unknown field or a wrongly typed one
    assert (REPO / RUNTIME_ENV["working_dir"]).resolve() == REPO
    for module in RUNTIME_ENV["py_modules"]:
        assert (REPO / module / "__init__.py").is_file(), module
    assert "pip" not in RUNTIME_ENV and "conda" not in RUNTIME_ENV, "the image has the stack"
    # The tokenizer cache comes from the cluster (image, cluster.yaml): a path here would be
    # wrong for every other kind of cluster.
    assert "RAYGPT_CACHE_DIR" not in RUNTIME_ENV.get("env_vars", {})


def test_runtime_env_uploads_code_not_environments_data_or_runs(tmp_path):
    """A checkout with the heavy folders a user has, packed as Ray packs it."""
    files = [
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".git/objects/pack/pack-1.pack",
        ".cache/tiktoken/6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
        "data/code/manifest.json",
        "data/code/train_000000.parquet",
        "data/corpus.jsonl",
        "runs/tiny_cpu/final/model.safetensors",
        "models/gpt2/model.safetensors",
        "docs/tiny_cpu_loss.png",
        "jobs/__pycache__/train.cpython-311.pyc",
        "raygpt.egg-info/PKG-INFO",
        "jobs/train.py",
        "configs/tiny_cpu.yaml",
        "serve_apps/app.py",
        "platform/raygpt/__init__.py",
        "platform/raygpt/data/__init__.py",
        "platform/raygpt/data/prepare.py",
        "platform/raygpt/data/logging.yaml",
        "platform/raygpt/train/loop.py",
        "platform/raygpt/__pycache__/model.cpython-311.pyc",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    excludes = RUNTIME_ENV["excludes"]
    assert sorted(pack(tmp_path, False, excludes)) == [
        "configs/tiny_cpu.yaml",
        "jobs/train.py",
        "serve_apps/app.py",
    ]
    assert sorted(pack(tmp_path / "platform" / "raygpt", True, excludes)) == [
        "raygpt/__init__.py",
        "raygpt/data/__init__.py",
        "raygpt/data/logging.yaml",
        "raygpt/data/prepare.py",
        "raygpt/train/loop.py",
    ]


def test_runtime_env_upload_of_this_checkout_is_small_and_complete():
    working_dir = pack(REPO, False, RUNTIME_ENV["excludes"])
    assert sum((REPO / name).stat().st_size for name in working_dir) < 2 * 2**20
    shipped = set(working_dir)
    for folder in ("jobs", "configs", "serve_apps"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert path.relative_to(REPO).as_posix() in shipped, path
    assert not any(name.startswith(("platform/", ".venv/", "data/", "runs/")) for name in shipped)

    library = REPO / "platform" / "raygpt"
    module = set(pack(library, True, RUNTIME_ENV["excludes"]))
    expected = {
        "raygpt/" + path.relative_to(library).as_posix()
        for path in library.rglob("*")
        if path.is_file() and path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts
    }
    assert expected <= module, f"left out of the py_module: {sorted(expected - module)}"


# ---- Dockerfile and .dockerignore ----


def test_dockerfile_builds_on_the_pinned_ray_image_and_installs_with_the_pins():
    steps = dockerfile()
    ray_version, python, _ = image_parts(dict(steps)["FROM"])
    assert (ray_version, python) == (RAY_PIN, PYTHON)
    runs = [args for instruction, args in steps if instruction == "RUN"]
    pip = [cmd for run in runs for cmd in run.split("&&") if "pip install" in cmd]
    assert pip and all("-c constraints.txt" in cmd for cmd in pip), pip
    for cmd in pip:  # never a second Ray over the image's
        assert not re.search(r"(^|\s)['\"]?ray([\[=<>~!\s'\"]|$)", cmd.split("pip install", 1)[1])
    assert any("-e '.[ray]'" in cmd for cmd in pip)
    assert any("python -m raygpt.tokenizer_setup" in run for run in runs)
    assert f"ray.__version__ == '{RAY_PIN}'" in " ".join(runs)
    # constraints.txt is copied before the first install that reads it.
    order = [f"{i} {a}" for i, a in steps]
    first_copy = next(
        i for i, s in enumerate(order) if s.startswith("COPY") and "constraints.txt" in s
    )
    first_pip = next(i for i, s in enumerate(order) if "pip install" in s)
    assert first_copy < first_pip
    assert docker_env()["RAYGPT_CACHE_DIR"].startswith("/home/ray/")
    assert docker_env()["TIKTOKEN_CACHE_DIR"] == docker_env()["RAYGPT_CACHE_DIR"] + "/tiktoken"


def test_every_way_of_starting_ray_serves_in_serves_high_throughput_mode():
    """A local Ray from init_ray, `make serve`, the image (KubeRay) and cluster.yaml's nodes all
    start Serve with the same switches (raygpt.ray_runtime.SERVE_FAST_PATH)."""
    from raygpt.ray_runtime import LOCAL_SERVE_FAST_PATH, SERVE_FAST_PATH

    assert SERVE_FAST_PATH.items() <= LOCAL_SERVE_FAST_PATH.items()
    assert SERVE_FAST_PATH.items() <= docker_env().items()
    options = CLUSTER["docker"]["run_options"]
    cluster_env = dict(o.removeprefix("--env ").split("=", 1) for o in options if "--env" in o)
    assert SERVE_FAST_PATH.items() <= cluster_env.items()
    makefile = re.sub(r"\\\n", " ", (REPO / "Makefile").read_text())
    serve_env = re.search(r"^SERVE_FAST_PATH\s*\?=(.*)$", makefile, flags=re.M).group(1)
    assert dict(part.split("=", 1) for part in serve_env.split()) == LOCAL_SERVE_FAST_PATH
    assert "$(SERVE_FAST_PATH) $(VENV)/bin/serve run" in makefile


def dockerignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern)
        or (pattern.startswith("**/") and fnmatch.fnmatch(parts[i], pattern[3:]))
        for pattern in patterns
        for i, prefix in enumerate(prefixes)
    )


def test_dockerignore_keeps_what_the_build_reads_and_drops_the_heavy_folders():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "pyproject.toml",
        "README.md",  # pyproject's readme: setuptools reads it
        "constraints.txt",
        "platform/raygpt/__init__.py",
        "platform/raygpt/data/prepare.py",
        "platform/raygpt/data/logging.yaml",
        "serve_apps/app.py",
        "serve_apps/serve_config.yaml",
        "jobs/train.py",
        "configs/tiny_cpu.yaml",
    ]
    for path in needed:
        assert (REPO / path).exists(), path
        assert not dockerignored(path, patterns), path
    for path in (".venv/bin/python", ".git/HEAD", "data/code/x", "runs/x/y", ".cache/tiktoken/z"):
        assert dockerignored(path, patterns), path


# ---- KubeRay: RayCluster, RayJob, RayService ----


def test_kuberay_manifests_pin_ray_and_run_the_project_image():
    images = set()
    for name, spec in CLUSTER_SPECS.items():
        assert spec["rayVersion"] == RAY_PIN, name
        assert spec["authOptions"] == {"mode": "token"}, name
        head = spec["headGroupSpec"]["rayStartParams"]
        assert head["num-cpus"] == "0", f"{name}: nothing but drivers on the head"
        for group in pod_groups(spec):
            assert group["rayStartParams"]["metrics-export-port"] == "8080", name
        for container in containers(spec):
            images.add(container["image"])
            assert container["workingDir"] == docker_workdir(), name
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["metrics"] == 8080, name
    for kinds in MANIFESTS.values():
        for doc in kinds.values():
            assert doc["apiVersion"] == ("ray.io/v1" if doc["kind"].startswith("Ray") else "v1")
    assert len(images) == 1, f"one image everywhere, not {images}"
    assert images.pop().endswith(f"-ray{RAY_PIN}"), "the image tag names its Ray version"


def test_kuberay_pods_share_one_volume_at_the_same_paths():
    claims = [kinds["PersistentVolumeClaim"] for kinds in MANIFESTS.values()]
    assert all(claim == claims[0] for claim in claims), "the same PVC in every manifest"
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteMany"]
    workdir = docker_workdir()
    for name, spec in CLUSTER_SPECS.items():
        for group in pod_groups(spec):
            volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
            claim = volumes["shared"]["persistentVolumeClaim"]["claimName"]
            assert claim == claims[0]["metadata"]["name"], name
            for container in group["template"]["spec"]["containers"]:
                mounts = {
                    m["mountPath"]: m.get("subPath")
                    for m in container["volumeMounts"]
                    if m["name"] == "shared"
                }
                assert mounts == {
                    SHARED: None,
                    f"{workdir}/data": "data",
                    f"{workdir}/runs": "runs",
                    f"{workdir}/models": "models",
                }, name


def test_raycluster_gpu_pods_fit_every_gpu_experiment():
    spec = CLUSTER_SPECS["raycluster.yaml"]
    assert spec["enableInTreeAutoscaling"] is True
    (group,) = gpu_groups(spec)
    assert group["minReplicas"] == 0, "GPU pods scale down to zero"
    cpus, gpus = group_limits(group)
    for name, config in experiment_configs().items():
        scaling = config.scaling
        if scaling.use_gpu:
            assert scaling.cpus_per_worker <= cpus and scaling.gpus_per_worker <= gpus, name
            assert scaling.num_workers <= group["maxReplicas"], name


def entrypoint_config():
    """The RayJob's script and experiment config, both checked to exist in the repository."""
    argv = shlex.split(RAYJOB["spec"]["entrypoint"])
    assert argv[0] == "python"
    script = REPO / argv[1]
    assert script.parent == REPO / "jobs" and script.is_file(), argv[1]
    config = argv[argv.index("--config") + 1]
    assert (REPO / config).is_file(), config
    return load_experiment(str(REPO / config), argv[argv.index("--config") + 2 :])


def test_rayjob_runs_an_existing_job_on_exactly_the_pods_it_needs():
    spec = RAYJOB["spec"]
    config = entrypoint_config()  # also validates the experiment config
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "working_dir" not in runtime_env and "py_modules" not in runtime_env, "the image's"
    (group,) = gpu_groups(spec["rayClusterSpec"])
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]
    assert group["replicas"] * group_limits(group)[1] >= config.scaling.num_workers
    assert group_limits(group)[0] > config.scaling.cpus_per_worker, "CPUs left for Ray Data"
    # Relative paths in the config resolve under the image's WORKDIR, on the shared volume.
    for path in (config.train.out_dir, config.data.dataset, config.train.init_from):
        if "/" in path:
            assert path.split("/")[0] in ("runs", "data", "models"), path


def rayservice_serve_config() -> dict:
    return yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"])


def test_rayservice_serves_serve_config_yaml_on_a_gpu_with_the_rayjobs_model():
    config = rayservice_serve_config()
    assert {k: v for k, v in config.items() if k != "applications"} == {
        k: v for k, v in SERVE_CONFIG.items() if k != "applications"
    }
    assert len(config["applications"]) == len(SERVE_CONFIG["applications"])
    for ours, theirs in zip(config["applications"], SERVE_CONFIG["applications"], strict=True):
        assert {k: v for k, v in ours.items() if k != "args"} == {
            k: v for k, v in theirs.items() if k != "args"
        }
        changed = {k for k in ours["args"].keys() | theirs["args"].keys()
                   if ours["args"].get(k) != theirs["args"].get(k)}  # fmt: skip
        assert changed <= RAYSERVICE_ARG_CHANGES, f"drifted from serve_config.yaml: {changed}"
        args = ours["args"]
        assert args["num_gpus"] >= 1, "the generator gets a GPU"
        assert args["checkpoint"] == f"{entrypoint_config().train.out_dir}/final"


def test_rayservice_serve_config_validates_with_serve_and_the_apps_settings():
    from ray.serve.schema import ServeDeploySchema

    from serve_apps.settings import ServeSettings

    config = rayservice_serve_config()
    ServeDeploySchema.model_validate(config)
    for application in config["applications"]:
        settings = ServeSettings.model_validate(application["args"])
        module, _, builder = application["import_path"].partition(":")
        source = REPO.joinpath(*module.split(".")).with_suffix(".py")
        defined = {n.name for n in ast.parse(source.read_text()).body if hasattr(n, "name")}
        assert builder in defined, application["import_path"]
        # Every pod that can host the ingress has the API key, from a Kubernetes Secret.
        spec = CLUSTER_SPECS["rayservice.yaml"]
        for container in containers(spec):
            env = {e["name"]: e for e in container["env"]}
            key = env[settings.api_key_env]["valueFrom"]["secretKeyRef"]
            assert key["name"] and key["key"] and not key.get("optional"), container["name"]
        # The generators fit the GPU pods: a replica's GPUs and CPUs, and all replicas at once.
        (group,) = gpu_groups(spec)
        cpus, gpus = group_limits(group)
        assert settings.num_gpus <= gpus and settings.num_cpus <= cpus
        per_pod = int(gpus // settings.num_gpus)
        assert settings.autoscaling.max_replicas <= per_pod * group["maxReplicas"]
        assert spec["enableInTreeAutoscaling"] is True


# ---- Grafana ----

SUFFIXES = {"Counter": ("_total",), "Histogram": ("_bucket", "_sum", "_count"), "Gauge": ("",)}


def declared_metrics(files, expansions: dict[str, list[str]]) -> dict[str, str]:
    """{name: Counter|Gauge|Histogram} for every ray.util.metrics metric created in `files`;
    f-string names are expanded with the values listed for their placeholder."""
    found = {}
    for path in files:
        text = path.read_text()
        if "Counter(" not in text and "Gauge(" not in text and "Histogram(" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            kind = getattr(node.func, "attr", getattr(node.func, "id", None))
            if kind not in SUFFIXES:
                continue
            name = (
                node.args[0]
                if node.args
                else next((k.value for k in node.keywords if k.arg == "name"), None)
            )
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                found[name.value] = kind
            elif isinstance(name, ast.JoinedStr):
                names = [""]
                for part in name.values:
                    if isinstance(part, ast.Constant):
                        names = [n + part.value for n in names]
                    else:
                        values = expansions.get(ast.unparse(part.value), [])
                        names = [n + v for n in names for v in values]
                found.update(dict.fromkeys(names, kind))
    return found


def raygpt_metrics() -> dict[str, str]:
    files = [REPO / "platform/raygpt/train/metrics.py", REPO / "serve_apps/metrics.py"]
    return declared_metrics(files, {"key": list(GAUGES)})


def serve_metrics() -> dict[str, str]:
    import ray.serve

    files = Path(ray.serve.__file__).parent.rglob("*.py")
    return declared_metrics(files, {"protocol_name": ["http", "grpc"]})


def dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO / "configs/grafana/raygpt_dashboard.json").read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def exported_base(name: str, metrics: dict[str, str]) -> str | None:
    """The declared metric a Prometheus series name comes from (`ray_` prefix, kind suffix)."""
    for base, kind in metrics.items():
        if any(name == f"ray_{base}{suffix}" for suffix in SUFFIXES[kind]):
            return base
    return None


def test_grafana_dashboard_is_well_formed():
    dashboard = json.loads((REPO / "configs/grafana/raygpt_dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    charts = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert charts and all(panel["targets"] for panel in charts)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in charts:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"]))
            assert used <= variables, used - variables


def test_grafana_dashboard_queries_only_metrics_that_exist():
    ours, serve = raygpt_metrics(), serve_metrics()
    assert {"raygpt_train_loss", "raygpt_serve_tokens_generated"} <= ours.keys()
    assert "serve_num_http_requests" in serve  # the expansion found Serve's request metrics
    ray_panels = (
        Path(__import__("ray").__file__).parent
        / "dashboard/modules/metrics/dashboards/default_dashboard_panels.py"
    ).read_text()
    charted = set()
    for query in dashboard_queries():
        for name in re.findall(r"\b(ray_\w+)", query):
            if name.startswith("ray_raygpt_"):
                base = exported_base(name, ours)
                assert base, f"{name}: no such raygpt metric (or wrong _total/_bucket suffix)"
                charted.add(base)
            elif name.startswith("ray_serve_"):
                assert exported_base(name, serve), f"{name}: Ray Serve exports no such metric"
            else:
                assert re.search(rf"\b{name}\b", ray_panels), f"{name}: not one of Ray's metrics"
    assert charted == ours.keys(), f"metrics with no chart: {sorted(ours.keys() - charted)}"


@pytest.mark.parametrize("path", ["cluster.yaml", *[f"configs/k8s/{n}" for n in MANIFESTS]])
def test_account_specific_values_are_marked(path):
    """Placeholders say what to change; none hides in an unmarked line."""
    lines = (REPO / path).read_text().splitlines()
    value = re.compile(r"\w+-CHANGE-ME|your-org")  # ami-CHANGE-ME, fs-CHANGE-ME, the registry
    placeholders = [i for i, line in enumerate(lines) if value.search(line)]
    assert placeholders, "the account-specific values are still there to be found"
    for i in placeholders:
        nearby = lines[i - 2 : i + 1]
        assert any("# CHANGE" in line for line in nearby), lines[i]
