"""The import direction of ../shared/ARCHITECTURE.md, checked on the source's AST."""

import ast
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parents[1] / "node"
NO_DICOM = ("pydicom", "pynetdicom", "yaml")


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


PURE = [NODE / "model.py", NODE / "assembly.py", *sorted((NODE / "detection").glob("*.py"))]
NO_NETWORK = [NODE / "images.py", NODE / "pixels.py", *sorted((NODE / "reporting").glob("*.py"))]


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.name)
def test_model_and_detection_import_no_dicom_or_yaml(path):
    assert not imports(path) & set(NO_DICOM)


@pytest.mark.parametrize("path", NO_NETWORK, ids=lambda p: p.name)
def test_images_and_reporting_import_no_networking(path):
    assert "pynetdicom" not in imports(path)


def test_only_receiver_its_pynetdicom_adaptations_and_sender_speak_dicom_networking():
    speakers = {p.name for p in NODE.rglob("*.py") if "pynetdicom" in imports(p)}
    assert speakers == {"receiver.py", "fastpath.py", "reactor.py", "sender.py"}


def test_only_cli_prints():
    for path in NODE.rglob("*.py"):
        if path.name == "cli.py" or "testing" in path.parts:
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"]
        assert not calls, f"{path} prints"
