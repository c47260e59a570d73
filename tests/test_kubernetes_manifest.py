"""``kubernetes-manifest``: a Deployment (and Service) checked against the Kubernetes schemas.

Every manifest the command prints is read back with PyYAML and validated,
strictly (no unknown field), by ``kubernetes-validate`` against the schemas
it bundles for the version below: no cluster and no network needed.  What
the schemas cannot say is checked field by field: the container runs
``python SCRIPT run OPTIONS`` as words with no shell, the probes, the grace
period, the ports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import kubernetes_validate
import pytest
import yaml
from conftest import REPO, python_path

from daemonize_deco import daemon
from daemonize_deco._kubernetes import kubernetes_manifest

pytestmark = pytest.mark.timeout(60)

KUBERNETES = "1.37.0"  # the schemas kubernetes-validate==1.37.0 bundles
SHELLS = {"sh", "bash", "dash", "zsh", "ash", "ksh"}

SCRIPT = """\
from daemonize_deco import daemon, should_stop, sleep

@daemon(pidfile="{dir}/web-{{port}}.pid", stdout="{dir}/web-{{port}}.log", stop_timeout=7.5,
        listen=["tcp://:{{port}}"])
def main(port: int = 8000, greeting: str = "hello", verbose: bool = False):
    while not should_stop():
        sleep(3600)

if __name__ == "__main__":
    main()
"""


def manifest_of(svc, *args: str) -> list[dict]:
    """The documents ``kubernetes-manifest ARGS`` prints, each valid against the schemas."""
    result = svc.cli("kubernetes-manifest", *args)
    assert result.returncode == 0, result.stderr
    return checked(result.stdout)


def checked(text: str) -> list[dict]:
    documents = list(yaml.safe_load_all(text))
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
        assert_no_shell(document)
    return documents


def assert_no_shell(value: object) -> None:
    """No command or args anywhere that hands a line to a shell."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("command", "args"):
                assert isinstance(item, list), f"{key} is not a list of words: {item!r}"
                assert all(isinstance(word, str) for word in item)
                assert item[0].rpartition("/")[2] not in SHELLS, item
                assert "-c" not in item, item
            assert_no_shell(item)
    elif isinstance(value, list):
        for item in value:
            assert_no_shell(item)


def container_of(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def web(make_service):
    svc = make_service(name="web")
    svc.script.write_text(SCRIPT.format(dir=svc.dir))
    return svc


@pytest.mark.scenario(
    "Managers",
    "kubernetes-manifest prints a Deployment running run, with exec probes on health",
    lost="nothing: the kubelet runs python SCRIPT run as the container's PID 1, no shell",
)
def test_a_plain_service_gets_a_deployment_with_exec_probes(make_service):
    svc = make_service(stop_timeout=7.0, start_timeout=12.5)
    result = svc.cli("kubernetes-manifest")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [deployment] = checked(result.stdout)
    assert deployment["kind"] == "Deployment"
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["metadata"]["name"] == "svc"
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    labels = {"app.kubernetes.io/name": "svc"}
    assert spec["selector"]["matchLabels"] == labels
    assert spec["template"]["metadata"]["labels"] == labels
    # stop_timeout 7 and a margin of 5 for on_stop and the exit.
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 12
    container = container_of(deployment)
    assert container["name"] == "svc"
    assert container["image"] == "app:latest"
    assert container["command"] == ["python", "/app/svc.py"]
    assert container["args"] == ["run"]
    assert "ports" not in container
    health = {"exec": {"command": ["python", "/app/svc.py", "health"]}, "timeoutSeconds": 5}
    ready = {
        "exec": {"command": ["python", "/app/svc.py", "health", "--ready"]},
        "timeoutSeconds": 5,
    }
    assert container["livenessProbe"] == health
    assert container["readinessProbe"] == ready
    # The kubelet waits for the first success as long as start would (13 x 1 s).
    assert container["startupProbe"] == {**ready, "periodSeconds": 1, "failureThreshold": 13}


def test_tcp_listen_addresses_get_a_service_with_one_port_each(make_service, tmp_path):
    svc = make_service(
        listen=[
            "tcp://:8001",
            "tcp://0.0.0.0:8002",
            "tcp://[::]:8002",  # the same port on IPv6: one port
            "tcp://127.0.0.1:8003",  # the pod's IP does not reach it
            f"unix:{tmp_path}/app.sock",
        ]
    )
    result = svc.cli("kubernetes-manifest")
    assert result.returncode == 0, result.stderr
    deployment, service = checked(result.stdout)
    ports = container_of(deployment)["ports"]
    assert ports == [
        {"name": "tcp-8001", "containerPort": 8001, "protocol": "TCP"},
        {"name": "tcp-8002", "containerPort": 8002, "protocol": "TCP"},
    ]
    assert service["kind"] == "Service"
    assert service["apiVersion"] == "v1"
    assert service["metadata"]["name"] == "svc"
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "svc"}
    assert service["spec"]["ports"] == [
        {"name": "tcp-8001", "port": 8001, "targetPort": 8001, "protocol": "TCP"},
        {"name": "tcp-8002", "port": 8002, "targetPort": 8002, "protocol": "TCP"},
    ]
    [warning] = result.stderr.splitlines()
    assert warning.startswith("svc: listen 'tcp://127.0.0.1:8003' is left out of the ports")


