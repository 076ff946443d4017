"""Checks of deploy/: YAML, Kubernetes and KubeRay manifests, the cluster-launcher config, the
Prometheus configs (promtool), the Grafana dashboard against the metrics the code exports, and
the Dockerfile. No cluster, network or docker is needed; promtool comes from Debian `prometheus`.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
DASHBOARD = DEPLOY / "grafana" / "vaegen-dashboard.json"
PROMETHEUS_CONFIGS = sorted((DEPLOY / "prometheus").glob("*.yml"))
LAUNCHER = DEPLOY / "ray-cluster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
VAEGEN_METRICS_PORT = 9100
RAY_METRICS_PORT = 8080
GPU = "nvidia.com/gpu"


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


@functools.cache
def _parsed(path: Path) -> tuple[dict, ...]:
    with path.open() as f:
        return tuple(d for d in yaml.safe_load_all(f) if d is not None)


def load_docs(path: Path) -> list[dict]:
    """The YAML documents of a file (a fresh copy: tests may change it)."""
    return copy.deepcopy(list(_parsed(path)))


def k8s_objects() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in load_docs(p)]


def objects_of(kind: str) -> list[dict]:
    return [d for _, d in k8s_objects() if d.get("kind") == kind]


# --------------------------------------------------------------------------------------------
# YAML


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} has no YAML document"
    assert all(isinstance(d, dict) for d in docs)


def test_deploy_has_the_expected_files() -> None:
    for rel in (
        "Dockerfile",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "ray-cluster.yaml",
        "prometheus/prometheus.yml",
        "grafana/vaegen-dashboard.json",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/vaegen.yaml",
    ):
        assert (DEPLOY / rel).is_file(), rel


# --------------------------------------------------------------------------------------------
# Core Kubernetes kinds, with kubernetes-validate's bundled OpenAPI schemas (strict: unknown
# fields fail). The oldest and newest Kubernetes versions it knows bracket the supported range.


def k8s_versions() -> list[str]:
    latest = kv_utils.latest_version()
    versions = {v for v in kv_utils.all_versions() if v.startswith("1.28.")} or {latest}
    return sorted(versions | {latest})


def validate_k8s(obj: dict) -> list[str]:
    """Validate against every supported Kubernetes version (raises on an invalid object)."""
    versions = list(k8s_versions())
    for version in versions:
        kubernetes_validate.validate(obj, version, strict=True)
    return versions


def is_kuberay(obj: dict) -> bool:
    return obj.get("apiVersion", "").startswith("ray.io/")


CORE_OBJECTS = [(p, d) for p, d in k8s_objects() if not is_kuberay(d)]


@pytest.mark.parametrize(
    "obj",
    [d for _, d in CORE_OBJECTS],
    ids=[f"{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in CORE_OBJECTS],
)
def test_core_kinds_validate(obj: dict) -> None:
    assert validate_k8s(obj), "no Kubernetes version to validate against"


def test_core_kinds_present() -> None:
    kinds = {d["kind"] for _, d in CORE_OBJECTS}
    assert {"ConfigMap", "Service", "PersistentVolumeClaim"} <= kinds


def test_kubernetes_validate_rejects_bad_objects() -> None:
    configmap = copy.deepcopy(objects_of("ConfigMap")[0])
    configmap["data"]["bad"] = {"not": "a string"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(configmap)
    service = copy.deepcopy(objects_of("Service")[0])
    service["spec"]["portz"] = service["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(service)


# --------------------------------------------------------------------------------------------
# KubeRay. No CRD schema is at hand offline, so the key paths of ray.io/v1 RayCluster and RayJob
# (KubeRay's raycluster_types.go / rayjob_types.go, v1.1 to v1.4) are written out here as a
# compact JSON schema. Unknown keys fail; pod templates are checked with Kubernetes' own schema.

STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT = {"type": "integer", "minimum": 0}
NUM = {"type": "number", "minimum": 0}
STR_MAP = {"type": "object", "additionalProperties": STR}
ANY_OBJ = {"type": "object"}
POD_TEMPLATE = {"type": "object", "required": ["spec"]}


def strict(props: dict, required: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "properties": props,
        "required": list(required),
        "additionalProperties": False,
    }


METADATA = {"type": "object", "required": ["name"], "properties": {"name": STR}}
HEAD_GROUP = strict(
    {
        "template": POD_TEMPLATE,
        # rayStartParams values are strings: `num-gpus: 1` is rejected by the CRD.
        "rayStartParams": STR_MAP,
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "headService": ANY_OBJ,
        "enableIngress": BOOL,
    },
    required=("template", "rayStartParams"),
)
WORKER_GROUP = strict(
    {
        "groupName": STR,
        "replicas": INT,
        "minReplicas": INT,
        "maxReplicas": INT,
        "numOfHosts": INT,
        "idleTimeoutSeconds": INT,
        "rayStartParams": STR_MAP,
        "template": POD_TEMPLATE,
        "scaleStrategy": strict({"workersToDelete": {"type": "array", "items": STR}}),
        "suspend": BOOL,
    },
    required=("groupName", "template", "rayStartParams"),
)
RAY_CLUSTER_SPEC = strict(
    {
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
        "rayVersion": STR,
        "enableInTreeAutoscaling": BOOL,
        "autoscalerOptions": ANY_OBJ,
        "headServiceAnnotations": STR_MAP,
        "gcsFaultToleranceOptions": ANY_OBJ,
        "authOptions": ANY_OBJ,
        "suspend": BOOL,
        "managedBy": STR,
    },
    required=("headGroupSpec",),
)
RAY_JOB_SPEC = {
    **strict(
        {
            "entrypoint": STR,
            "rayClusterSpec": RAY_CLUSTER_SPEC,
            "clusterSelector": STR_MAP,
            "submissionMode": {
                "enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]
            },
            "runtimeEnvYAML": STR,
            "jobId": STR,
            "metadata": STR_MAP,
            "shutdownAfterJobFinishes": BOOL,
            "ttlSecondsAfterFinished": INT,
            "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
            "backoffLimit": INT,
            "entrypointNumCpus": NUM,
            "entrypointNumGpus": NUM,
            "entrypointResources": STR,
            "submitterPodTemplate": POD_TEMPLATE,
            "submitterConfig": strict({"backoffLimit": INT}),
            "deletionPolicy": STR,
            "deletionStrategy": ANY_OBJ,
            "suspend": BOOL,
            "managedBy": STR,
        },
        required=("entrypoint",),
    ),
    # A RayJob either brings its own cluster or selects a running one.
    "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
}
KUBERAY_SCHEMAS = {
    "RayCluster": strict(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayCluster"},
            "metadata": METADATA,
            "spec": RAY_CLUSTER_SPEC,
        },
        required=("apiVersion", "kind", "metadata", "spec"),
    ),
    "RayJob": strict(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayJob"},
            "metadata": METADATA,
            "spec": RAY_JOB_SPEC,
        },
        required=("apiVersion", "kind", "metadata", "spec"),
    ),
}


def kuberay_errors(obj: dict) -> list[str]:
    """Schema errors of a KubeRay object, as 'path: message' lines (empty when valid)."""
    schema = KUBERAY_SCHEMAS.get(obj.get("kind", ""))
    if schema is None or not is_kuberay(obj):
        return [f"not a known KubeRay kind: {obj.get('apiVersion')}/{obj.get('kind')}"]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def cluster_specs() -> list[tuple[str, dict]]:
    """(name, RayClusterSpec) for the RayCluster and every RayJob that brings its own cluster."""
    specs = [(f"RayCluster/{d['metadata']['name']}", d["spec"]) for d in objects_of("RayCluster")]
    specs += [
        (f"RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"])
        for d in objects_of("RayJob")
        if "rayClusterSpec" in d["spec"]
    ]
    return specs


def pod_templates() -> list[tuple[str, str, dict]]:
    """(owner, role, template) for every Ray pod template: role is 'head' or a group name."""
    out = []
    for name, spec in cluster_specs():
        out.append((name, "head", spec["headGroupSpec"]["template"]))
        for group in spec.get("workerGroupSpecs", []):
            out.append((name, group["groupName"], group["template"]))
    return out


def ray_container(template: dict) -> dict:
    return template["spec"]["containers"][0]


def gpu_quantity(container: dict) -> int:
    """The container's nvidia.com/gpu limit; a request, if given, must equal it."""
    resources = container.get("resources", {})
    limit = int(resources.get("limits", {}).get(GPU, 0))
    request = resources.get("requests", {}).get(GPU)
    assert request is None or int(request) == limit, f"{container['name']}: GPU request != limit"
    return limit


