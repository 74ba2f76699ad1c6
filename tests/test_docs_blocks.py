"""Every code block of README.md and docs/**/*.md runs as written, unless it is marked not to.

The rules (also in docs/architecture.md, "Documentation that runs"):

- Collected: every fenced block (``` or ~~~, at any indentation) whose language is bash, sh,
  shell, console, python or py. Blocks in other languages (text, toml, none, ...) are output or
  file contents and never run.
- A block is skipped, with its reason, when the line immediately before its opening fence (no
  blank line between) is ``<!-- not-run: <reason> -->``. A ``not-run`` comment anywhere else,
  or without a reason, fails the page's ``markers`` test, so a marker cannot silently stop
  applying.
- One test per block, with ids like ``docs/nerf.md::block3`` (blocks numbered 1, 2, ... in the
  page among the collected ones). The blocks of one page run in order in one fresh temporary
  folder, so a block may use the files earlier blocks wrote; selecting one block alone (``-k``)
  first runs the blocks before it. A block after a failed one fails (or, when that failure was
  already reported by its own test, is skipped).
- bash/sh/shell blocks run with ``bash -euo pipefail``; console blocks run their ``$ `` lines
  (a trailing backslash continues a command) the same way, the other lines being output.
- The python blocks of a page share one interpreter and one ``__main__`` module (names carry over
  from block to block); its file holds the page's python at the page's line numbers, so
  tracebacks point into the page and spawned worker processes re-import it as they would a
  user's script.
- The folder of the running interpreter (the venv: ``spect``, ``python``) comes first on PATH;
  progress output is off; each block has ``BLOCK_TIMEOUT_S`` seconds.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("docs_blocks_worker.py")
BLOCK_TIMEOUT_S = 300.0  # catches a hang; blocks should take seconds (docs/architecture.md)
#: Fence language -> how the block runs.
RUNNERS = {
    "bash": "bash",
    "sh": "bash",
    "shell": "bash",
    "console": "console",
    "python": "python",
    "py": "python",
}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")
_MARKER = re.compile(r"^[ \t]*<!--[ \t]*not-run:[ \t]*(?P<reason>\S.*?)[ \t]*-->[ \t]*$")
_ANY_MARKER = re.compile(r"^\s*<!--\s*not-run")
#: Environment variables of a torchrun launch: a block must not think it is one rank of many.
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                       "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")  # fmt: skip


@dataclass(frozen=True)
class Block:
    """One collected code block of a page.

    ``index`` counts the collected blocks of the page from 1; ``line`` is the 1-based line of
    the opening fence and ``code`` the (dedented) lines after it, up to the closing fence.
    """

    page: str
    index: int
    line: int
    language: str
    code: str
    skip_reason: str | None

    @property
    def id(self) -> str:
        return f"{self.page}::block{self.index}"

    @property
    def runner(self) -> str:
        return RUNNERS[self.language]


@dataclass(frozen=True)
class Page:
    """The collected blocks of one markdown file and the problems of its not-run markers."""

    path: str
    n_lines: int
    blocks: tuple[Block, ...]
    problems: tuple[str, ...]


def _dedent(line: str, indent: int) -> str:
    """``line`` without the first ``indent`` characters if they are blanks (a fence's indent)."""
    head = line[:indent]
    return line[indent:] if not head.strip() else line.lstrip()


def parse_page(text: str, path: str) -> Page:
    """Collect the runnable blocks of markdown ``text`` (named ``path`` in ids and messages)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    used_markers: set[int] = set()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
        if end is None:
            problems.append(f"{path}:{i + 1}: code fence {fence} is never closed")
            end = len(lines)
        info = opening["info"].split()
        language = info[0].lower().lstrip("{.") if info else ""
        marker = _MARKER.match(lines[i - 1]) if i > 0 else None
        if marker is not None:
            used_markers.add(i - 1)
            if language not in RUNNERS:
                problems.append(
                    f"{path}:{i}: not-run marker before a {language or 'plain'} block, "
                    "which never runs"
                )
        if language in RUNNERS:
            body = [_dedent(line, indent) for line in lines[i + 1 : end]]
            blocks.append(
                Block(
                    page=path,
                    index=len(blocks) + 1,
                    line=i + 1,
                    language=language,
                    code="\n".join(body) + "\n",
                    skip_reason=marker["reason"] if marker else None,
                )
            )
        i = end + 1
    for number, line in enumerate(lines):
        if _ANY_MARKER.search(line) and number not in used_markers:
            problems.append(
                f"{path}:{number + 1}: not-run marker that applies to no block: {line.strip()!r}"
                " (write '<!-- not-run: <reason> -->' on the line just before the opening fence)"
            )
    return Page(path=path, n_lines=len(lines), blocks=tuple(blocks), problems=tuple(problems))


def console_commands(code: str) -> str:
    """The commands of a console transcript: its ``$ `` lines, with backslash continuations."""
    commands: list[str] = []
    continued = False
    for line in code.splitlines():
        if continued:
            commands.append(line)
        elif line.startswith("$ "):
            commands.append(line[2:])
        else:
            continue
        continued = line.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def doc_pages(root: Path = REPO) -> list[Page]:
    """README.md and every docs/**/*.md of ``root``, parsed, in a fixed order."""
    paths = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [
        parse_page(path.read_text(encoding="utf-8"), path.relative_to(root).as_posix())
        for path in paths
        if path.is_file()
    ]


PAGES = doc_pages()
BLOCKS = [block for page in PAGES for block in page.blocks]


# ----------------------------------------------------------------------------------------------
# Running the blocks of one page


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["SPECT_PROGRESS"] = "0"
    env["MPLBACKEND"] = "Agg"
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "100"
    return env


def _kill(process: subprocess.Popen) -> None:
    """Kill a process started in its own session, and everything it started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _tail(text: str, lines: int = 40) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept)


