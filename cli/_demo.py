"""``spect demo``: run `recon.demo.run_demo` with a progress display and print its headline."""

from __future__ import annotations

from pathlib import Path

__all__ = ["run"]


def run(
    output: Path,
    *,
    device: str = "auto",
    quality: str | None = None,
    force: bool = False,
    size: int | None = None,
    steps: int | None = None,
) -> None:
    """Run the demo into ``output`` and print where the report is and the headline numbers.

    ``quality`` ``None``: ``full`` on CUDA, ``fast`` otherwise. Progress (a spinner with the
    current stage) goes to stderr when it is a terminal (`cli.progress`).
    """
    from rich.console import Console

    from cli.commands import resolve_device
    from cli.commands.evaluate import headline_table, organ_table
    from cli.progress import progress_enabled, stderr_console
    from recon.demo import run_demo

    dev = resolve_device(device).type
    chosen = quality if quality is not None else ("full" if dev == "cuda" else "fast")
    console = Console()
    err = stderr_console()
    if chosen == "full" and dev == "cpu":
        err.print(
            "warning: --quality full is meant for a GPU; on a CPU it takes hours", markup=False
        )
    if progress_enabled():
        with err.status("Starting the demo...", spinner="dots") as spinner:
            summary = run_demo(
                output, chosen, dev, size=size, steps=steps, overwrite=force,
                progress=lambda message: spinner.update(message),
            )  # fmt: skip
    else:
        summary = run_demo(output, chosen, dev, size=size, steps=steps, overwrite=force)

    s = summary.settings
    title = f"spect demo: {s.quality}, {s.size}³ voxels, {dev}, {s.total_counts:.3g} counts"
    console.print(headline_table(summary.headline, title))
    columns = [str(row["method"]) for row in summary.headline]
    console.print(organ_table(summary.organs, columns, "Organ activity errors"))
    minutes, seconds = divmod(summary.runtime_s, 60.0)
    console.print(f"finished in {int(minutes)} min {seconds:.0f} s", highlight=False)
    console.print(
        f"report: {summary.report} (open {summary.report.as_uri()} in a browser)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