def test_kuberay_manifests_present() -> None:
    assert objects_of("RayCluster"), "deploy/kuberay has no RayCluster"
    assert objects_of("RayJob"), "deploy/kuberay has no RayJob"


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_key_paths(kind: str) -> None:
    for obj in objects_of(kind):
        assert kuberay_errors(obj) == [], obj["metadata"]["name"]


def test_kuberay_checker_rejects_misspelled_and_mistyped_fields() -> None:
    cluster = copy.deepcopy(objects_of("RayCluster")[0])
    cluster["spec"]["workerGroupSpec"] = cluster["spec"].pop("workerGroupSpecs")
    cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0
    errors = "\n".join(kuberay_errors(cluster))
    assert "workerGroupSpec" in errors
    assert "spec.headGroupSpec.rayStartParams.num-gpus" in errors

    job = copy.deepcopy(objects_of("RayJob")[0])
    job["spec"]["clusterSelector"] = {"ray.io/cluster": "vaegen"}  # both: oneOf fails
    job["spec"]["shutdownAfterJobFinish"] = True
    errors = "\n".join(kuberay_errors(job))
    assert "shutdownAfterJobFinish" in errors
    assert "is valid under each of" in errors

    job = copy.deepcopy(objects_of("RayJob")[0])
    del job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert any("'template' is a required property" in e for e in kuberay_errors(job))


