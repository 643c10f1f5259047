"""The package's shape: the one-way import rule, and a wheel that carries the firmware.

Imports flow protocol <- common <- (gateway | province | device) <- sim <- cli; a role importing another
role, or anything in production importing the simulator, fails here (import-linter, the contract in
pyproject.toml). The wheel built from this checkout, installed into a fresh venv, must flash (dry run)
and run a simulated hall: the firmware and the pin maps travel as package data, not as files beside a
checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tools"))
import typetree  # noqa: E402


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache", str(ROOT / "pyproject.toml")],
                          cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                          text=True, timeout=120)


def test_imports_flow_one_way(tmp_path: Path) -> None:
    made = typetree.layout(ROOT, tmp_path)
    assert {"countersign.protocol", "countersign.common", "countersign.gateway", "countersign.province",
            "countersign.device", "countersign.sim"} <= set(made)
    r = _lint_imports(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def test_the_rule_catches_a_role_importing_the_simulator(tmp_path: Path) -> None:
    # The same tree, with one gateway module that imports the simulator: the rule must name it.
    typetree.layout(ROOT, tmp_path)
    gw = tmp_path / "countersign" / "gateway"
    real = gw.resolve()
    gw.unlink()
    gw.mkdir()
    for f in real.iterdir():
        if f.suffix == ".py":
            (gw / f.name).symlink_to(f)
    (gw / "zz_probe.py").write_text("from countersign.sim import chain\n")
    r = _lint_imports(tmp_path)
    assert r.returncode != 0
    assert "countersign.gateway.zz_probe -> countersign.sim.chain" in r.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    had_build = (ROOT / "build").exists()
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"),
                        str(ROOT)], check=True, timeout=600)
    finally:
        if not had_build:       # setuptools builds in the checkout's build/: leave the tree as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    (whl,) = (work / "dist").glob("countersign-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(whl)], check=True, timeout=600)
    # The dependencies come from the test's own environment (a .pth line adds its site-packages; the
    # editable install of this checkout is not seen: .pth files of an added folder are not run), so the
    # countersign that runs is the wheel's alone.
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    (site / "zz_deps.pth").write_text(f"{deps}\n")
    probe = subprocess.run([str(py), "-c", "import countersign, sys; print(countersign.__file__)"],
                           capture_output=True, text=True, check=True, cwd=work)
    assert str(ROOT) not in probe.stdout, probe.stdout
    return env_dir


def _run(env_dir: Path, args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}:{BIN}:{os.environ.get('PATH', '')}",
           "XDG_CACHE_HOME": str(cwd / "cache"), "HOME": str(cwd)}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(env_dir / "bin" / "countersign"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_wheel_carries_the_firmware(wheel_venv: Path, tmp_path: Path) -> None:
    site = next((wheel_venv / "lib").glob("python3*/site-packages")) / "countersign"
    for rel in ("firmware/main.py", "firmware/cs/app.py", "firmware/cs/mqtt/__init__.py",
                "firmware/boards/esp32c3.py", "firmware/drivers/ssd1306.py", "firmware/budget.json",
                "hardware/esp32c3-devkitm-1/pins.json", "sim/port/esp32boot.py", "protocol/countersign.cddl"):
        assert (site / rel).is_file(), rel
    r = _run(wheel_venv, ["device", "flash", "--port", "/dev/ttyUSB0", "--board", "esp32c3", "--dry-run"],
             tmp_path, 300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[dry-run]" in r.stdout
    built = list((tmp_path / "cache" / "countersign" / "firmware-bundle").glob("esp32c3-*/manifest.json"))
    assert built, "the bundle goes to the user's cache, not into site-packages"
    files = json.loads(built[0].read_text())["files"]
    assert any(p.startswith("cs/") and p.endswith(".mpy") for p in files)


def test_wheel_runs_a_simulated_hall(wheel_venv: Path, tmp_path: Path) -> None:
    report = tmp_path / "hall.json"
    r = _run(wheel_venv, ["sim", "hall", "--devices", "1", "--duration", "12", "--faults", "0", "--seed", "3",
                          "--workdir", str(tmp_path / "w"), "--report-json", str(report)], tmp_path, 600)
    assert r.returncode == 0, textwrap.shorten(r.stdout + r.stderr, 4000)
    rep = json.loads(report.read_text())
    assert rep["settled"], rep
    assert (rep["lost"], rep["duplicated"], rep["invented"], rep["altered"]) == (0, 0, 0, 0), rep
    assert rep["hops"]["received_province"] > 0, rep["hops"]


def test_readme_data_path_table_names_real_code() -> None:
    """Every file and function in the README's data-path table exists (a rename must update the README)."""
    import ast
    import re

    text = (ROOT / "README.md").read_text()
    section = text.split("## The data path, hop by hop", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| [^|]+ \| `([^`]+)` \| `([^`]+)` \|$", section, re.M)
    assert len(rows) >= 15, rows
    for path, name in rows:
        tree = ast.parse((ROOT / path).read_text(), path)
        scope: list[ast.stmt] = tree.body
        for part in name.split("."):
            found = [n for n in scope if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                     and n.name == part]
            assert found, f"README data path: {path} has no {name}"
            node = found[0]
            scope = node.body if isinstance(node, ast.ClassDef) else []


def _readme_commands() -> list[list[str]]:
    """The subcommand words of every ``countersign ...`` line in the README's code blocks (up to the first
    option, placeholder or path)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = text.split("```")[1::2]
    out: list[list[str]] = []
    for block in blocks:
        for line in block.splitlines():
            words = line.strip().split()
            if not words or words[0] != "countersign":
                continue
            sub = []
            for w in words[1:]:
                word = w.isascii() and w.replace("-", "").isalpha() and w.islower()
                if not word or w.startswith("-"):
                    break
                sub.append(w)
            if sub and sub not in out:
                out.append(sub)
    return out


def test_every_command_the_readme_shows_exists() -> None:
    """A command renamed or removed must take the README with it: each one shown answers ``--help``."""
    from countersign.cli import build_parser

    commands = _readme_commands()
    assert ["province", "run"] in commands and ["province", "broker-config"] in commands
    for sub in commands:
        argv = [*sub, "--help"]
        with pytest.raises(SystemExit) as done:
            build_parser(argv).parse_args(argv)
        assert done.value.code == 0, f"README: `countersign {' '.join(sub)}` is not a command"
