"""envtest-style Kubernetes control plane for the operator's e2e tests.

etcd + kube-apiserver + kube-controller-manager on 127.0.0.1 (free ports, certificates and
service-account keys made here), no scheduler and no kubelet: Deployments get ReplicaSets and
Pods, garbage collection and the HPA run, and tests write pod status themselves.
Binaries come from .ci/build_kube.sh (cached under ~/.cache/minisgl/kube/<version>/bin).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from tests.helpers.ports import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / ".ci" / "build_kube.sh"
KUBE_VERSION = os.environ.get("MINISGL_KUBE_VERSION", "v1.37.2")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
T = TypeVar("T")
DEFAULT_WORKER_IMAGE = "ghcr.io/minisgl/minisgl-worker:e2e"


def required() -> bool:
    return os.environ.get("MINISGL_REQUIRE_E2E") == "1"


class Fatal(RuntimeError):
    """A component died: stop waiting at once."""


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - the last error is reported on timeout
            last_error = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f": {last_error!r}" if last_error else ""))


def find_binaries() -> Path:
    """The bin directory ($MINISGL_KUBE_BIN_DIR, else the build script's cache), building it
    with .ci/build_kube.sh when it is missing and MINISGL_REQUIRE_E2E=1."""
    cache = Path(os.environ.get("MINISGL_KUBE_CACHE", Path.home() / ".cache" / "minisgl" / "kube"))
    bin_dir = Path(os.environ.get("MINISGL_KUBE_BIN_DIR") or cache / KUBE_VERSION / "bin")
    if all((bin_dir / b).exists() for b in BINARIES):
        return bin_dir
    if not required():
        pytest.skip(f"Kubernetes binaries missing in {bin_dir}: run .ci/build_kube.sh (or set MINISGL_REQUIRE_E2E=1)")
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _write_pki(d: Path) -> None:
    """CA, API server serving cert, admin + operator client certs, service-account key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("minisgl-e2e-ca")).issuer_name(name("minisgl-e2e-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(stem: str, subject: x509.Name, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            ]), critical=False)
        (d / f"{stem}.crt").write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        (d / f"{stem}.key").write_bytes(key_pem(key))

    issue("apiserver", name("kube-apiserver"), server=True)
    issue("admin", name("admin", "system:masters"), server=False)
    issue("operator", name("minisgl-operator"), server=False)  # bound to rbac.yaml's rules only
    issue("front-proxy-client", name("front-proxy-client"), server=False)  # the aggregator's, to extension servers
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (d / "sa.key").write_bytes(key_pem(sa_key))
    (d / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, credentials: str,
                     namespace: str = "default") -> Path:
    """A one-context kubeconfig; `credentials` is the user's YAML flow mapping body."""
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {{server: "{server}", certificate-authority: "{ca}"}}
users:
- name: {user}
  user: {{{credentials}}}
contexts:
- name: e2e
  context: {{cluster: e2e, user: {user}, namespace: {namespace}}}
current-context: e2e
""")
    return path


def _kubeconfig(d: Path, server: str, user: str) -> Path:
    return write_kubeconfig(d / f"{user}.kubeconfig", server, d / "ca.crt", user,
                            f'client-certificate: "{d / f"{user}.crt"}", '
                            f'client-key: "{d / f"{user}.key"}"')


class Cluster:
    """A running control plane. `kubeconfig` is cluster-admin; `operator_kubeconfig` is the
    user `minisgl-operator`, whom tests bind to the operator's own RBAC rules."""

    def __init__(self, bin_dir: Path, workdir: Path, audit_user: str | None = None) -> None:
        self.audit_user = audit_user  # log every request of this user to audit.log (JSON lines)
        self.bin_dir = bin_dir
        self.dir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "wb")
        proc = subprocess.Popen([str(self.bin_dir / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise Fatal(f"{name} exited with {proc.returncode}:\n{tail}")

    def start(self, timeout: float = 120) -> "Cluster":
        d = self.dir
        _write_pki(d)
        etcd_port, peer_port = free_port(), free_port()
        self._spawn("etcd", [
            "--data-dir", str(d / "etcd"), "--name", "e2e", "--log-level", "warn", "--unsafe-no-fsync",
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"e2e=http://127.0.0.1:{peer_port}",
        ])
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={d / 'sa.pub'}", f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24", "--authorization-mode=RBAC",
            "--endpoint-reconciler-type=none",
            "--disable-admission-plugins=ServiceAccount", "--enable-priority-and-fairness=false",
            # As on OpenShift: blockOwnerDeletion needs update on the owner's finalizers.
            # (PodSecurity and ResourceQuota are on by default.)
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement,ResourceQuota,PodSecurity",
            # API aggregation (custom.metrics.k8s.io from prometheus-adapter): the front proxy's
            # client cert, and endpoints instead of a ClusterIP nothing routes here.
            f"--requestheader-client-ca-file={d / 'ca.crt'}", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={d / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={d / 'front-proxy-client.key'}", "--enable-aggregator-routing=true",
            "--profiling=false", "--v=1", *self._audit_flags(),
        ])
        _kubeconfig(d, self.server, "admin")
        _kubeconfig(d, self.server, "operator")
        wait_for(self._ready, timeout, "kube-apiserver /readyz")
        return self

    def _audit_flags(self) -> list[str]:
        if not self.audit_user:
            return []
        policy = self.dir / "audit-policy.yaml"
        policy.write_text(f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  users: ["{self.audit_user}"]
- level: None
""")
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s"]

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    def start_controllers(self, extra: tuple[str, ...] = ()) -> "Cluster":
        """kube-controller-manager; start it after installing CRDs, so that its REST mapper
        knows them from the start (the HPA controller scales custom resources through it)."""
        d = self.dir
        admin = self.kubeconfig
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={admin}", f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
            f"--service-account-private-key-file={d / 'sa.key'}", f"--root-ca-file={d / 'ca.crt'}",
            "--controllers=deployment-controller,replicaset-controller,garbage-collector-controller,"
            "horizontal-pod-autoscaler-controller,serviceaccount-controller,namespace-controller,"
            "resourcequota-controller" + "".join("," + c for c in extra),
            "--horizontal-pod-autoscaler-sync-period=1s", "--concurrent-deployment-syncs=2", "--v=1",
        ])
        return self

    def _ready(self) -> bool:
        self._check_alive()
        out = self.kubectl("get", "--raw=/readyz", check=False)
        return out.returncode == 0 and out.stdout.strip() == "ok"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.dir / "operator.kubeconfig"

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess:
        out = subprocess.run([str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
                             input=stdin, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr}")
        return out

    def api_client(self, kubeconfig: Path | None = None):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def stop(self) -> None:
        # One at a time, clients before servers. kube-apiserver's graceful shutdown can take
        # many seconds with watches open; its state is throwaway, so a short grace period.
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)


class OperatorProcess:
    """`python -m minisgl_operator` as a subprocess against the test cluster."""

    # Resync of minutes, as in production: every status change in these tests must come from a watch.
    def __init__(self, kubeconfig: Path, log_path: Path, resync_seconds: float = 300.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.extra_args = extra_args
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.resync_seconds = resync_seconds
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "OperatorProcess":
        env = dict(os.environ)
        paths = [str(REPO / "operator"), str(REPO / "worker"), env.get("PYTHONPATH", "")]
        env.update(KUBECONFIG=str(self.kubeconfig), PYTHONPATH=os.pathsep.join(p for p in paths if p),
                   MINISGL_OPERATOR_RESYNC_SECONDS=str(self.resync_seconds))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minisgl_operator", "--all-namespaces",
             "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz",
             "--metrics-port", str(self.metrics_port), *self.extra_args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._live, timeout, "operator liveness endpoint")
        return self

    def _live(self) -> bool:
        import httpx

        if self.proc is None or self.proc.poll() is not None:
            raise Fatal(f"operator exited: {self.log()[-3000:]}")
        return httpx.get(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2).status_code == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def bind_operator_rbac(cluster: Cluster) -> None:
    """ClusterRole from the operator's packaged rbac.yaml, bound to the user the operator runs as."""
    import yaml

    rules = yaml.safe_load((REPO / "operator" / "minisgl_operator" / "rbac.yaml").read_text())
    docs = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "minisgl-operator"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "minisgl-operator"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "minisgl-operator"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "minisgl-operator"}]},
    ]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def install_crd(cluster: Cluster, path: Path) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(path))
    # Right after the apply the status may have no conditions yet (kubectl wait then errors): retry.
    wait_for(lambda: cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "-f", str(path),
                                     check=False).returncode == 0, 60, f"CRD {path.name} Established")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    bin_dir = find_binaries()
    c = Cluster(bin_dir, tmp_path_factory.mktemp("kube")).start()
    try:
        install_crd(c, REPO / "crds" / "minisgl.io_minisgldeployments.yaml")
        bind_operator_rbac(c)
        c.start_controllers()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def operator(cluster: Cluster):
    op = OperatorProcess(cluster.operator_kubeconfig, cluster.dir / "operator.log", extra_args=(
        f"--worker-image={DEFAULT_WORKER_IMAGE}", "--service-monitor-label=release=kube-prometheus-stack")).start()
    try:
        yield op
    finally:
        op.stop()
        if os.environ.get("MINISGL_E2E_SHOW_LOGS"):
            print(op.log()[-20000:])