@pytest.mark.parametrize(
    "owner,role,template",
    pod_templates(),
    ids=[f"{o}:{r}" for o, r, _ in pod_templates()],
)
def test_pod_templates_validate(owner: str, role: str, template: dict) -> None:
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "check"},
        "template": template,
    }
    validate_k8s(wrapped)
    spec = template["spec"]
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{owner}:{role} mounts unknown volume {mount['name']}"


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_gpu_on_workers_not_on_head(name: str, spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert gpu_quantity(ray_container(head["template"])) == 0, f"{name}: head requests a GPU"
    assert head["rayStartParams"].get("num-gpus", "0") == "0"
    groups = spec.get("workerGroupSpecs", [])
    assert groups, f"{name}: no worker group"
    for group in groups:
        gpus = gpu_quantity(ray_container(group["template"]))
        assert gpus >= 1, f"{name}/{group['groupName']}: no {GPU} limit"
        assert group["rayStartParams"].get("num-gpus") == str(gpus), (
            f"{name}/{group['groupName']}: rayStartParams num-gpus must equal the {GPU} limit"
        )
        replicas = group.get("replicas", 0)
        assert group.get("minReplicas", 0) <= replicas <= group.get("maxReplicas", 2**31 - 1)


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_metrics_ports(name: str, spec: dict) -> None:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for group in groups:
        assert group["rayStartParams"].get("metrics-export-port") == str(RAY_METRICS_PORT)
        container = ray_container(group["template"])
        ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
        assert ports.get("metrics") == RAY_METRICS_PORT, name
    head_ports = {
        p.get("name"): p["containerPort"]
        for p in ray_container(spec["headGroupSpec"]["template"])["ports"]
    }
    assert head_ports.get("vaegen-metrics") == VAEGEN_METRICS_PORT
    assert head_ports.get("client") == 10001 and head_ports.get("dashboard") == 8265


def test_one_image_and_ray_version_everywhere() -> None:
    images = {ray_container(t)["image"] for _, _, t in pod_templates()}
    images.add(load_docs(LAUNCHER)[0]["docker"]["image"])
    assert len(images) == 1, f"different images: {images}"
    ray_version = dockerfile_args()["RAY_VERSION"]
    for name, spec in cluster_specs():
        assert spec["rayVersion"] == ray_version, name


def shared_mounts(template: dict) -> set[str]:
    """Mount paths of the persistent volumes in a pod template."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    return {
        m["mountPath"]
        for m in ray_container(template).get("volumeMounts", [])
        if "persistentVolumeClaim" in volumes[m["name"]]
    }


def test_rayjob_runs_the_pipeline_from_the_configmap() -> None:
    configmaps = {d["metadata"]["name"]: d for d in objects_of("ConfigMap")}
    # Artifacts must be on storage that every Ray pod mounts.
    shared = set.intersection(*(shared_mounts(t) for _, _, t in pod_templates()))
    assert shared, "no persistent volume is mounted on every Ray pod"
    for job in objects_of("RayJob"):
        spec = job["spec"]
        assert spec["entrypoint"] == "vaegen pipeline --config /configs/mnist.toml"
        if spec.get("ttlSecondsAfterFinished"):
            assert spec.get("shutdownAfterJobFinishes") is True
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]
        config_path = Path(spec["entrypoint"].split()[-1])
        (mount,) = [
            m
            for m in ray_container(head)["volumeMounts"]
            if Path(m["mountPath"]) == config_path.parent
        ]
        volume = {v["name"]: v for v in head["spec"]["volumes"]}[mount["name"]]
        source = volume["configMap"]["name"]
        assert source in configmaps, f"ConfigMap {source} is not in deploy/kuberay"
        config = tomllib.loads(configmaps[source]["data"][config_path.name])
        for path in (config["out"], config["train"]["data_dir"]):
            assert any(path.startswith(s.rstrip("/") + "/") for s in shared), path
        assert config["generate"]["metrics_port"] == VAEGEN_METRICS_PORT
        assert config["generate"]["metrics_host"] == "0.0.0.0"


def test_persistent_volume_claims_exist() -> None:
    claims = {d["metadata"]["name"] for d in objects_of("PersistentVolumeClaim")}
    for owner, role, template in pod_templates():
        for volume in template["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in claims, f"{owner}:{role} uses the unknown claim {claim}"


# Keys of the cluster config that may differ from configs/mnist.toml: where the files go, and how
# the work spreads over the cluster and reports its metrics.
CLUSTER_KEYS = {
    "out": None,
    "train": {"data_dir", "gpu", "workers"},
    "generate": {"workers", "gpus_per_worker", "metrics_port", "metrics_host", "pushgateway"},
}


def configmap_tomls() -> dict[str, str]:
    return {
        name: text
        for configmap in objects_of("ConfigMap")
        for name, text in configmap.get("data", {}).items()
        if name.endswith(".toml")
    }


def without_cluster_keys(config: dict) -> dict:
    config = copy.deepcopy(config)
    for key, subkeys in CLUSTER_KEYS.items():
        if subkeys is None:
            config.pop(key, None)
        else:
            for subkey in subkeys:
                config.get(key, {}).pop(subkey, None)
    return config


@pytest.mark.parametrize("name", sorted(configmap_tomls()))
def test_configmap_configs_load_with_the_pipeline_loader(name: str, tmp_path: Path) -> None:
    from vaegen.pipeline import load_config

    path = tmp_path / name
    path.write_text(configmap_tomls()[name])
    cfg = load_config(path)  # raises VaegenError on unknown keys
    assert cfg.train and cfg.generate


def test_pipeline_loader_rejects_unknown_keys(tmp_path: Path) -> None:
    from vaegen.errors import VaegenError
    from vaegen.pipeline import load_config

    name, text = sorted(configmap_tomls().items())[0]
    path = tmp_path / name
    path.write_text(text.replace("[generate]", "[generate]\nmetrics_prot = 9100"))
    with pytest.raises(VaegenError, match="metrics_prot"):
        load_config(path)


@pytest.mark.parametrize("name", sorted(configmap_tomls()))
def test_configmap_config_is_the_repo_config_set_up_for_the_cluster(name: str) -> None:
    repo = ROOT / "configs" / name
    assert repo.is_file(), f"the ConfigMap ships {name}, but configs/{name} does not exist"
    cluster = tomllib.loads(configmap_tomls()[name])
    assert without_cluster_keys(cluster) == without_cluster_keys(tomllib.loads(repo.read_text()))


def test_services_select_ray_pods_and_named_ports() -> None:
    templates = [t for _, _, t in pod_templates()]
    for service in objects_of("Service"):
        selector = service["spec"]["selector"]
        selected = [
            t
            for t in templates
            if selector.items() <= t.get("metadata", {}).get("labels", {}).items()
        ]
        assert selected, f"Service {service['metadata']['name']} selects no Ray pod"
        for port in service["spec"]["ports"]:
            for template in selected:
                names = {p.get("name") for p in ray_container(template)["ports"]}
                assert port["targetPort"] in names, (service["metadata"]["name"], port)


# --------------------------------------------------------------------------------------------
# Ray cluster launcher: Ray ships the JSON schema its `ray up` validates against.


def ray_launcher_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_launcher_config_matches_rays_schema() -> None:
    config = load_docs(LAUNCHER)[0]
    jsonschema.validate(config, ray_launcher_schema())
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in types
    assert types[head]["resources"].get("GPU", 0) == 0
    gpu_types = [t for n, t in types.items() if n != head and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no GPU worker node type"
    assert sum(t.get("max_workers", 0) for t in gpu_types) <= config["max_workers"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        text = " ".join(config[key])
        assert f"--metrics-export-port={RAY_METRICS_PORT}" in text, key
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "constraints.txt" in setup


def test_launcher_schema_rejects_unknown_keys() -> None:
    config = load_docs(LAUNCHER)[0]
    config["worker_start_commands"] = config.pop("worker_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_launcher_schema())


# --------------------------------------------------------------------------------------------
# Prometheus


def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("promtool not found: CI must install the Debian package `prometheus`")
    pytest.skip("promtool not installed (apt-get install prometheus)")


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), "check", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(path: Path) -> None:
    result = run_promtool("config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    config = load_docs(DEPLOY / "prometheus" / "prometheus.yml")[0]
    config["scrape_configs"][0]["scrape_interval"] = "five seconds"
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(config))
    assert run_promtool("config", str(broken)).returncode != 0
    broken.write_text(
        (DEPLOY / "prometheus" / "prometheus.yml").read_text() + "\nscrape_configz: []\n"
    )
    assert run_promtool("config", str(broken)).returncode != 0


def scrape_jobs(path: Path) -> dict[str, dict]:
    return {job["job_name"]: job for job in load_docs(path)[0]["scrape_configs"]}


def test_prometheus_scrapes_vaegen_ray_and_pushgateway() -> None:
    jobs = scrape_jobs(DEPLOY / "prometheus" / "prometheus.yml")
    targets = [t for c in jobs["vaegen"]["static_configs"] for t in c["targets"]]
    assert targets == [f"localhost:{VAEGEN_METRICS_PORT}"]
    assert [f for c in jobs["ray"]["file_sd_configs"] for f in c["files"]] == [RAY_SD_FILE]
    assert jobs["pushgateway"]["honor_labels"] is True
    k8s_jobs = scrape_jobs(DEPLOY / "prometheus" / "prometheus-kubernetes.yml")
    assert set(k8s_jobs) >= {"vaegen", "ray", "pushgateway"}
    services = {d["metadata"]["name"] for d in objects_of("Service")}
    for job in ("vaegen", "ray"):
        sd = k8s_jobs[job]["dns_sd_configs"]
        hosts = {n.split(".")[0] for c in sd for n in c["names"]}
        assert hosts and hosts <= services, f"{job}: {hosts} vs Services {services}"
    ports = {job: {c["port"] for c in k8s_jobs[job]["dns_sd_configs"]} for job in ("vaegen", "ray")}
    assert ports == {"vaegen": {VAEGEN_METRICS_PORT}, "ray": {RAY_METRICS_PORT}}


# --------------------------------------------------------------------------------------------
# Grafana: every metric a panel queries must be one the code exports.


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, for every metric in vaegen.telemetry.METRIC_NAMES.

    Counters are queried as NAME_total; histograms only through _bucket (with `le`), _sum and
    _count: the bare histogram name is no series.
    """
    from prometheus_client.metrics import MetricWrapperBase

    from vaegen import telemetry

    series: dict[str, set[str]] = {}
    for metric in vars(telemetry).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        if metric._type == "counter":
            names = {metric._name + "_total": labels}
        elif metric._type == "histogram":
            names = {
                metric._name + "_bucket": labels | {"le"},
                metric._name + "_sum": labels,
                metric._name + "_count": labels,
            }
        else:
            names = {metric._name: labels}
        exposed = metric._name + "_total" if metric._type == "counter" else metric._name
        if exposed in telemetry.METRIC_NAMES:
            series.update(names)
    return series


METRIC_RE = re.compile(r"(?<![\w:])vaegen_[A-Za-z0-9_:]*")
BY_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER_RE = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
LEGEND_RE = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


def expr_problems(expr: str, legend: str, series: dict[str, set[str]]) -> list[str]:
    """What is wrong with one panel query: unknown metrics, labels the metrics do not have."""
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(METRIC_RE.findall(code))
    problems = [f"unknown metric {n}" for n in sorted(names - series.keys())]
    if not names:
        problems.append("queries no vaegen metric")
    labels = set().union(*(series.get(n, set()) for n in names)) | {"job", "instance"}
    used = {lbl.strip() for group in BY_RE.findall(code) for lbl in group.split(",")} - {""}
    for matchers in re.findall(r"\{([^}]*)\}", code):
        used |= set(MATCHER_RE.findall(matchers))
    used |= set(LEGEND_RE.findall(legend))
    problems += [f"unknown label {lbl}" for lbl in sorted(used - labels)]
    return problems


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict) -> list[dict]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return [p for p in out if p["type"] != "row"]