@dataclass
class Outcome:
    """How one block went: ``passed``, ``failed`` or ``skipped``, with a message."""

    status: str
    message: str
    cause: int | None = None  # the earlier failed block that kept this one from running
    reported: bool = False  # whether a test of its own has reported it


@dataclass
class PageRun:
    """Runs the blocks of one page in order in ``folder/work``; helper files in ``folder``."""

    page: Page
    folder: Path
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    _worker: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.work = self.folder / "work"
        self.work.mkdir(parents=True)
        self.script = self.folder / (re.sub(r"\W", "_", self.page.path) + ".py")
        self._script_lines = [""] * self.page.n_lines
        self.script.write_text("")
        self.env = _environment()

    def outcome(self, index: int) -> Outcome:
        """Run the page's blocks up to block ``index`` (those not run yet); its outcome."""
        for block in self.page.blocks[:index]:
            if block.index in self.outcomes:
                continue
            failed = [i for i, o in sorted(self.outcomes.items()) if o.status == "failed"]
            if failed:
                self.outcomes[block.index] = Outcome(
                    "failed",
                    f"not run: {self.page.path}::block{failed[0]} failed before it",
                    cause=failed[0],
                )
            elif block.skip_reason is not None:
                self.outcomes[block.index] = Outcome("skipped", f"not-run: {block.skip_reason}")
            else:
                message = self._run(block)
                status = "passed" if message is None else "failed"
                self.outcomes[block.index] = Outcome(status, message or "")
        return self.outcomes[index]

    def _run(self, block: Block) -> str | None:
        """Run one block; None if it succeeded, else the failure message."""
        where = f"{block.id} (line {block.line} of {block.page}, {block.language})"
        if block.runner == "python":
            return self._run_python(block, where)
        code = block.code if block.runner == "bash" else console_commands(block.code)
        script = self.folder / f"block{block.index}.sh"
        script.write_text(code)
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", str(script)],
            cwd=self.work,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill(process)
            output, _ = process.communicate()
            text = output.decode(errors="replace")
            return f"{where} took more than {BLOCK_TIMEOUT_S:g} s:\n{_tail(text)}"
        if process.returncode != 0:
            text = output.decode(errors="replace")
            return f"{where} exited with {process.returncode}:\n{_tail(text)}"
        return None

    def _run_python(self, block: Block, where: str) -> str | None:
        first = block.line + 1
        code_lines = block.code.splitlines()
        self._script_lines[first - 1 : first - 1 + len(code_lines)] = code_lines
        self.script.write_text("\n".join(self._script_lines) + "\n")
        if self._worker is None or self._worker.poll() is not None:
            self._worker = subprocess.Popen(
                [sys.executable, "-u", str(WORKER), str(self.script)],
                cwd=self.work,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
        worker = self._worker
        assert worker.stdin is not None and worker.stdout is not None
        log = self.folder / f"block{block.index}.log"
        request = {"code": block.code, "first_line": first, "log": str(log)}
        worker.stdin.write((json.dumps(request) + "\n").encode())
        worker.stdin.flush()
        ready, _, _ = select.select([worker.stdout], [], [], BLOCK_TIMEOUT_S)
        answer = worker.stdout.readline() if ready else b""
        text = log.read_text(errors="replace") if log.exists() else ""
        if not ready:
            _kill(worker)
            return f"{where} took more than {BLOCK_TIMEOUT_S:g} s:\n{_tail(text)}"
        if not answer:
            _kill(worker)
            return f"{where}: the python process died:\n{_tail(text)}"
        if not json.loads(answer)["ok"]:
            return f"{where} raised (line numbers are the page's):\n{_tail(text)}"
        return None

    def close(self, wait: bool = True) -> None:
        """End the python process (when its stdin closes, it exits); ``wait`` for it to end."""
        if self._worker is None or self._worker.poll() is not None:
            return
        assert self._worker.stdin is not None
        if not self._worker.stdin.closed:
            self._worker.stdin.close()
        if wait:
            try:
                self._worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill(self._worker)


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, PageRun]]:
    """One `PageRun` per page, created when its first block is asked for."""
    runs: dict[str, PageRun] = _LazyRuns(tmp_path_factory)
    yield runs
    for run in runs.values():
        run.close(wait=False)
    for run in runs.values():
        run.close()


