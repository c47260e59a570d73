"""A Kubernetes Deployment (and Service) for a service, printed by ``kubernetes-manifest``.

The container runs ``python /app/SCRIPT run OPTIONS...`` as a list of
words, with no shell between the kubelet and the service: the service is
the container's PID 1, gets the SIGTERM itself, and reaps what it leaves.
The probes ask the ``health=`` endpoint over HTTP when the kubelet can
reach it (a wildcard address), and run ``python /app/SCRIPT health``
otherwise.  The kubelet's SIGKILL comes ``terminationGracePeriodSeconds``
after the SIGTERM: the drain, ``stop_timeout`` and a margin.

The YAML is written by hand (the stdlib has no YAML writer): block
mappings, flow lists of scalars, and every string double-quoted as JSON
writes it, which YAML reads as the same string.
"""

from __future__ import annotations

import json
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._config import ServiceConfig

__all__ = ["APP_DIR", "DEFAULT_IMAGE", "check_image", "kubernetes_manifest", "resource_name"]

# Where the image puts the script (examples/Dockerfile copies it there).
APP_DIR = "/app"
DEFAULT_IMAGE = "app:latest"
# Beyond drain and stop_timeout, time for the on_stop callbacks and the exit itself.
_STOP_MARGIN = 5
_LABEL = "app.kubernetes.io/name"
# Hosts that bind every address of the pod: the only ones its IP reaches.
_WILDCARDS = ("", "0.0.0.0", "::")
# Bound IPv6 only (``_listeners`` sets IPV6_V6ONLY): an IPv4 pod IP, the
# usual kind, does not reach it.
_IPV6_ONLY = "::"

# Strings written without quotes: no YAML indicator, number or boolean look-alike.
_PLAIN = re.compile(r"(?:--?[A-Za-z]|[A-Za-z/])[A-Za-z0-9._/-]*(?::[A-Za-z0-9._/-]+)*")
_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})
# An image reference as Docker's distribution/reference grammar writes it:
# [registry[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*"
_IMAGE = re.compile(
    rf"(?:{_HOST}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


def check_image(text: str) -> str:
    """``text`` if it is an image reference (``registry/path:tag``); ValueError otherwise."""
    if len(text) > 255 or not _IMAGE.fullmatch(text):
        raise ValueError(f"{text!r} is not an image name (as registry.example/app:1.2)")
    return text


def resource_name(name: str) -> str:
    """The service's name as a DNS-1123 label, for the Deployment, its container and Service.

    Lowercase letters, digits and ``-``, at most 63 characters, starting
    with a letter (a Service's name must).
    """
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not label[:1].isalpha():
        label = f"app-{label}".rstrip("-")
    return label[:63].rstrip("-")


def kubernetes_manifest(
    config: ServiceConfig,
    options: Sequence[str] = (),
    *,
    name: str,
    image: str = DEFAULT_IMAGE,
    replicas: int = 1,
) -> tuple[str, list[str]]:
    """The YAML of a Deployment (and a Service for ``listen=``), and warnings to print.

    A warning names a ``listen=`` address the pod's IP cannot reach
    (loopback, one address, port 0), left out of the ports, or may not reach
    (IPv6 only); and a ``health=`` on IPv6 only, probed by the command instead.
    """
    script = f"{APP_DIR}/{config.script.rpartition('/')[2]}"
    ports, warnings = _ports(config.listen)
    if _health_port(config.health, ipv6=True) != _health_port(config.health):
        warnings.append(
            f"health {config.health!r} binds IPv6 only, which an IPv4 pod IP does not "
            "reach: the probes run the health command (health=tcp://:PORT for HTTP probes)"
        )
    container: dict[str, object] = {
        "name": name,
        "image": image,
        "command": ["python", script],
        "args": ["run", *options],
    }
    if ports:
        container["ports"] = [
            {"name": _port_name(port), "containerPort": port, "protocol": "TCP"} for port in ports
        ]
    container.update(_probes(config, [script, "health", *options]))
    labels = {_LABEL: name}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": grace_period(config),
                    "containers": [container],
                },
            },
        },
    }
    documents = [_yaml(deployment)]
    if ports:
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [
                    {"name": _port_name(p), "port": p, "targetPort": p, "protocol": "TCP"}
                    for p in ports
                ],
            },
        }
        documents.append(_yaml(service))
    return "---\n".join(documents), warnings