def targets(dash: dict) -> list[tuple[dict, dict]]:
    return [(p, t) for p in panels(dash) for t in p.get("targets", [])]


def test_dashboard_queries_only_exported_metrics() -> None:
    series = exported_series()
    assert series, "vaegen.telemetry exports no metric"
    problems = [
        f"{panel['title']} [{target['refId']}]: {problem}"
        for panel, target in targets(dashboard())
        for problem in expr_problems(target["expr"], target.get("legendFormat", ""), series)
    ]
    assert problems == []


@pytest.mark.parametrize(
    "expr,legend,expected",
    [
        ("sum(rate(vaegen_samples_generated_total[1m]))", "", "unknown metric"),
        ("rate(vaegen_generate_batch_seconds[5m])", "", "unknown metric"),  # bare histogram
        ("vaegen_train_loss_sum", "", "unknown metric"),  # a gauge has no _sum
        ("sum by (class) (rate(vaegen_generated_samples_total[1m]))", "", "unknown label class"),
        ('vaegen_train_loss{terms="kl"}', "", "unknown label terms"),
        ("sum by (term) (vaegen_train_loss)", "{{label}}", "unknown label label"),
        ("sum(rate(node_cpu_seconds_total[1m]))", "", "queries no vaegen metric"),
    ],
)
def test_metric_checker_flags_bad_queries(expr: str, legend: str, expected: str) -> None:
    problems = expr_problems(expr, legend, exported_series())
    assert any(expected in p for p in problems), problems


