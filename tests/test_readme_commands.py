"""Every command README.md shows works as shown.

The commands are read from README.md's fenced shell blocks (```bash, ```sh, ```shell, and
`$ ` lines of any other block). Each block is a session: its commands run in order, in a
fresh temporary directory outside the checkout, and each must exit as the README says
(0 unless ``PLANS`` says otherwise).

A command that cannot run cheaply here is listed in ``PLANS``, the one allowlist, with the
reason and what is checked instead: "slow" runs it as written only with ``-m slow``;
"help" runs its subcommand's ``--help`` and requires every option the command uses to be
there; "not run" says why nothing can stand in for it. A README command missing from the
allowlist is run as written, so a new command is never silently skipped; an allowlist entry
that no README command matches fails, so the list stays true.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TIMEOUT = 600       # seconds for one command


@dataclasses.dataclass(frozen=True)
class Plan:
    how: str            # "run", "slow", "help" or "not run"
    reason: str = ""
    exit: int = 0       # the exit status the README claims


PLACEHOLDER = "help: {} is a placeholder for the user's own {}"
PLANS: dict[str, Plan] = {
    # The install and the suite itself.
    "python3 -m venv .venv && .venv/bin/pip install -e '.[all,test]' && .venv/bin/attnsuite check "
    "torch.fused tensorflow.fused jax.fused --report out/conformance":
        Plan("not run", "creates a virtualenv and installs every framework (minutes, network); "
                        ".ci/run runs exactly this install, and the same gate runs in the slow "
                        "entry below"),
    ".venv/bin/python -m pytest -n 2":
        Plan("not run", "the suite's own tests: this test is one of them (.ci/run runs it)"),
    # The gate.
    "attnsuite list": Plan("slow", "imports every framework (about 20 s here)"),
    "attnsuite list --wide": Plan("slow", "imports every framework (about 20 s here)"),
    "attnsuite check torch:mypkg.attention:make_attention --profile quick --junit-xml out/junit.xml":
        Plan("help", "mypkg is a placeholder for the user's package"),
    "attnsuite check torch.fused jax.fused --report out/conformance --xfails my-xfails.txt":
        Plan("help", "my-xfails.txt is a placeholder for the user's file"),
    "attnsuite check torch:mypkg.attention:make_attention --weights trained.npz":
        Plan("help", "mypkg and trained.npz are placeholders for the user's package and weights"),
    "pytest --attnsuite-impl torch:myattention.layer:make --attnsuite-profile quick "
    "--attnsuite-xfails my-xfails.txt --attnsuite-report out/conformance":
        Plan("help", "myattention and my-xfails.txt are placeholders for the user's package and file"),
    "for k in 1 2 3; do attnsuite check torch.fused jax.fused --shard $k/3 --report out/shard$k; done":
        Plan("slow", "three shards of two implementations, JAX compiling a program per case"),
    "attnsuite report out/shard1 out/shard2 out/shard3 --out out/conformance --junit-xml out/junit.xml":
        Plan("slow", "merges the shards the command before it writes"),
    "attnsuite check broken.jax.bottom_right_as_top_left --profile quick -q":
        Plan("slow", "JAX compiles a program per case (about 15 s)", exit=1),
    # Benchmarks: a sweep takes a minute or more, and the others read its results.
    "attnsuite bench torch.fused torch.sdpa --sweep quick --threads 1 --out out/bench":
        Plan("help", "a benchmark sweep takes a minute or more"),
    "attnsuite report out/bench other-machine/bench --out out/merged":
        Plan("help", "reads the results of benchmark runs on two machines"),
    "attnsuite report out/bench --drop-run RUN_ID --out out/report":
        Plan("help", "RUN_ID is a placeholder for a run of the user's results"),
    "attnsuite bench compare BASE_DIR out/bench --threshold 0.1":
        Plan("help", "BASE_DIR is a placeholder for the user's baseline results"),
    "attnsuite bench compare --interleaved torch.sdpa torch.fused --threads 1":
        Plan("help", "times two implementations in turns for a minute or more"),
    # Checking a port: a tiny Llama written by the checkout's example, then three ports of it.
    "python examples/tiny_llama.py out/port":
        Plan("slow", "builds and saves a small HF Llama (about 10 s)"),
    "attnsuite port out/port/tiny-llama --layer 0 --source transformers.LlamaAttention.eager "
    "--target jax.fused --target tensorflow.fused":
        Plan("slow", "judges three implementations on the checkpoint (about 20 s)"),
    "attnsuite port out/port/tiny-llama-meta/consolidated.00.pth --layer 0 --source numpy.oracle "
    "--target jax.fused --target tensorflow.fused --target-style half":
        Plan("slow", "judges three implementations on the checkpoint (about 20 s)"),
    "attnsuite port out/port/tiny-llama-meta/consolidated.00.pth --layer 0 --source numpy.oracle "
    "--target jax.fused --target tensorflow.fused --ported out/port/tiny-llama-unpermuted -q":
        Plan("slow", "judges three implementations on the checkpoint (about 20 s)", exit=1),
    "python -m attnsuite.bench.ours_vs_native --sweep default --threads 1":
        Plan("help", "times three pairs over the default sweep in turns (an hour or more), and "
                     "writes the checkout's reports/bench"),
    "pytest bench/ --benchmark-json out/pytest-benchmark.json --benchmark-save-data":
        Plan("not run", "the checkout's own benchmark tests (bench/ is in the checkout, not "
                        "installed as a test folder)"),
    "attnsuite bench compare out/pytest-base.json out/pytest-benchmark.json":
        Plan("help", "reads two pytest-benchmark files of the user's"),
}
# Files one README block writes and later blocks read: a session that reads them runs the
# writing command first (each session has a fresh directory).
SESSION_SETUP = {"out/port/": "python examples/tiny_llama.py out/port"}
SLOW_ALSO = {   # "not run" lines whose runnable part is still run, slowly
    "attnsuite check torch.fused tensorflow.fused jax.fused --report out/conformance": Plan("slow"),
}
SHELL_BLOCKS = ("bash", "sh", "shell", "console")


def readme_blocks(text: str) -> list[list[str]]:
    """The commands of each fenced shell block: comments cut, continuation lines joined."""
    blocks, current, language = [], None, None
    for line in text.splitlines():
        fence = re.match(r"^\s*(`{3,})\s*(\w*)", line)
        if fence and current is None:
            current, language = [], fence.group(2)
            continue
        if fence:
            blocks.append(current)
            current = None
            continue
        if current is None:
            continue
        if language in SHELL_BLOCKS:
            command = line
        elif line.startswith("$ "):
            command = line[2:]
        else:
            continue
        if current and current[-1].endswith("\\"):
            current[-1] = current[-1][:-1].rstrip() + " " + command.strip()
            continue
        command = _without_comment(command).strip()
        if command:
            current.append(command)
    return [b for b in blocks if b]


def _without_comment(line: str) -> str:
    """The line up to a ``#`` that starts a shell comment (after a blank, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