def grace_period(config: ServiceConfig) -> int:
    """Seconds from the kubelet's SIGTERM to its SIGKILL: drain + stop_timeout + a margin."""
    drain = config.drain
    return -int(-(drain + config.stop_timeout + _STOP_MARGIN) // 1)


def _ports(listen: Sequence[str]) -> tuple[list[int], list[str]]:
    """The TCP ports the pod's IP reaches, and a warning for each address it cannot."""
    from ._addresses import parse_address  # noqa: PLC0415 -- only services with listen=

    ports: list[int] = []
    warnings: list[str] = []
    ipv6_only: dict[int, str] = {}
    for entry in listen:
        address = parse_address(entry)
        if address.is_unix:
            continue
        if address.host not in _WILDCARDS or address.port == 0:
            warnings.append(
                f"listen {entry!r} is left out of the ports: the pod's IP does not reach "
                "it (listen on tcp://:PORT)"
            )
            continue
        if address.port not in ports:
            ports.append(address.port)
        if address.host == _IPV6_ONLY:
            ipv6_only.setdefault(address.port, entry)
        else:
            ipv6_only[address.port] = ""  # reached over IPv4 too
    warnings.extend(
        f"listen {entry!r} binds IPv6 only: an IPv4 pod IP does not reach it (add tcp://:{port})"
        for port, entry in ipv6_only.items()
        if entry
    )
    return ports, warnings


def _port_name(port: int) -> str:
    return f"tcp-{port}"


def _probes(config: ServiceConfig, health: list[str]) -> dict[str, object]:
    """Liveness, readiness and startup probes: on the ``health=`` endpoint, or ``health``."""
    port = _health_port(config.health)
    live: dict[str, object]
    ready: dict[str, object]
    if port is not None:
        live = {"httpGet": {"path": "/livez", "port": port}}
        ready = {"httpGet": {"path": "/readyz", "port": port}}
    else:
        # The interpreter starts for each probe: give it more than the default 1 s.
        live = {"exec": {"command": ["python", *health]}, "timeoutSeconds": 5}
        ready = {"exec": {"command": ["python", *health, "--ready"]}, "timeoutSeconds": 5}
    # Until the first success the kubelet runs only this one, for as long as
    # ``start`` would wait: a slow start is not taken for a hang.
    startup = {**ready, "periodSeconds": 1}
    startup["failureThreshold"] = max(1, -int(-config.start_timeout // 1))
    return {"livenessProbe": live, "readinessProbe": ready, "startupProbe": startup}


def _health_port(health: object, *, ipv6: bool = False) -> int | None:
    """The port of a ``health=`` address the kubelet can reach; None for the exec probes.

    ``ipv6``: reached over IPv6, where a pod's IP is one.
    """
    if health is None:
        return None
    from ._addresses import parse_address  # noqa: PLC0415 -- only services with health=

    address = parse_address(str(health))
    if address.is_unix or address.host not in _WILDCARDS or address.port == 0:
        return None
    if address.host == _IPV6_ONLY and not ipv6:
        return None
    return address.port


def _yaml(value: Mapping[str, object]) -> str:
    return "\n".join(_lines(value, 0)) + "\n"


def _lines(value: object, indent: int) -> list[str]:
    """Block YAML for a mapping or a list of mappings; scalars and their lists inline."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_block(item):
                lines += [f"{pad}{key}:", *_lines(item, indent + 2)]
            else:
                lines.append(f"{pad}{key}: {_inline(item)}")
        return lines
    assert isinstance(value, list)
    for item in value:
        nested = _lines(item, indent + 2)
        lines += [f"{pad}- {nested[0].lstrip()}", *nested[1:]]
    return lines


def _is_block(value: object) -> bool:
    if isinstance(value, dict):
        return bool(value)
    return isinstance(value, list) and any(isinstance(item, dict) for item in value)


def _inline(value: object) -> str:
    """A scalar, or a list of them: plain when YAML reads it back as the same string."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_inline, value)) + "]"
    if isinstance(value, str) and _PLAIN.fullmatch(value) and value.lower() not in _WORDS:
        return value
    # JSON's string is a YAML double-quoted scalar that means the same, but
    # YAML has no surrogate pairs: beyond ASCII, its own \U escape.
    text = json.dumps(value, ensure_ascii=False)
    return re.sub(r"[^\x20-\x7e]", lambda char: f"\\U{ord(char[0]):08x}", text)
