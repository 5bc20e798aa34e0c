"""deploy/: what can be checked without a systemd host, a container daemon or a cluster.

Every file parses; every calcnode config loads; the systemd unit passes ``systemd-analyze
verify``; and the unit, the Containerfile, the compose demo and the Kubernetes manifests agree
with the calcnode config each of them ships (ports, paths, stop timeouts), read by parsing them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node.config import load_config
from node.errors import ConfigError
from node.web import check_config as check_web_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "calcnode.service"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "kubernetes" / "calcnode.yaml"
CONFIG_IN_IMAGE = "/etc/calcnode/calcnode.yaml"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


# -- parsers ------------------------------------------------------------------------------

def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit: section -> key -> every value assigned (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def containerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line:
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def containerfile_args(instructions, name: str) -> list[str]:
    return [rest for word, rest in instructions if word == name]


def exec_form(text: str) -> list[str]:
    """A JSON exec-form argument list (CMD, ENTRYPOINT, HEALTHCHECK ... CMD)."""
    return json.loads(text)


def k8s_documents() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object per kind expected"
    return by_kind


def load_text_config(text: str, tmp_path: Path, name: str = "calcnode.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_config(path)


# -- every file ---------------------------------------------------------------------------

def test_every_yaml_and_json_file_parses():
    yamls = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    jsons = sorted(DEPLOY.rglob("*.json"))
    assert len(yamls) >= 5 and jsons, "deploy/ lost its configuration files"
    for path in yamls:
        assert [d for d in yaml.safe_load_all(path.read_text())], f"{path} is empty"
    for path in jsons:
        json.loads(path.read_text())


@pytest.mark.parametrize("relative", ["systemd/calcnode.yaml", "container/calcnode.yaml",
                                      "compose/calcnode.yaml"])
def test_shipped_calcnode_configs_load(relative):
    config = load_config(DEPLOY / relative)
    assert config.storage.path == "/var/lib/calcnode"


@pytest.mark.parametrize("relative", ["systemd/calcnode.yaml", "container/calcnode.yaml",
                                      "compose/calcnode.yaml"])
def test_shipped_web_settings_let_the_node_start(relative):
    """The web server refuses to start beyond loopback without a token (node/web.py)."""
    check_web_config(load_config(DEPLOY / relative).web)


def test_no_path_of_a_development_machine():
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"/(work|home|root|Users)/", text), path


# -- systemd ------------------------------------------------------------------------------

def test_unit_passes_systemd_analyze_verify(tmp_path):
    """A copy whose ExecStart is this venv's calcnode (the unit's /opt path does not exist here);
    verify must exit 0 and say nothing about the unit's own lines (it only warns, with exit 0,
    about unknown or misspelt directives)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    calcnode = Path(sys.executable).parent / "calcnode"
    if not calcnode.exists():
        pytest.skip(f"no calcnode script beside {sys.executable} (pip install -e . first)")
    text = UNIT.read_text()
    assert text.count("/opt/calcnode/venv/bin/calcnode") == 1
    copy = tmp_path / "calcnode.service"
    copy.write_text(text.replace("/opt/calcnode/venv/bin/calcnode", str(calcnode)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                            timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert [line for line in output.splitlines() if "calcnode.service" in line] == [], output


def test_unit_runs_the_node_as_its_own_user_with_its_config():
    service = unit_settings(UNIT)["Service"]
    config = load_config(DEPLOY / "systemd" / "calcnode.yaml")
    assert service["User"] == ["calcnode"] and "DynamicUser" not in service
    command = shlex.split(service["ExecStart"][0])
    assert command[1:] == ["serve", "--config", "/etc/calcnode/calcnode.yaml"]
    assert service["StateDirectory"] == ["calcnode"]
    assert service["WorkingDirectory"] == [config.storage.path]
    assert config.storage.path in service["ReadWritePaths"][0].split()
    assert service["ProtectSystem"] == ["strict"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert float(service["TimeoutStopSec"][0]) > config.listen.shutdown_grace_s
    assert service["Restart"] == ["on-failure"]


def test_unit_grants_no_capability_so_the_ports_are_unprivileged():
    service = unit_settings(UNIT)["Service"]
    config = load_config(DEPLOY / "systemd" / "calcnode.yaml")
    assert service["CapabilityBoundingSet"] == [""]
    assert config.listen.port > 1024 and config.web.port > 1024
    assert set(service["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["NoNewPrivileges"] == ["yes"]


# -- container ----------------------------------------------------------------------------

def test_containerfile_matches_its_config():
    instructions = containerfile_instructions(CONTAINERFILE)
    config = load_config(DEPLOY / "container" / "calcnode.yaml")
    assert instructions[0] == ("FROM", "debian:bookworm-slim")
    exposed = {int(p.split("/")[0]) for args in containerfile_args(instructions, "EXPOSE")
               for p in args.split()}
    assert exposed == {config.listen.port, config.web.port}
    assert containerfile_args(instructions, "VOLUME") == [config.storage.path]
    assert f"deploy/container/calcnode.yaml {CONFIG_IN_IMAGE}" in containerfile_args(instructions, "COPY")
    cmd = exec_form(containerfile_args(instructions, "CMD")[0])
    assert cmd == ["serve", "--config", CONFIG_IN_IMAGE]
    assert config.listen.host == "0.0.0.0"  # a published port arrives on the container's interface


def test_container_runs_as_a_non_root_user():
    users = containerfile_args(containerfile_instructions(CONTAINERFILE), "USER")
    assert len(users) == 1
    uid = users[0].split(":")[0]
    assert uid not in ("root", "0")


def test_healthcheck_calls_healthz_on_the_configured_web_port():
    instructions = containerfile_instructions(CONTAINERFILE)
    config = load_config(DEPLOY / "container" / "calcnode.yaml")
    (check,) = containerfile_args(instructions, "HEALTHCHECK")
    command = exec_form(check[check.index("CMD") + 3:].strip())
    assert command[0].endswith("/python")
    assert f"http://127.0.0.1:{config.web.port}/healthz" in command[-1]
    # the check runs inside the container, so loopback is enough and no token is shipped
    assert config.web.enabled and config.web.host in LOOPBACK and config.web.token == ""


def test_build_context_keeps_what_the_containerfile_copies():
    ignore = (DEPLOY / "container" / "Containerfile.dockerignore").read_text().split()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for args in containerfile_args(containerfile_instructions(CONTAINERFILE), "COPY"):
        *sources, _ = args.split()
        for source in sources:
            assert source.rstrip("/") in kept, f"COPY {source} is excluded from the context"
            assert (ROOT / source).exists(), source


# -- compose demo -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def orthanc():
    return json.loads((COMPOSE / "orthanc.json").read_text())


def mounts(service: dict) -> dict[str, str]:
    """container path -> host path of a compose service's bind mounts."""
    result = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        result[container] = host
    return result


def test_compose_calcnode_uses_the_image_and_config_of_deploy(compose):
    service = compose["services"]["calcnode"]
    context = (COMPOSE / service["build"]["context"]).resolve()
    assert (context / service["build"]["dockerfile"]).resolve() == CONTAINERFILE.resolve()
    host_config = mounts(service)[CONFIG_IN_IMAGE]
    assert (COMPOSE / host_config).resolve() == (COMPOSE / "calcnode.yaml").resolve()
    config = load_config(COMPOSE / "calcnode.yaml")
    assert config.storage.path in mounts(service)
    published = {int(p.split(":")[-1]) for p in service["ports"]}
    assert published == {config.listen.port}
    seconds = int(service["stop_grace_period"].rstrip("s"))
    assert seconds > config.listen.shutdown_grace_s
    # the image's HEALTHCHECK probes the port of the shipped container config
    image_config = load_config(DEPLOY / "container" / "calcnode.yaml")
    assert config.web.port == image_config.web.port and config.web.host in LOOPBACK


def test_orthanc_knows_calcnode_and_calcnode_knows_orthanc(compose, orthanc):
    config = load_config(COMPOSE / "calcnode.yaml")
    lua = (COMPOSE / "forward-mammography.lua").read_text()
    (target,) = re.findall(r"SendToModality\(\s*\w+\s*,\s*'([^']+)'\s*\)", lua)
    modality = orthanc["DicomModalities"][target]
    assert modality["AET"] == config.listen.ae_title
    assert modality["Port"] == config.listen.port
    assert modality["Host"] in compose["services"]
    assert modality["AllowStore"] is True
    (destination,) = config.destinations.values()
    assert destination.host in compose["services"] and destination.host != modality["Host"]
    assert destination.port == orthanc["DicomPort"]
    assert destination.ae_title == orthanc["DicomAet"]
    allowed = config.listen.allowed_calling_ae_titles
    assert not allowed or orthanc["DicomAet"] in allowed


def test_orthanc_runs_the_forwarding_script_it_is_given(compose, orthanc):
    orthanc_mounts = mounts(compose["services"]["orthanc"])
    assert orthanc["LuaScripts"], "no forwarding script configured"
    for script in orthanc["LuaScripts"]:
        assert (COMPOSE / orthanc_mounts[script]).resolve() == (COMPOSE / "forward-mammography.lua").resolve()
    assert (COMPOSE / orthanc_mounts["/etc/orthanc/orthanc.json"]).resolve() == (COMPOSE / "orthanc.json").resolve()
    lua = (COMPOSE / "forward-mammography.lua").read_text()
    assert re.search(r"^function OnStableSeries\(", lua, re.M)
    assert "tags['Modality'] == 'MG'" in lua


# -- Kubernetes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def k8s():
    return k8s_documents()


@pytest.fixture
def k8s_config(k8s, tmp_path):
    (name,) = k8s["ConfigMap"]["data"]
    return load_text_config(k8s["ConfigMap"]["data"][name], tmp_path, name)


def container_of(k8s) -> dict:
    (container,) = k8s["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return container


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def test_configmap_config_loads_and_is_the_one_the_pod_reads(k8s, k8s_config):
    container = container_of(k8s)
    pod = k8s["StatefulSet"]["spec"]["template"]["spec"]
    (name,) = k8s["ConfigMap"]["data"]
    assert container["args"] == ["serve", "--config", f"/etc/calcnode/{name}"]
    (volume,) = [v for v in pod["volumes"] if v.get("configMap")]
    assert volume["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == "/etc/calcnode"


def test_pod_ports_and_service_match_the_config(k8s, k8s_config):
    container = container_of(k8s)
    assert {p["containerPort"] for p in container["ports"]} == {k8s_config.listen.port,
                                                               k8s_config.web.port}
    service_targets = {port_number(container, p["targetPort"]) for p in k8s["Service"]["spec"]["ports"]}
    assert service_targets == {k8s_config.listen.port, k8s_config.web.port}
    selector = k8s["Service"]["spec"]["selector"]
    labels = k8s["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_probes_call_healthz_and_readyz_on_the_web_port(k8s, k8s_config):
    container = container_of(k8s)
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
    assert port_number(container, live["port"]) == k8s_config.web.port
    assert port_number(container, ready["port"]) == k8s_config.web.port
    # the kubelet connects to the pod's address: a loopback-only web server would fail them
    assert k8s_config.web.enabled and k8s_config.web.host not in LOOPBACK
    assert k8s_config.listen.host == "0.0.0.0"


def test_kubernetes_config_needs_exactly_its_web_token(k8s_config):
    """Shipped without a secret, so the node refuses to start until the operator sets one;
    with one, nothing else in the web settings stands in the way."""
    with pytest.raises(ConfigError, match="web.token"):
        check_web_config(k8s_config.web)
    check_web_config(dataclasses.replace(k8s_config.web, token="a-long-random-token"))


def test_spool_is_a_volume_claim_at_the_storage_path(k8s, k8s_config):
    (claim,) = k8s["StatefulSet"]["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in container_of(k8s)["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert mount["mountPath"] == k8s_config.storage.path


def test_pod_is_non_root_with_a_read_only_root(k8s, k8s_config):
    pod = k8s["StatefulSet"]["spec"]["template"]["spec"]
    container = container_of(k8s)
    assert pod["securityContext"]["runAsNonRoot"] is True
    users = containerfile_args(containerfile_instructions(CONTAINERFILE), "USER")
    assert str(pod["securityContext"]["runAsUser"]) == users[0].split(":")[0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # with a read-only root, the only writable places are volumes: the spool and /tmp
    mounted = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert mounted == {k8s_config.storage.path, "/tmp"}
    assert pod["terminationGracePeriodSeconds"] > k8s_config.listen.shutdown_grace_s
    assert k8s_config.workers >= 1, "workers 0 would count the cluster node's CPUs"