def test_metric_checker_accepts_good_queries() -> None:
    series = exported_series()
    for expr in (
        "histogram_quantile(0.99, sum by (le) (rate(vaegen_generate_batch_seconds_bucket[5m])))",
        'sum(vaegen_generated_samples_total{label="3", job=~"vaegen.*"})',
        "vaegen_generate_shards_total",
    ):
        assert expr_problems(expr, "", series) == [], expr


REQUIRED_PANELS = {
    "samples/s overall": [
        "vaegen_generate_samples_per_second",
        "sum(rate(vaegen_generated_samples_total[",
    ],
    "samples/s per class": ["sumby(label)(rate(vaegen_generated_samples_total["],
    "shards done by status": ["by(status)", "vaegen_generate_shards_total"],
    "batch latency p50/p99": [
        "histogram_quantile(0.5,sumby(le)(rate(vaegen_generate_batch_seconds_bucket[",
        "histogram_quantile(0.99,sumby(le)(rate(vaegen_generate_batch_seconds_bucket[",
    ],
    "train loss by term": ["by(term)", "vaegen_train_loss"],
    "epoch time": ["vaegen_train_epoch_seconds_sum", "vaegen_train_epoch_seconds_count"],
    "eval time by metric": ["by(metric)", "vaegen_eval_seconds_sum"],
}