BLOCKS = readme_blocks(README.read_text())
COMMANDS = [command for block in BLOCKS for command in block]


# A command in shell syntax (a loop, a pipe) runs in bash, with attnsuite and pytest
# standing for this interpreter's, as a plain word does below.
SHELL_SYNTAX = re.compile(r"[;|&$]|^(for|if|while) ")
SHELL_PRELUDE = 'attnsuite() { "$PYTHON" -m attnsuite "$@"; }; pytest() { "$PYTHON" -m pytest "$@"; }; '


def _argv(command: str) -> list[str]:
    if SHELL_SYNTAX.search(command):
        return ["bash", "-c", SHELL_PRELUDE + command]
    words = shlex.split(command)
    if words[0] == "attnsuite":
        return [sys.executable, "-m", "attnsuite", *words[1:]]
    if words[0] == "pytest":
        return [sys.executable, "-m", "pytest", *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    return words


def _env() -> dict[str, str]:
    # The checkout on the path, as an installed attnsuite would be: nothing of the
    # temporary directory's shadows it.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHON": sys.executable}


def _run(command: str, cwd: Path, argv: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv or _argv(command), cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)


def _plan(command: str) -> Plan:
    return PLANS.get(command, Plan("run"))


def _subcommand(words: list[str]) -> list[str]:
    """The command's words up to its first argument: ``attnsuite bench compare``."""
    if words[0] == "pytest":
        return words[:1]
    if words[:2] == ["python", "-m"]:
        return words[:3]
    if words[:3] == ["attnsuite", "bench", "compare"]:
        return words[:3]
    return words[:2]


def test_the_readme_shows_commands_and_every_allowlist_entry_is_one_of_them():
    assert len(COMMANDS) >= 10 and "attnsuite check torch.fused" in COMMANDS
    stale = [command for command in [*PLANS, *SLOW_ALSO]
             if not any(command == c or command in c for c in COMMANDS)]
    assert not stale, f"allowlist entries no README command matches any more: {stale}"
    for command, plan in PLANS.items():
        assert plan.how in ("slow", "help", "not run") and plan.reason, command


def _sessions(how: str):
    """(block number, commands) for the blocks holding a command planned ``how``."""
    for number, block in enumerate(BLOCKS):
        if any(_plan(c).how == how for c in block) or (
                how == "slow" and any(s in c for c in block for s in SLOW_ALSO)):
            yield pytest.param(number, block, id=f"block{number}")


@pytest.mark.parametrize("number, block", list(_sessions("run")))
def test_cheap_commands_run_as_shown(number, block, tmp_path):
    for command in block:
        if _plan(command).how == "run":
            done = _run(command, tmp_path)
            assert done.returncode == _plan(command).exit, (command, done.stdout[-3000:], done.stderr[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("number, block", list(_sessions("slow")))
def test_slow_commands_run_as_shown(number, block, tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")   # what a checkout's commands use
    for reads, setup in SESSION_SETUP.items():
        if setup not in block and any(reads in command for command in block):
            done = _run(setup, tmp_path)
            assert done.returncode == 0, (setup, done.stdout[-3000:], done.stderr[-3000:])
    for command in block:
        runnable = [(c, p) for c, p in SLOW_ALSO.items() if c in command] or [(command, _plan(command))]
        for line, plan in runnable:
            if plan.how in ("run", "slow"):
                done = _run(line, tmp_path)
                assert done.returncode == plan.exit, (line, done.stdout[-3000:], done.stderr[-3000:])


@functools.lru_cache(maxsize=None)
def _help(subcommand: tuple[str, ...]) -> subprocess.CompletedProcess:
    """``SUBCOMMAND --help``, run once per subcommand, in a fresh temporary directory."""
    with tempfile.TemporaryDirectory() as folder:
        return _run(shlex.join(subcommand), Path(folder), _argv(shlex.join([*subcommand, "--help"])))


@pytest.mark.parametrize("command", [c for c in COMMANDS if _plan(c).how == "help"])
def test_commands_too_costly_to_run_have_every_option_in_their_help(command):
    words = shlex.split(command)
    done = _help(tuple(_subcommand(words)))
    assert done.returncode == 0, (command, done.stderr[-3000:])
    options = {w.split("=")[0] for w in words if w.startswith("--")}
    missing = [o for o in options if o not in done.stdout]
    assert not missing, f"{command}: {missing} not in `{shlex.join(_subcommand(words))} --help`"