def test_only_loopback_or_unix_listen_gets_no_service(make_service, tmp_path):
    svc = make_service(listen=["tcp://127.0.0.1:8003", f"unix:{tmp_path}/app.sock"])
    result = svc.cli("kubernetes-manifest")
    assert result.returncode == 0, result.stderr
    [deployment] = checked(result.stdout)
    assert "ports" not in container_of(deployment)


@pytest.mark.scenario(
    "Options",
    "kubernetes-manifest carries main's options into args and the probes",
    lost="nothing: each option is one word of args, as given, whatever its characters",
)
def test_the_options_given_are_carried_into_args_and_the_probes(make_service):
    svc = web(make_service)
    greeting = 'it\'s "$HOME"; rm -rf / # é 😀 \\ on'
    deployment, service = manifest_of(
        svc, "--port", "9000", "--greeting", greeting, "--verbose",
        "--image", "registry.example:5000/team/web:1.2", "--replicas", "3",
    )  # fmt: skip
    container = container_of(deployment)
    words = ["--port", "9000", "--greeting", greeting, "--verbose"]
    assert container["command"] == ["python", "/app/web.py"]
    assert container["args"] == ["run", *words]
    assert container["livenessProbe"]["exec"]["command"] == [
        "python", "/app/web.py", "health", *words,
    ]  # fmt: skip
    assert container["image"] == "registry.example:5000/team/web:1.2"
    assert deployment["spec"]["replicas"] == 3
    # The placeholder {port} in listen= is filled from --port.
    assert service["spec"]["ports"][0]["port"] == 9000
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 13


def test_replicas_zero_and_a_digest_are_accepted(make_service):
    svc = make_service()
    image = "app@sha256:" + "ab" * 32
    [deployment] = manifest_of(svc, "--replicas", "0", "--image", image)
    assert deployment["spec"]["replicas"] == 0
    assert container_of(deployment)["image"] == image


def test_the_name_is_a_dns_label(make_service):
    svc = make_service(name="My_Service.v2")
    [deployment] = manifest_of(svc)
    assert deployment["metadata"]["name"] == "my-service-v2"
    assert container_of(deployment)["name"] == "my-service-v2"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--replicas", "-1"], "argument --replicas: '-1' is not a number of replicas"),
        (["--replicas", "two"], "argument --replicas: 'two' is not a number of replicas"),
        (["--replicas", "2147483648"], "argument --replicas: '2147483648' is not a number"),
        (["--replicas", "³"], "argument --replicas: '³' is not a number of replicas"),
        (["--image", "Bad Image"], "argument --image: 'Bad Image' is not an image name"),
        (["--image", ""], "argument --image: '' is not an image name"),
        (["--image", "App:1"], "argument --image: 'App:1' is not an image name"),
        (["--image", "app:-x"], "argument --image: 'app:-x' is not an image name"),
        (["--image", "app\n"], "argument --image: 'app\\n' is not an image name"),
    ],
)
@pytest.mark.scenario(
    "Bad input",
    "kubernetes-manifest with a bad --replicas or --image",
    lost="nothing: one line naming the value, exit status 2, no manifest",
)
def test_bad_input_is_one_line_and_status_2(make_service, args, error):
    svc = make_service()
    result = svc.cli("kubernetes-manifest", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[0].startswith(f"svc: {error}"), result.stderr
    assert "Traceback" not in result.stderr


# -- health= and drain=, read from the service's config ---------------------------


def config_of(tmp_path, **options: object) -> object:
    """The config ``@daemon(..., **options)`` makes (health=, drain=, stop_timeout=)."""
    keywords = {"stop_timeout": 10.0, "start_timeout": 4.0, **options}

    def main() -> None:
        """A service."""

    return daemon(pidfile=str(tmp_path / "x.pid"), **keywords)(main).config  # type: ignore[arg-type]


def generated(config: object, *words: str) -> list[dict]:
    text, warnings = kubernetes_manifest(config, list(words), name="app")
    assert warnings == []
    return checked(text)


@pytest.mark.parametrize("address", ["tcp://:8081", "tcp://0.0.0.0:8081"])
def test_health_endpoint_gives_http_probes_on_its_port(tmp_path, address):
    [deployment] = generated(config_of(tmp_path, health=address), "--port", "1")
    container = container_of(deployment)
    assert container["livenessProbe"] == {"httpGet": {"path": "/livez", "port": 8081}}
    assert container["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": 8081}}
    assert container["startupProbe"] == {
        "httpGet": {"path": "/readyz", "port": 8081}, "periodSeconds": 1, "failureThreshold": 4,
    }  # fmt: skip
    assert container["args"] == ["run", "--port", "1"]


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8081", "tcp://[::1]:8081", "unix:/run/h"])
def test_a_health_endpoint_the_kubelet_cannot_reach_gives_exec_probes(tmp_path, address):
    [deployment] = generated(config_of(tmp_path, health=address))
    probe = container_of(deployment)["livenessProbe"]
    assert probe["exec"]["command"][-1] == "health"


