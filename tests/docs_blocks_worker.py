"""One interpreter for the python blocks of one documentation page (used by test_docs_blocks.py).

Run as ``python docs_blocks_worker.py PAGE_SCRIPT`` in the page's working folder. It reads one JSON
request per line on stdin, ``{"code": str, "first_line": int, "log": str}``, executes the code in
one ``__main__`` module shared by every block of the page (so later blocks see the names earlier
ones defined, as in a notebook), with its stdout and stderr (file descriptors 1 and 2, so
subprocesses too) written to ``log``, and answers one JSON line ``{"ok": bool}``.

The ``__main__`` module is the page's script: ``PAGE_SCRIPT`` holds every python block of the page
so far at its line in the page (the rest blank), so a traceback names the page's line numbers and
a ``spawn``-ed worker process (multiprocessing, ``concurrent.futures``) re-imports that file as
``__mp_main__``, exactly as it would re-import a user's script: a block that starts processes
without an ``if __name__ == "__main__":`` guard fails here as it fails for the user.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import types


def _execute(module: types.ModuleType, code: str, first_line: int) -> bool:
    """Execute one block in ``module``; print its traceback (page line numbers) on failure."""
    source = "\n" * (first_line - 1) + code
    try:
        exec(compile(source, module.__file__ or "<page>", "exec"), module.__dict__)
    except SystemExit as stop:
        return stop.code in (None, 0)
    except BaseException as error:  # the block's own error, reported in its log
        frames = error.__traceback__
        traceback.print_exception(type(error), error, frames.tb_next if frames else None)
        return False
    return True


def main() -> None:
    script = os.path.abspath(sys.argv[1])
    requests = os.fdopen(os.dup(0), "r")
    answers = os.fdopen(os.dup(1), "w")
    stdout, stderr = os.dup(1), os.dup(2)
    with open(os.devnull, "rb") as nothing:  # blocks (and their subprocesses) read no requests
        os.dup2(nothing.fileno(), 0)
    module = types.ModuleType("__main__")
    module.__file__ = script
    sys.modules["__main__"] = module
    sys.argv = [script]
    sys.path[0] = os.path.dirname(script)
    for line in requests:
        request = json.loads(line)
        with open(request["log"], "wb") as log:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                ok = _execute(module, request["code"], request["first_line"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(stdout, 1)
                os.dup2(stderr, 2)
        answers.write(json.dumps({"ok": ok}) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
