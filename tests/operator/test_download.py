"""The download Job reports the snapshot's size; the startup budget scales with it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kopf
import pytest

from minisgl_operator.builders import Owner, desired_objects
from minisgl_operator.download import SCRIPT, build_download_job, download_job_name, reported_model_bytes
from minisgl_operator.pod import (DEFAULT_STARTUP_SECONDS, LOAD_BYTES_PER_SECOND, STARTUP_BASE_SECONDS,
                                  STARTUP_PERIOD_SECONDS, startup_budget)
from minisgl_operator.reconcile import Reconciler, utc_now
from minisgl_operator.rollout import IN_PLACE, RolloutPlan
from minisgl_operator.spec import parse_spec
from minisgl_operator.store import Store

OWNER = Owner("qwen", "llm", "u-1")
GB16 = 16 * 10**9


def spec(cache: bool, timeout: int | None = None):
    raw: dict = {"image": "img", "model": {"path": "Qwen/Qwen3-8B"}}
    if cache:
        raw["model"]["cache"] = {"pvcName": "models"}
    if timeout is not None:
        raw["probes"] = {"startupTimeoutSeconds": timeout}
    return parse_spec(raw)


def startup_seconds(s, model_bytes):
    dep = next(o for o in desired_objects(OWNER, s, RolloutPlan(IN_PLACE, "x"), False, model_bytes=model_bytes)
               if o["kind"] == "Deployment")
    probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    return probe["failureThreshold"] * probe["periodSeconds"]


def test_budget_is_a_base_plus_load_time_at_a_conservative_rate():
    expected = STARTUP_BASE_SECONDS + GB16 / LOAD_BYTES_PER_SECOND  # 600 + 291 s
    assert abs(startup_seconds(spec(True), GB16) - expected) <= STARTUP_PERIOD_SECONDS
    # 140 GB (a 70B model in bf16) gets well over the flat half hour.
    assert startup_budget(spec(True), 140 * 10**9) > 3000


def test_budget_never_goes_below_an_explicit_timeout():
    assert startup_budget(spec(True, timeout=3600), GB16) == 3600
    assert startup_budget(spec(True, timeout=60), GB16) == startup_budget(spec(True), GB16)


def deadline(s, model_bytes):
    dep = next(o for o in desired_objects(OWNER, s, RolloutPlan(IN_PLACE, "x"), False, model_bytes=model_bytes)
               if o["kind"] == "Deployment")
    return dep["spec"]["progressDeadlineSeconds"]


def test_progress_deadline_follows_the_startup_budget_so_a_long_load_is_not_a_failure():
    from minisgl_operator.pod import PROGRESS_MARGIN_SECONDS

    big = 400 * 10**9  # a 200B-class model in bf16: a load of well over two hours at 50 MiB/s
    assert startup_budget(spec(True), big) > 7200
    assert deadline(spec(True), big) == startup_budget(spec(True), big) + PROGRESS_MARGIN_SECONDS
    assert deadline(spec(True), big) > startup_seconds(spec(True), big)  # the probe gives up first
    assert deadline(spec(False), None) == DEFAULT_STARTUP_SECONDS + PROGRESS_MARGIN_SECONDS
    explicit = parse_spec({"image": "i", "model": {"path": "m"}, "rollout": {"progressDeadlineSeconds": 120}})
    assert deadline(explicit, big) == 120  # an explicit value is the user's call


def test_without_a_download_job_or_a_size_the_spec_decides():
    assert startup_seconds(spec(False), GB16) == DEFAULT_STARTUP_SECONDS
    assert startup_seconds(spec(False, timeout=900), GB16) == 900
    assert startup_seconds(spec(True), None) == DEFAULT_STARTUP_SECONDS


def test_hpa_falls_back_to_the_derived_budget():
    raw = {"image": "img", "model": {"path": "m/m", "cache": {"pvcName": "p"}},
           "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}
    s = parse_spec(raw)
    small = next(o for o in desired_objects(OWNER, s, RolloutPlan(IN_PLACE, "x"), False, model_bytes=10**9)
                 if o["kind"] == "HorizontalPodAutoscaler")
    big = next(o for o in desired_objects(OWNER, s, RolloutPlan(IN_PLACE, "x"), False, model_bytes=400 * 10**9)
               if o["kind"] == "HorizontalPodAutoscaler")
    assert small["spec"]["behavior"] != big["spec"]["behavior"]


def pod(job: str, terminated: dict) -> dict:
    return {"metadata": {"name": f"{job}-x", "ownerReferences": [{"kind": "Job", "name": job}]},
            "status": {"containerStatuses": [{"name": "download", "state": {"terminated": terminated}}]}}


def test_the_size_comes_from_a_succeeded_pod_of_that_job_only():
    job = download_job_name("qwen", spec(True))
    ok = pod(job, {"exitCode": 0, "message": json.dumps({"modelBytes": GB16})})
    assert reported_model_bytes(job, [ok]) == GB16
    assert reported_model_bytes("other-job", [ok]) is None
    failed = pod(job, {"exitCode": 1, "message": "Traceback ... 401 Unauthorized"})  # FallbackToLogsOnError
    assert reported_model_bytes(job, [failed]) is None
    assert reported_model_bytes(job, [pod(job, {"exitCode": 0})]) is None  # an older Job reported nothing


def test_the_job_writes_its_termination_message_where_the_kubelet_reads_it():
    c = build_download_job("qwen", spec(True), {"namespace": "llm"})["spec"]["template"]["spec"]["containers"][0]
    assert c["terminationMessagePath"] == c["command"][3] and c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_script_reports_the_snapshot_size_through_its_symlinks(tmp_path: Path):
    """Run the Job's script for real, with a stand-in snapshot_download laid out like the Hub cache."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    (snap / "sub").mkdir(parents=True)
    (blobs / "w").write_bytes(b"x" * 1000)
    (blobs / "c").write_bytes(b"y" * 24)
    os.symlink(blobs / "w", snap / "model.safetensors")
    os.symlink(blobs / "c", snap / "sub" / "config.json")
    stub = tmp_path / "stub" / "huggingface_hub"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(f"def snapshot_download(repo, revision, token):\n    return {str(snap)!r}\n")
    log = tmp_path / "termination-log"
    env = {**os.environ, "PYTHONPATH": str(stub.parent)}
    subprocess.run([sys.executable, "-c", SCRIPT, str(log), "Qwen/Qwen3-8B", "main"], env=env, check=True,
                   capture_output=True, timeout=60)
    assert json.loads(log.read_text()) == {"modelBytes": 1024}
    assert reported_model_bytes("j", [pod("j", {"exitCode": 0, "message": log.read_text()})]) == 1024


