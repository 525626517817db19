from __future__ import annotations

import itertools

import kubernetes_validate
import pytest

from minisgl_operator import GPU_RESOURCE, GROUP, KIND, VERSION
from minisgl_operator.builders import Owner, build_hpa, desired_objects, stale_kinds
from minisgl_operator.pod import selector_labels, worker_args
from minisgl_operator.rollout import IN_PLACE, RolloutPlan, plan_rollout
from minisgl_operator.spec import parse_spec

K8S_VERSION = "1.37.0"  # newest schema set kubernetes-validate ships; the e2e cluster runs v1.37.2
OLDEST_SUPPORTED = "1.28.0"  # docs/kubernetes.md: Kubernetes 1.28 or newer
OWNER = Owner("qwen", "llm", "0b1c2d3e-0000-4000-8000-000000000001")


def kinds_of(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objects}


def make_spec(tp: int, pvc: bool, secret: bool, autoscale: bool, template: bool) -> dict:
    spec: dict = {
        "image": "ghcr.io/x/minisgl-worker:0.1.0",
        "replicas": 2,
        "model": {"path": "Qwen/Qwen3-8B"},
        "engine": {"tensorParallelSize": tp, "attentionBackend": "fa3,fi", "memoryRatio": 0.85,
                   "maxRunningRequests": 128, "extraArgs": ["--num-tokenizer", "2"]},
        "resources": {"cpu": "8", "memory": "64Gi"},
        "scheduling": {"nodeSelector": {"gpu": "h100"},
                       "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]},
    }
    if pvc:
        spec["model"]["cache"] = {"pvcName": "models"}
    if secret:
        spec["model"]["tokenSecretRef"] = {"name": "hf-token"}
        spec["service"] = {"apiKeySecretRef": {"name": "api"}}
        spec["auth"] = {"apiKeysSecretRef": {"name": "keys"}, "maxQueuedRequests": 64}
    if autoscale:
        spec["autoscaling"] = {"minReplicas": 2, "maxReplicas": 6, "metric": "kv-usage", "target": 0.75}
    if template:
        spec["podTemplate"] = {
            "metadata": {"labels": {"team": "llm", "app.kubernetes.io/instance": "hijack"}},
            "spec": {"containers": [{"name": "worker", "imagePullPolicy": "Always"},
                                    {"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "inf"]}],
                     "hostIPC": True},
        }
    return spec


# Every combination of the optional features, each TP size in four of them (schema checks cost ~0.1s).
MATRIX = [((1, 2, 4, 8)[i % 4], *features)
          for i, features in enumerate(itertools.product((False, True), repeat=4))]


@pytest.mark.parametrize("tp, pvc, secret, autoscale, template", MATRIX)
def test_every_built_object_is_valid_kubernetes(tp, pvc, secret, autoscale, template):
    spec = parse_spec(make_spec(tp, pvc, secret, autoscale, template))
    objects = desired_objects(OWNER, spec, plan_rollout(spec, {}), service_monitor_available=True)
    kinds = [o["kind"] for o in objects]
    assert kinds[:4 if pvc else 3] == (["Service", "Job", "Deployment", "PodDisruptionBudget"] if pvc
                                       else ["Service", "Deployment", "PodDisruptionBudget"])
    assert ("HorizontalPodAutoscaler" in kinds) == autoscale
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            continue  # not a core schema; checked below
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        kubernetes_validate.validate(obj, OLDEST_SUPPORTED, strict=True)  # e.g. no preStop `sleep` (1.30+)
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": OWNER.name, "uid": OWNER.uid,
            "controller": True, "blockOwnerDeletion": True}]
    pod = kinds_of(objects)["Deployment"]["spec"]["template"]
    worker = pod["spec"]["containers"][0]
    assert worker["resources"]["limits"][GPU_RESOURCE] == tp
    assert worker["args"][worker["args"].index("--tp-size") + 1] == str(tp)
    assert pod["metadata"]["labels"].items() >= selector_labels(OWNER.name).items()
    env = {e["name"]: e for e in worker.get("env", [])}
    assert env["HF_HOME"]["value"] == "/models"  # the PVC, else an emptyDir: writable either way
    assert ("HF_HUB_OFFLINE" in env) == pvc  # the download Job filled the cache
    assert {"HF_TOKEN", "MINISGL_API_KEY"} <= env.keys() if secret else not env.keys() & {"HF_TOKEN", "MINISGL_API_KEY"}
    if template:
        assert worker["imagePullPolicy"] == "Always" and pod["spec"]["hostIPC"] is True
        assert [c["name"] for c in pod["spec"]["containers"]] == ["worker", "sidecar"]
        assert pod["metadata"]["labels"]["team"] == "llm"


def test_worker_pod_has_shm_probes_drain_and_no_scrape_annotations_beside_a_service_monitor():
    spec = parse_spec({**make_spec(8, True, False, False, False),
                       "probes": {"startupTimeoutSeconds": 3600}, "shutdown": {"drainTimeoutSeconds": 300}})
    pod = kinds_of(desired_objects(OWNER, spec, plan_rollout(spec, {}), False))["Deployment"]["spec"]["template"]
    worker = pod["spec"]["containers"][0]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "models"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["volumeMounts"]
    startup = worker["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
    assert worker["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "exec" in worker["lifecycle"]["preStop"]  # the `sleep` action needs Kubernetes 1.30
    assert pod["spec"]["terminationGracePeriodSeconds"] > 300
    assert worker["args"][worker["args"].index("--shutdown-timeout") + 1] == "300"
    assert "prometheus.io/scrape" not in pod["metadata"].get("annotations", {})  # the ServiceMonitor scrapes
    assert worker["command"] == ["python", "-m", "minisgl"]
    off = parse_spec({**make_spec(1, False, False, False, False), "monitoring": {"serviceMonitor": False}})
    pod = kinds_of(desired_objects(OWNER, off, plan_rollout(off, {}), True))["Deployment"]["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


@pytest.mark.parametrize("pvc", [False, True])
def test_pods_are_restricted_compliant_with_writable_caches(pvc):
    spec = parse_spec(make_spec(1, pvc, False, False, False))
    objects = kinds_of(desired_objects(OWNER, spec, plan_rollout(spec, {}), False))
    templates = [objects["Deployment"]["spec"]["template"]] + ([objects["Job"]["spec"]["template"]] if pvc else [])
    for pod in templates:
        sec = pod["spec"]["securityContext"]
        assert sec["runAsNonRoot"] is True and sec["fsGroup"] == 10001
        assert sec["seccompProfile"] == {"type": "RuntimeDefault"}
        container = pod["spec"]["containers"][0]
        csec = container["securityContext"]
        assert csec["allowPrivilegeEscalation"] is False and csec["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        for var in ("HF_HOME", "FLASHINFER_WORKSPACE_BASE", "TRITON_CACHE_DIR", "XDG_CACHE_HOME"):
            assert any(env[var].startswith(m) for m in mounts), (var, env[var], mounts)


def test_service_monitor_carries_configured_and_spec_labels():
    spec = parse_spec({**make_spec(1, False, False, False, False), "monitoring": {"labels": {"team": "llm"}}})
    sm = kinds_of(desired_objects(OWNER, spec, plan_rollout(spec, {}), True,
                                  monitor_labels={"release": "kube-prometheus-stack"}))["ServiceMonitor"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["metadata"]["labels"]["team"] == "llm"
    assert sm["metadata"]["labels"]["app.kubernetes.io/instance"] == OWNER.name


def test_no_deployment_until_the_download_job_finished():
    spec = parse_spec(make_spec(1, True, False, False, False))
    kinds = [o["kind"] for o in desired_objects(OWNER, spec, plan_rollout(spec, {}), False, downloaded=False)]
    assert kinds == ["Service", "Job", "PodDisruptionBudget"]
    job = kinds_of(desired_objects(OWNER, spec, plan_rollout(spec, {}), False))["Job"]
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] != "minisgl-worker"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["Qwen/Qwen3-8B", "main"]


def test_worker_cli_accepts_the_generated_flags():
    args_mod = pytest.importorskip("minisgl.server.args")
    spec = parse_spec(make_spec(2, True, True, False, False))
    parsed = args_mod.build_parser().parse_args(worker_args(spec))  # noqa
    assert parsed.tp_size == 2 and parsed.port == 8000 and parsed.host == "0.0.0.0"
    assert parsed.attention_backend == "fa3,fi" and parsed.device == "cuda"


def test_pdb_only_with_more_than_one_replica_and_monitor_only_when_its_api_exists():
    one = parse_spec({**make_spec(1, False, False, False, False), "replicas": 1})
    kinds = [o["kind"] for o in desired_objects(OWNER, one, plan_rollout(one, {}), False)]
    assert kinds == ["Service", "Deployment"]
    assert {k for _, k in stale_kinds([])} == {"PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor",
                                                 "InferencePool", "ScaledObject"}
    kinds = [o["kind"] for o in desired_objects(OWNER, one, plan_rollout(one, {}), True)]
    assert kinds == ["Service", "Deployment", "ServiceMonitor"]
    off = parse_spec({**make_spec(1, False, False, False, False), "monitoring": {"serviceMonitor": False}})
    assert "ServiceMonitor" not in [o["kind"] for o in desired_objects(OWNER, off, plan_rollout(off, {}), True)]


def test_hpa_scales_the_custom_resource_on_a_worker_metric():
    spec = parse_spec({**make_spec(1, False, False, False, False),
                       "autoscaling": {"maxReplicas": 4, "metric": "waiting-requests", "target": 8}})
    hpa = build_hpa(OWNER, spec)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": OWNER.name}
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == "minisgl_num_waiting_requests"
    assert metric["target"]["averageValue"] == "8"


def test_deployment_takes_the_rollout_plan_and_service_targets_the_named_port():
    spec = parse_spec(make_spec(4, False, False, False, False))
    objs = desired_objects(OWNER, spec, RolloutPlan(IN_PLACE, "x"), False)
    service, deployment = objs[0], objs[1]
    assert deployment["spec"]["strategy"] == IN_PLACE
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_hpa_behavior_waits_for_the_measured_time_to_ready():
    from minisgl_operator.autoscaling import measured_time_to_ready

    spec = parse_spec({**make_spec(1, False, False, False, False), "autoscaling": {"maxReplicas": 4}})
    pods = [{"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "status": {"conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": f"2026-01-01T00:{m:02d}:05Z"}]}} for m in (3, 11)]
    ttr = measured_time_to_ready(pods)
    assert ttr == 690  # the slowest pod, 665 s, rounded up to 30 s
    down = build_hpa(OWNER, spec, ttr)["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 1380 and down["policies"][0]["periodSeconds"] == 690
    unmeasured = build_hpa(OWNER, spec)["spec"]["behavior"]["scaleDown"]
    assert unmeasured["stabilizationWindowSeconds"] == 3600  # the 1800 s startup budget, capped
    kubernetes_validate.validate(build_hpa(OWNER, spec, ttr), K8S_VERSION, strict=True)


def test_service_monitor_labels_targets_as_annotation_scraping_does():
    spec = parse_spec(make_spec(1, False, False, False, False))
    sm = kinds_of(desired_objects(OWNER, spec, plan_rollout(spec, {}), True))["ServiceMonitor"]
    relabelings = sm["spec"]["endpoints"][0]["relabelings"]
    assert relabelings == [{"sourceLabels": [f"__meta_kubernetes_pod_label_app_kubernetes_io_{k}"],
                            "targetLabel": f"app_kubernetes_io_{k}"} for k in ("name", "instance")]


@pytest.mark.parametrize("pvc", (False, True))
def test_workers_and_download_job_load_the_spec_revision(pvc):
    raw = make_spec(1, pvc, False, False, False)
    raw["model"]["revision"] = "a1b2c3d"
    objects = kinds_of(desired_objects(OWNER, parse_spec(raw), RolloutPlan(IN_PLACE, "x"), False))
    env = {e["name"]: e.get("value") for e in objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MINISGL_MODEL_REVISION"] == "a1b2c3d"  # what minisgl.models resolves Hub repos with
    if pvc:
        job_env = {e["name"]: e.get("value") for e in objects["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert job_env["MINISGL_MODEL_REVISION"] == "a1b2c3d"


def test_a_local_model_path_gets_no_revision():
    raw = make_spec(1, False, False, False, False)
    raw["model"]["path"] = "/models/qwen"
    dep = kinds_of(desired_objects(OWNER, parse_spec(raw), RolloutPlan(IN_PLACE, "x"), False))["Deployment"]
    assert "MINISGL_MODEL_REVISION" not in {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_auth_key_file_is_mounted_and_the_worker_cli_takes_the_flags():
    from minisgl.server.args import build_parser

    spec = parse_spec(make_spec(1, False, True, False, False))
    dep = kinds_of(desired_objects(OWNER, spec, plan_rollout(spec, {}), service_monitor_available=True))["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    [secret] = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert secret["secret"]["secretName"] == "keys"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-keys")
    assert mount["readOnly"] is True
    ns = build_parser().parse_args(worker_args(spec))  # the worker's own parser accepts them
    assert ns.api_key_file == f"{mount['mountPath']}/keys" and ns.max_queued_requests == 64
    with pytest.raises(ValueError, match="auth.maxQueuedRequests"):
        parse_spec({**make_spec(1, False, False, False, False), "auth": {"maxQueuedRequests": -1}})


def test_kv_cache_dtype_reaches_the_worker_cli_and_is_validated():
    from minisgl.server.args import build_parser

    raw = make_spec(1, False, False, False, False)
    raw["engine"] = {**raw["engine"], "attentionBackend": "fi", "kvCacheDtype": "fp8_e4m3"}
    spec = parse_spec(raw)
    ns = build_parser().parse_args(worker_args(spec))  # the worker's own parser accepts it
    assert ns.kv_cache_dtype == "fp8_e4m3" and ns.attention_backend == "fi"
    default = parse_spec(make_spec(1, False, False, False, False))
    assert default.kv_cache_dtype == "auto" and "--kv-cache-dtype" not in worker_args(default)
    with pytest.raises(ValueError, match="engine.kvCacheDtype"):
        parse_spec({**raw, "engine": {**raw["engine"], "kvCacheDtype": "int8"}})
    with pytest.raises(ValueError, match="needs engine.attentionBackend torch or fi"):
        parse_spec({**raw, "engine": {**raw["engine"], "attentionBackend": "fa3,fi"}})
    with pytest.raises(ValueError, match="engine.attentionBackend must be one of"):
        parse_spec({**raw, "engine": {**raw["engine"], "attentionBackend": "flash"}})
    from minisgl import config as worker_config
    from minisgl_operator import spec as spec_mod

    assert spec_mod.FP8_KV_BACKENDS == worker_config.FP8_KV_BACKENDS  # the operator's copy
    assert spec_mod.KV_CACHE_DTYPES == worker_config.KV_CACHE_DTYPES