def test_ipv6_only_addresses_are_warned_about(tmp_path):
    """``[::]`` is bound IPv6 only: an IPv4 pod IP (the usual kind) does not reach it."""
    config = config_of(tmp_path, health="tcp://[::]:8081", listen=["tcp://[::]:8002"])
    text, warnings = kubernetes_manifest(config, [], name="app")
    deployment, service = checked(text)
    container = container_of(deployment)
    assert container["livenessProbe"]["exec"]["command"][-1] == "health"
    assert service["spec"]["ports"][0]["port"] == 8002  # an IPv6 pod IP reaches it
    assert warnings == [
        "listen 'tcp://[::]:8002' binds IPv6 only: an IPv4 pod IP does not reach it "
        "(add tcp://:8002)",
        "health 'tcp://[::]:8081' binds IPv6 only, which an IPv4 pod IP does not reach: the "
        "probes run the health command (health=tcp://:PORT for HTTP probes)",
    ]


@pytest.mark.parametrize(
    ("drain", "stop_timeout", "grace"),
    [(0, 10.0, 15), (2, 7.5, 15), (2.25, 0.5, 8), (30, 30.0, 65)],
)
def test_the_grace_period_covers_drain_stop_timeout_and_a_margin(
    tmp_path, drain, stop_timeout, grace
):
    config = config_of(tmp_path, drain=drain, stop_timeout=stop_timeout)
    [deployment] = generated(config)
    seconds = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert seconds == grace
    assert seconds >= drain + stop_timeout + 5


def test_the_yaml_reads_back_as_the_same_words(tmp_path):
    """Words YAML would read as another type, or that JSON escapes, survive as given."""
    words = [
        "on", "No", "null", "~", "1e3", "0x1", "-1", "-", "---", "a: b", "#x", "[x]", "*a", "&a",
        "!t", "%", "@", "`", ".inf", "'", '"', "\\", "\t\n", "\x85", "\u2028", "\ufeff", "é",
        "😀", "--flag=value", "/a/b:c",
    ]  # fmt: skip
    [deployment] = generated(config_of(tmp_path), *words)
    assert container_of(deployment)["args"] == ["run", *words]


def test_the_readme_shows_what_the_command_prints():
    """README, "Running in containers": the manifest, its comments taken away, is the output."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running in containers\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    shown = [re.sub(r"\s+# .*$", "", line) for line in textwrap.dedent(block).splitlines()]
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "kvserver.py"), "kubernetes-manifest",
         "--host", "0.0.0.0", "--image", "registry.example/kvserver:1.0", "--replicas", "2"],
        capture_output=True, text=True, timeout=30,
        env=dict(os.environ, PYTHONPATH=python_path(REPO)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert shown == result.stdout.splitlines()
    checked(result.stdout)


def test_a_service_with_health_gives_http_probes_from_its_command_line(make_service):
    svc = make_service(health="tcp://:18081", drain=3, stop_timeout=4)
    [deployment] = manifest_of(svc)
    container = container_of(deployment)
    assert container["livenessProbe"] == {"httpGet": {"path": "/livez", "port": 18081}}
    assert container["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": 18081}}
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 12
