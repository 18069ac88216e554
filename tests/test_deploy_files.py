"""``Dockerfile`` and ``docker-compose.yml`` linted (there is no Docker engine in CI to run
them): every service runs a real ``vstack-node`` command, every variable it is given is
one that command reads, every URL names a service of the file at the port it listens
on, every secret comes from the environment, and the image copies what exists."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import click
import yaml

from tools.node_cli import main as vstack_node

from .conftest import ROOT

#: Read by the Python runtime or every service, not by one command's options.
COMMON = {"LOG_LEVEL", "DATA_DIR", "HOST", "CLUSTER_SECRET", "API_TOKEN", "PUBLIC_READS",
          "VSTACK_INSECURE"}
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def envvars_of(command: str) -> set[str]:
    cmd = vstack_node.commands[command]
    names: set[str] = set()
    for param in cmd.params:
        if isinstance(param, click.Option) and param.envvar:
            envs = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
            names.update(envs)
    return names


def listening_port(service: dict[str, Any]) -> int:
    env = service.get("environment") or {}
    for key in ("PORT", "DEMO_PORT", "CLIENT_SERVICE_PORT", "REDUNDANCY_PORT"):
        if key in env:
            return int(env[key])
    raise AssertionError(f"no port for {service}")


def test_every_compose_service_runs_a_real_command_with_variables_it_reads() -> None:
    services = compose()["services"]
    assert {"metadata-service", "uploader-service", "smart-client", "demo-web",
            "redundancy-manager"} <= set(services)
    for name, service in services.items():
        [command] = service["command"]
        assert command in vstack_node.commands, (name, command)
        known = envvars_of(command) | COMMON
        for var in service.get("environment") or {}:
            assert var in known, f"{name}: {var} is not read by `vstack-node {command}`"


def test_every_url_names_a_service_of_the_file_at_its_port() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for var, value in (service.get("environment") or {}).items():
            for url in re.findall(r"https?://[^,\s=]+", str(value)):
                host, port = urlsplit(url).hostname, urlsplit(url).port
                if host == "localhost":  # what a browser on the host opens
                    published = {p.split(":")[0] for s in services.values()
                                 for p in s.get("ports") or []}
                    assert str(port) in published, f"{name} {var}: {url} is not published"
                    continue
                assert host in services, f"{name} {var}: {url} names no service"
                assert port == listening_port(services[host]), f"{name} {var}: {url}"


def test_secrets_come_from_the_environment_and_services_listen_beyond_loopback() -> None:
    data = compose()
    for name, service in data["services"].items():
        env = service.get("environment") or {}
        assert env.get("HOST") == "0.0.0.0", name
        for secret in ("CLUSTER_SECRET", "API_TOKEN"):
            assert str(env.get(secret, "")).startswith("${" + secret), (name, secret)


def test_the_dockerfile_copies_what_exists_and_installs_the_entry_point() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.strip()]
    assert lines[0].startswith("FROM python:3.11")
    for line in lines:
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert 'ENTRYPOINT ["vstack-node"]' in lines
    copied = {src for ln in lines if ln.startswith("COPY ") for src in ln.split()[1:-1]}
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests",
                                                                                  "benchmarks"}
    assert packages <= copied, f"not in the image: {packages - copied}"


def test_compose_volumes_are_declared() -> None:
    data = compose()
    declared = set(data.get("volumes") or {})
    for name, service in data["services"].items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            assert source in declared or source.startswith(("/", ".")), (name, volume)


def test_three_metadata_replicas_that_name_each_other() -> None:
    services = compose()["services"]
    metas = {n: s for n, s in services.items() if s["command"] == ["metadata"]}
    assert len(metas) == 3
    assert sorted(s["environment"]["METADATA_ID"] for s in metas.values()) == ["0", "1", "2"]
    peers = {s["environment"]["METADATA_PEERS"] for s in metas.values()}
    assert len(peers) == 1  # the same list, in the same order, everywhere
    [listed] = peers
    named = [urlsplit(u).hostname for u in listed.split(",")]
    by_id = {s["environment"]["METADATA_ID"]: n for n, s in metas.items()}
    assert named == [by_id[str(i)] for i in range(3)]  # entry i is replica i
    for name, service in services.items():
        if name not in metas and "METADATA_SERVICE_URL" in (service.get("environment") or {}):
            assert service["environment"]["METADATA_SERVICE_URL"] == listed, name
