"""The README's getting-started path and "Write your own agent", run verbatim against real processes.

The shell blocks to run are marked in README.md with ``<!-- readme-test: NAME -->`` on the line before
the fence; this test reads them from there (so the README and the test cannot drift) and runs them in
one bash, in the README's order: ``setup`` in the checkout, the rest in a fresh temporary directory.
Between the blocks it adds only what a person at a terminal does by eye: after ``up`` (started in the
background by the README itself) it waits until ``up`` says the mesh is up, and at the end it waits
for ``up`` to stop (the README's ``kill %1``). ``make`` lines of ``setup`` are not run: this test runs
from the installed ``.venv`` already, and ``make install`` there would reinstall it for everyone.

The output the README shows in a comment after the curl (``# {...}``) must be the output curl printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from agentmesh.cli.init import port_free
from agentmesh.configfile import load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ORDER = ("setup", "init", "up", "call")  # the marked blocks, in the order a reader meets them
PORTS = (7300, 7301, 7302)  # what `agentmesh init` picks by default, as the README's curl says
CI = os.environ.get("CI") == "true"

_MARKED = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.S)

WAIT_UP = """
for _ in $(seq 600); do                                  # the reader waits for `mesh up` (60 s at most)
  grep -q '^mesh up' "$READMETEST_OUT" && break
  jobs %1 >/dev/null 2>&1 || { echo "readme-test: agentmesh up exited"; exit 1; }
  sleep 0.1
done
grep -q '^mesh up' "$READMETEST_OUT" || { echo "readme-test: the mesh was not up within 60 s"; exit 1; }
"""


def marked_blocks(text: str) -> dict[str, str]:
    """``{name: code}`` of the README's marked shell blocks."""
    blocks: dict[str, str] = {}
    for name, lang, code in _MARKED.findall(text):
        assert lang == "sh", f"readme-test block {name!r} is ```{lang}, expected ```sh"
        assert name not in blocks, f"readme-test block {name!r} is marked twice"
        blocks[name] = code
    return blocks


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        if CI:
            pytest.fail(f"{binary} is needed to run the README's commands (CI=true: not skipped)")
        pytest.skip(f"{binary} not installed: the README's commands need it")


def test_readme_marks_the_blocks_in_order() -> None:
    text = README.read_text()
    blocks = marked_blocks(text)
    assert list(blocks) == list(ORDER), f"README.md marks {list(blocks)}, this test runs {list(ORDER)}"
    assert "agentmesh init" in blocks["init"] and "agentmesh up" in blocks["up"] and "curl" in blocks["call"]


def test_readme_mesh_file_fragment_is_a_whole_config(tmp_path: Path) -> None:
    """The mesh.yaml the README shows under "Write your own agent" loads as it is."""
    section = README.read_text().split("## Write your own agent", 1)[1].split("\n## ", 1)[0]
    yaml_blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert yaml_blocks, "no mesh file in 'Write your own agent'"
    (tmp_path / "mesh.yaml").write_text(yaml_blocks[0])
    config = load_config(tmp_path / "mesh.yaml")
    assert "echo" in config.agents and config.bridge.listen == "127.0.0.1:7302"


def test_readme_runs_verbatim(tmp_path: Path) -> None:
    _need("bash")
    _need("curl")
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        if CI:
            pytest.fail("no .venv in the checkout: the README's setup activates it")
        pytest.skip("no .venv in the checkout (make install makes it): the README's setup activates it")
    taken = [p for p in PORTS if not port_free(p)]
    if taken:  # init would pick free ports then, and the README's curl names 7302
        if CI:
            pytest.fail(f"ports {taken} are taken: the README's mesh uses {PORTS}")
        pytest.skip(f"ports {taken} are taken here (something else listens): the README's mesh uses {PORTS}")

    blocks = marked_blocks(README.read_text())
    setup = "\n".join(line for line in blocks["setup"].splitlines() if not line.lstrip().startswith("make "))
    work = tmp_path / "work"
    work.mkdir()
    script = "\n".join([
        "set -u",
        f"cd {ROOT}", setup,
        f"cd {work}", blocks["init"],
        blocks["up"], WAIT_UP,
        blocks["call"],
        "wait",  # until up has stopped the mesh
    ])
    out = tmp_path / "out.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(ROOT / ".venv")))  # only the README's activate adds it
    env["READMETEST_OUT"] = str(out)
    with out.open("w") as sink:
        proc = subprocess.Popen(["bash", "-c", script], stdout=sink, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the README's commands did not finish within 120 s:\n{out.read_text()}")
    text = out.read_text()
    assert code == 0, f"exit status {code}:\n{text}"
    expected = re.search(r"^# (\{.*\})$", blocks["call"], re.M)
    assert expected, "the README shows no output after its curl"
    at = text.find('{"status"')  # curl ends no line: up's next words may follow on the same one
    assert at >= 0, f"curl printed no answer:\n{text}"
    assert json.JSONDecoder().raw_decode(text, at)[0] == json.loads(expected.group(1)), text
    assert "bridge at https://localhost:7302" in text, text
    assert "mesh stopped" in text, text


# `agentmesh init` beyond the README's default run (these belong in tests/cli/test_init.py once it exists)
def test_init_refuses_a_non_empty_directory_in_one_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from agentmesh.cli.main import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["init", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"agentmesh: error: {tmp_path}: not empty (init writes a new mesh into a "
                                       "new or empty directory)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_init_scaffolds_agents_whose_config_and_policy_hold(tmp_path: Path) -> None:
    from agentmesh.cli.init import scaffold
    from agentmesh.pki import CertificateAuthority

    mesh = scaffold(tmp_path / "m", "acme.test", ["echo", "note-taker"], base_port=0)  # 0: free ports
    assert not mesh.moved and len(set(mesh.ports)) == 4 and 0 not in mesh.ports
    config = load_config(tmp_path / "m" / "mesh.yaml")
    assert config.trust_domain == "acme.test" and list(config.agents) == ["echo", "note-taker"]
    assert config.agents["note-taker"].app == "myagents.note_taker:NoteTaker"
    assert config.bridge.listen == f"127.0.0.1:{mesh.ports[-1]}" and mesh.url == f"https://localhost:{mesh.ports[-1]}"
    assert (tmp_path / "m" / "myagents" / "note_taker.py").read_text().count("class NoteTaker(") == 1
    names = {e.name: e for e in CertificateAuthority.load(tmp_path / "m" / ".mesh" / "ca").entries()}
    assert set(names) == {"control", "bridge", "echo", "note-taker"} and "localhost" in names["bridge"].dns
    for name in names:
        assert (tmp_path / "m" / ".mesh" / "identities" / name / "key.pem").stat().st_mode & 0o077 == 0