class _LazyRuns(dict):
    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self._factory = factory

    def __missing__(self, path: str) -> PageRun:
        page = next(page for page in PAGES if page.path == path)
        folder = self._factory.mktemp(re.sub(r"\W", "-", path), numbered=True)
        self[path] = run = PageRun(page, folder)
        return run


# ----------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("page", PAGES, ids=[f"{page.path}::markers" for page in PAGES])
def test_markers(page: Page) -> None:
    """Every not-run marker stands just before a runnable block, and every fence is closed."""
    assert not page.problems, "\n".join(page.problems)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_block(block: Block, page_runs: dict[str, PageRun]) -> None:
    """The block runs as written (after the blocks before it on its page)."""
    run = page_runs[block.page]
    outcome = run.outcome(block.index)
    outcome.reported = True
    if outcome.status == "skipped":
        pytest.skip(outcome.message)
    if outcome.status == "failed":
        if outcome.cause is not None and run.outcomes[outcome.cause].reported:
            pytest.skip(outcome.message)  # its cause already failed in a test of its own
        pytest.fail(outcome.message, pytrace=False)


# ----------------------------------------------------------------------------------------------
# The collector itself, on small pages

_SAMPLE = """\
# Title

```bash
echo one > one.txt
```

<!-- not-run: needs a GPU -->
```python
import torch
```

<!-- not-run: a stray marker -->
Mentioning `<!-- not-run: <reason> -->` in a sentence is no marker.

```python
x = 1
```

```text
not collected
```

- a list item:

    ~~~console
    $ cat one.txt \\
        > two.txt
    one
    $ test -s two.txt
    ~~~
"""