@pytest.mark.parametrize("change", ({"image": "img:2"}, {"env": [{"name": "A", "value": "1"}]}))
def test_the_job_name_ignores_what_does_not_change_the_download(change):
    """The operator never re-applies an existing Job (its template is immutable): only model and
    revision name it."""
    raw = {"image": "img", "model": {"path": "Qwen/Qwen3-8B", "cache": {"pvcName": "models"}}}
    assert download_job_name("q", parse_spec(raw)) == download_job_name("q", parse_spec({**raw, **change}))


def test_workers_wait_briefly_for_the_report_of_a_job_that_just_completed():
    """Complete (Job watch) can arrive before the pod's Succeeded (pod watch): wait for the pod,
    or the Deployment would be built with the default budget and rolled again seconds later."""
    store = Store()
    r = Reconciler(kube=None, store=store)  # type: ignore[arg-type] - _model_bytes reads the cache only
    job = {"metadata": {"name": "j"}, "status": {"completionTime": utc_now()}}
    with pytest.raises(kopf.TemporaryError, match="waiting for its pod"):
        r._model_bytes(OWNER, "j", job, {})
    long_ago = {"metadata": {"name": "j"}, "status": {"completionTime": "2020-01-01T00:00:00Z"}}
    assert r._model_bytes(OWNER, "j", long_ago, {}) is None  # the pod is gone: the spec's budget
    assert r._model_bytes(OWNER, "j", long_ago, {"downloadJob": "j", "modelBytes": GB16}) == GB16
    assert r._model_bytes(OWNER, "j", long_ago, {"downloadJob": "old", "modelBytes": 1}) is None
    running = pod("j", {})
    running["metadata"].update(name="j-run", namespace="llm", labels={"app.kubernetes.io/instance": "qwen"})
    running["status"] = {"phase": "Running"}  # its Succeeded update is still on the way
    store.upsert("Pod", running)
    with pytest.raises(kopf.TemporaryError):
        r._model_bytes(OWNER, "j", job, {})
    reported = pod("j", {"exitCode": 0, "message": json.dumps({"modelBytes": 5})})
    reported["status"]["phase"] = "Succeeded"
    reported["metadata"].update(namespace="llm", labels={"app.kubernetes.io/instance": "qwen"})
    store.upsert("Pod", reported)
    assert r._model_bytes(OWNER, "j", job, {}) == 5