def missing_topics(dash: dict) -> list[str]:
    queries = [
        re.sub(r"\s+|\{[^}]*\}", "", " ".join(t["expr"] for t in p.get("targets", [])))
        for p in panels(dash)
    ]
    return [
        topic
        for topic, fragments in REQUIRED_PANELS.items()
        if not any(all(f in q for f in fragments) for q in queries)
    ]


def test_dashboard_has_every_required_panel() -> None:
    assert missing_topics(dashboard()) == []


def test_required_panel_check_can_fail() -> None:
    dash = dashboard()
    dash["panels"] = [
        p
        for p in dash["panels"]
        if "vaegen_generate_batch_seconds_bucket" not in json.dumps(p.get("targets", []))
    ]
    assert missing_topics(dash) == ["batch latency p50/p99"]


def test_every_selector_filters_on_the_job_variable() -> None:
    # A run both serves its metrics (job "vaegen") and can push its final totals (a Pushgateway
    # job): unless one job is picked, every sum() counts that run twice.
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["job"]["current"]["value"] == "vaegen"
    for panel, target in targets(dash):
        for match in METRIC_RE.finditer(target["expr"]):
            rest = target["expr"][match.end() :]
            assert re.match(r'\{[^}]*job=~"\$job"', rest), (panel["title"], match[0])


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]] + [
        c["id"] for p in dash["panels"] for c in p.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels(dash):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert target["expr"].strip()


GRAFANA_INTERVALS = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{__\w+\}")
GRAFANA_VARIABLES = re.compile(r"\$\{?\w+\}?")


def grafana_to_promql(expr: str) -> str:
    """The query as Grafana sends it: interval macros become a duration, variables a regex."""
    return GRAFANA_VARIABLES.sub(".*", GRAFANA_INTERVALS.sub("5m", expr))


def check_promql(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """promtool parses each expression as a recording rule: PromQL syntax errors fail."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"vaegen:dashboard_query_{i}", "expr": grafana_to_promql(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return run_promtool("rules", str(path))


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    result = check_promql([t["expr"] for _, t in targets(dashboard())], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promql_check_rejects_bad_syntax(tmp_path: Path) -> None:
    result = check_promql(["sum(rate(vaegen_generated_samples_total[1m])"], tmp_path)
    assert result.returncode != 0


def test_grafana_provisioning() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (datasources,) = load_docs(provisioning / "datasources" / "prometheus.yaml")
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    (dashboards,) = load_docs(provisioning / "dashboards" / "vaegen.yaml")
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


# --------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions(text: str | None = None) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text() if text is None else text
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), " ".join(rest.split())))
    return out


def dockerfile_args() -> dict[str, str]:
    return {
        k: v
        for keyword, rest in dockerfile_instructions()
        if keyword == "ARG" and "=" in rest
        for k, v in [rest.split("=", 1)]
    }


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


def dockerfile_problems(text: str) -> list[str]:
    instructions = dockerfile_instructions(text)
    args: dict[str, str] = {}
    base = None
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        if keyword == "FROM":
            base = expand(rest.split()[0], args)
            break
    problems = []
    cuda_runtime = r"nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-cudnn-runtime-ubuntu[\d.]+"
    match = re.fullmatch(cuda_runtime, base or "")
    if not match:
        problems.append(f"base image {base} is not an nvidia/cuda cudnn runtime image")
    elif int(match[1]) != 13:
        problems.append("onnxruntime-gpu 1.31 is built for CUDA 13")
    installs = [expand(r, args) for k, r in instructions if k == "RUN" and "pip install" in r]
    joined = " ".join(installs)
    if "onnxruntime-gpu" not in joined:
        problems.append("does not install onnxruntime-gpu")
    # The project itself, `.` or `".[EXTRAS]"` (deploy/Dockerfile's EXTRAS picks the extras).
    project = r'pip install -c constraints\.txt\b[^&;]*\s"?\.(\[[^\]\s"]+\])?"?(\s|$)'
    if not re.search(project, joined):
        problems.append("does not install the project with `pip install -c constraints.txt .`")
    if "ray[default" not in joined:
        problems.append("needs ray[default] for the dashboard, job API and metrics agent")
    entry = [json.loads(r) for k, r in instructions if k == "ENTRYPOINT"]
    if not entry or entry[-1][-1] != "vaegen":
        problems.append("entrypoint is not vaegen")
    exposed = {int(p.split("/")[0]) for k, r in instructions if k == "EXPOSE" for p in r.split()}
    if VAEGEN_METRICS_PORT not in exposed:
        problems.append(f"does not expose the metrics port {VAEGEN_METRICS_PORT}")
    return problems


def test_dockerfile_sanity() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_dockerfile_check_can_fail() -> None:
    text = DOCKERFILE.read_text()
    bad = text.replace("cudnn-runtime", "cudnn-devel").replace("onnxruntime-gpu==", "onnxruntime==")
    problems = dockerfile_problems(bad)
    assert any("runtime image" in p for p in problems)
    assert any("onnxruntime-gpu" in p for p in problems)
    assert any("entrypoint" in p for p in dockerfile_problems(text + '\nENTRYPOINT ["bash"]\n'))


def test_dockerfile_copies_every_package_and_the_context_allows_it() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(pyproject["tool"]["setuptools"]["packages"])
    sources = set()
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from" not in rest:
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources |= set(parts[:-1])
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert packages <= sources, f"packages not copied into the image: {packages - sources}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore
    assert {s.rstrip("/") for s in sources} <= {
        line[1:].rstrip("/") for line in ignore if line.startswith("!")
    }


# --------------------------------------------------------------------------------------------
# README's "Run on a cluster" walks through these files: the paths it names must exist.


def test_cluster_doc_names_existing_files() -> None:
    readme = (ROOT / "README.md").read_text()
    if "## Run on a cluster" not in readme:
        pytest.fail("README.md has no 'Run on a cluster' section")
    section = readme.split("## Run on a cluster", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"(?<![\w/])deploy/[\w./-]*\w", section))
    assert named, "README's cluster section names no deploy/ file"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert missing == []