def test_parse_page_finds_blocks_markers_and_problems() -> None:
    page = parse_page(_SAMPLE, "docs/sample.md")
    table = [(b.id, b.line, b.language, b.skip_reason) for b in page.blocks]
    assert table == [
        ("docs/sample.md::block1", 3, "bash", None),
        ("docs/sample.md::block2", 8, "python", "needs a GPU"),
        ("docs/sample.md::block3", 15, "python", None),  # the marker above has a blank line
        ("docs/sample.md::block4", 25, "console", None),
    ]
    assert page.blocks[0].code == "echo one > one.txt\n"
    assert page.blocks[3].code.startswith("$ cat one.txt \\\n    > two.txt\none\n")
    assert page.problems == (
        "docs/sample.md:12: not-run marker that applies to no block: "
        "'<!-- not-run: a stray marker -->' (write '<!-- not-run: <reason> -->' on the line "
        "just before the opening fence)",
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("```bash\necho\n", "docs/p.md:1: code fence ``` is never closed"),
        ("<!-- not-run: output -->\n```text\nx\n```\n", "before a text block, which never runs"),
        ("<!-- not-run -->\n```bash\necho\n```\n", "not-run marker that applies to no block"),
        ("<!-- not-run:   -->\n```bash\necho\n```\n", "not-run marker that applies to no block"),
    ],
)
def test_parse_page_problems(text: str, problem: str) -> None:
    problems = parse_page(text, "docs/p.md").problems
    assert len(problems) == 1 and problem in problems[0], problems


def test_console_commands() -> None:
    code = "$ spect a \\\n    --b 1\noutput \\\n$ spect c\n  $ not a command\n"
    assert console_commands(code) == "spect a \\\n    --b 1\nspect c\n"


def test_page_run_shares_folder_and_python_state(tmp_path: Path) -> None:
    text = (
        "```bash\necho 2 > n.txt\n```\n\n"
        "```python\nimport sys\nn = int(open('n.txt').read())\n```\n\n"
        "```python\nassert n == 2 and __name__ == '__main__' and sys.stdin.read() == ''\n"
        "raise ValueError('boom')\n```\n\n"
        "```bash\ntrue\n```\n"
    )
    run = PageRun(parse_page(text, "docs/p.md"), tmp_path / "p")
    try:
        assert run.outcome(2).status == "passed"
        third = run.outcome(3)
        assert third.status == "failed"
        assert 'docs_p_md.py", line 12' in third.message  # the raise, at its line in the page
        assert "ValueError: boom" in third.message
        assert run.outcome(4).message == "not run: docs/p.md::block3 failed before it"
        assert run.script.read_text().splitlines()[6] == "n = int(open('n.txt').read())"
    finally:
        run.close()


_SPAWN_PAGE = """\
```python
import concurrent.futures
import multiprocessing


def square(x):
    return x * x
```

```python
{guard}
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        print(list(pool.map(square, [3])))
```
"""


@pytest.mark.parametrize(
    ("guard", "status"), [("if True:", "failed"), ('if __name__ == "__main__":', "passed")]
)
def test_page_run_spawned_workers_reimport_the_page(
    tmp_path: Path, guard: str, status: str
) -> None:
    """A spawned worker imports the page's python as a user's script: without the guard it
    starts the pool again and dies, as it would for the user."""
    run = PageRun(parse_page(_SPAWN_PAGE.format(guard=guard), "docs/p.md"), tmp_path / "p")
    try:
        outcome = run.outcome(2)
    finally:
        run.close()
    assert outcome.status == status, outcome.message
    if status == "failed":
        assert "BrokenProcessPool" in outcome.message


def test_page_run_bash_is_strict(tmp_path: Path) -> None:
    text = "```bash\nfalse | true\necho reached\n```\n"
    run = PageRun(parse_page(text, "docs/p.md"), tmp_path / "p")
    outcome = run.outcome(1)
    assert outcome.status == "failed" and "exited with 1" in outcome.message
    assert "reached" not in outcome.message


@pytest.mark.parametrize("language", ["bash", "python"])
def test_page_run_timeout_kills_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, language: str
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "BLOCK_TIMEOUT_S", 0.5)
    code = {"bash": "echo started\nsleep 30", "python": "print('started')\nwhile True: pass"}
    text = f"```{language}\n{code[language]}\n```\n\n```{language}\n{code[language]}\n```\n"
    run = PageRun(parse_page(text, "docs/p.md"), tmp_path / "p")
    try:
        outcome = run.outcome(1)
        assert outcome.status == "failed", outcome.message
        assert "took more than 0.5 s" in outcome.message and "started" in outcome.message
        assert run.outcome(2).message == "not run: docs/p.md::block1 failed before it"
    finally:
        run.close()
