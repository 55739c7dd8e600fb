"""Execute the workbook's notebooks headless and print a summary table.

    python scripts/run_notebooks.py                      # every notebook -> build/*.ipynb + build/*.html
    python scripts/run_notebooks.py notebooks/05*.ipynb  # some of them
    python scripts/run_notebooks.py -p MODEL Qwen/Qwen2.5-0.5B -p MAX_STEPS 200   # papermill parameters
    python scripts/run_notebooks.py --inplace            # refresh the committed outputs (make notebooks)
    python scripts/run_notebooks.py --profile standin --model /path/to/standin   # the real-model path on CPU
    python scripts/run_notebooks.py --profile gpu --model Qwen/Qwen2.5-0.5B       # make test-gpu

``--profile`` merges each notebook's parameters from ``configs/notebook_profiles.json`` (``standin`` or ``gpu``)
under the ``-p`` ones; ``--model`` sets ``MODEL``. Only the parameters a notebook declares are passed to it. On a
CUDA machine the runner samples the device's used memory (``nvidia-smi``) and reports each notebook's peak.

Each notebook may call ``course_utils.env.record_key_figure(name, value)``; the runner collects those
figures into the summary (``build/summary.md`` and ``build/summary.json``). Exit status 1 if any
notebook fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from course_utils import env

ROOT = Path(__file__).resolve().parent.parent

NOTEBOOK_BUDGET_S = 120
TOTAL_BUDGET_S = 300


def parse_value(text: str) -> object:
    """Parse a ``-p`` value as JSON when possible (numbers, booleans), else keep the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def declared_parameters(path: Path) -> set[str]:
    """The names a notebook's ``parameters`` cell declares (papermill's own parser)."""
    import nbformat
    from papermill.translators import PythonTranslator

    notebook = nbformat.read(path, as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    return {parameter.name for cell in cells for parameter in PythonTranslator.inspect(cell)}


def profile_parameters(profile: str, notebook: str) -> dict[str, object]:
    """``configs/notebook_profiles.json``: the profile's common parameters, then the notebook's own."""
    data = json.loads((ROOT / "configs" / "notebook_profiles.json").read_text(encoding="utf-8"))
    return {**data[f"{profile}_common"], **data["notebooks"][notebook][profile]}


class GpuMemorySampler:
    """Peak used memory of GPU 0 while a notebook runs, sampled with ``nvidia-smi`` every 0.2 s (None without one)."""

    def __init__(self) -> None:
        import shutil
        import threading

        self.available = shutil.which("nvidia-smi") is not None
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used_mib(self) -> float | None:
        import subprocess

        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
            return float(out.strip().splitlines()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self._used_mib()
            if used is not None:
                self.peak_mib = max(self.peak_mib or 0.0, used)
            self._stop.wait(0.2)

    def __enter__(self) -> GpuMemorySampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=10)


def ipc_kernel_manager() -> type:
    """A local kernel manager over IPC sockets (files in the temp folder) instead of TCP: the kernel then does not
    warn "Kernel is running over TCP without encryption" on every run, and nothing listens on a network port."""
    import tempfile

    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: object) -> None:
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(Path(tempfile.mkdtemp(prefix="workbook-kernel-")) / "kernel"))
            super().__init__(**kwargs)

    return IPCKernelManager


def execute(path: Path, out_dir: Path, inplace: bool, parameters: dict[str, object], timeout: int) -> dict:
    """Run one notebook; return its summary row."""
    import nbformat

    metrics_file = out_dir / "metrics" / f"{path.stem}.json"
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.unlink(missing_ok=True)
    os.environ["WORKBOOK_METRICS_FILE"] = str(metrics_file)
    target = path if inplace else out_dir / path.name
    started = time.perf_counter()
    status, error = "ok", ""
    with GpuMemorySampler() as sampler:
        try:
            if parameters:
                import papermill

                papermill.execute_notebook(
                    str(path),
                    str(target),
                    parameters=parameters,
                    cwd=str(path.parent),
                    kernel_name="python3",
                    progress_bar=False,
                    execution_timeout=timeout,
                    kernel_manager_class=ipc_kernel_manager(),
                )
            else:
                from nbclient import NotebookClient

                notebook = nbformat.read(path, as_version=4)
                client = NotebookClient(
                    notebook,
                    timeout=timeout,
                    kernel_name="python3",
                    kernel_manager_class=ipc_kernel_manager(),
                    resources={"metadata": {"path": str(path.parent)}},
                )
                try:
                    client.execute()
                finally:
                    nbformat.write(notebook, target)
        except Exception as exc:  # a failing cell: record it, keep going with the other notebooks
            status = "FAILED"
            error = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
    seconds = time.perf_counter() - started
    if target.exists():
        from nbconvert import HTMLExporter

        executed = nbformat.read(target, as_version=4)
        title = (
            next(
                (
                    line.lstrip("# ").strip()
                    for line in "".join(executed.cells[0].source).splitlines()
                    if line.startswith("# ")
                ),
                path.stem,
            )
            if executed.cells
            else path.stem
        )
        html, _ = HTMLExporter().from_notebook_node(executed, resources={"metadata": {"name": title}})
        (out_dir / f"{path.stem}.html").write_text(html, encoding="utf-8")
    figures = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.exists() else {}
    row = {"notebook": path.name, "seconds": round(seconds, 1), "status": status, "figures": figures, "error": error}
    if sampler.peak_mib is not None:
        row["gpu_peak_mib"] = round(sampler.peak_mib)
    return row


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the run."""
    gpu = any("gpu_peak_mib" in row for row in rows)
    lines = [
        "| notebook | seconds | status | " + ("GPU peak MiB | predicted MiB | " if gpu else "") + "key figures |",
        "| --- | ---: | --- | " + ("---: | ---: | " if gpu else "") + "--- |",
    ]
    for row in rows:
        figures = ", ".join(f"{k}={v}" for k, v in row["figures"].items() if k != "predicted_mib") or row["error"]
        budget = f" (over {NOTEBOOK_BUDGET_S} s budget)" if row["seconds"] > NOTEBOOK_BUDGET_S else ""
        memory = f"{row.get('gpu_peak_mib', '')} | {row['figures'].get('predicted_mib', '')} | " if gpu else ""
        lines.append(f"| {row['notebook']} | {row['seconds']:.1f}{budget} | {row['status']} | {memory}{figures} |")
    total = sum(row["seconds"] for row in rows)
    lines.append(
        f"| **total** | {total:.1f}{f' (over {TOTAL_BUDGET_S} s budget)' if total > TOTAL_BUDGET_S else ''} | "
        f"{sum(r['status'] == 'ok' for r in rows)}/{len(rows)} ok | |"
    )
    return "\n".join(lines)


#: The title cell's time sentence and the README row's time column (written by ``--record-times``).
TITLE_TIME_RE = re.compile(r"(\*\*CPU 耗时\*\*：2 核 CPU 约 )\d+( 秒 \(`make notebooks` 在开发机上实测 )\d+( 秒\))")


def approx_seconds(seconds: float) -> int:
    """The rounded figure a student reads: the nearest multiple of 5 seconds (at least 5)."""
    return max(5, 5 * round(seconds / 5))


def record_times(rows: list[dict]) -> None:
    """Write each notebook's measured time into its title cell and into the README's notebook table (one run, both
    places), so the two never disagree. Only for a complete, successful run of every notebook."""
    import nbformat

    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    for row in rows:
        path = ROOT / "notebooks" / row["notebook"]
        notebook = nbformat.read(path, as_version=4)
        title = notebook.cells[0]
        new, count = TITLE_TIME_RE.subn(
            rf"\g<1>{approx_seconds(row['seconds'])}\g<2>{round(row['seconds'])}\g<3>", title.source
        )
        if count != 1:
            raise SystemExit(f"{row['notebook']}: the title cell has no 'CPU 耗时' sentence to update")
        if new != title.source:
            title.source = new
            nbformat.write(notebook, path)
        pattern = re.compile(rf"^(\| `{re.escape(row['notebook'])}` \|[^|]*\| )\d+( s \|)", re.M)
        text, count = pattern.subn(rf"\g<1>{round(row['seconds'])}\g<2>", text)
        if count != 1:
            raise SystemExit(f"README.md: no row for {row['notebook']} in the notebook table")
    total = round(sum(row["seconds"] for row in rows))
    text, count = re.subn(r"title cell\): \d+ s in all", f"title cell): {total} s in all", text)
    if count != 1:
        raise SystemExit("README.md: no 'title cell): N s in all' sentence for the total")
    readme.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/[0-9]*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="output folder (default build/)")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks with fresh outputs")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument(
        "--profile", choices=("standin", "gpu"), help="per-notebook parameters from configs/notebook_profiles.json"
    )
    parser.add_argument("--model", help="MODEL for every notebook that declares it")
    parser.add_argument(
        "--record-times",
        action="store_true",
        help="with --inplace on every notebook: write the "
        "measured times into the title cells and the README table (make notebooks)",
    )
    args = parser.parse_args()
    if args.inplace and (args.parameter or args.profile or args.model):
        parser.error("--inplace keeps the default parameters (the committed outputs are the CPU default)")

    os.environ[env.HEADLESS_VAR] = "1"  # no progress bars in executed notebooks, HTML copies and logs
    given = {name: parse_value(value) for name, value in args.parameter}
    offline = env.as_bool(given.get("OFFLINE", True))
    env.setup_offline(offline=offline)
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend stores the plots in the notebooks
    # Figures go to <out>/figures; only `make notebooks` sets WORKBOOK_FIGURES_DIR to slides/figures.
    os.environ.setdefault("WORKBOOK_FIGURES_DIR", str((args.out / "figures").resolve()))
    notebooks = sorted(args.notebooks) or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print("no notebooks found")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in notebooks:
        wanted = dict(profile_parameters(args.profile, path.stem)) if args.profile else {}
        if args.model:
            wanted["MODEL"] = args.model
        wanted.update(given)
        declared = declared_parameters(path) if wanted else set()
        parameters = {name: value for name, value in wanted.items() if name in declared}
        print(f"running {path.name} ..." + (f" {parameters}" if parameters else ""), flush=True)
        row = execute(path.resolve(), args.out.resolve(), args.inplace, parameters, args.timeout)
        print(f"  {row['status']} in {row['seconds']:.1f} s {row['error']}", flush=True)
        rows.append(row)
    table = format_table(rows)
    print()
    print(table)
    (args.out / "summary.md").write_text(table + "\n", encoding="utf-8")
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    ok = all(row["status"] == "ok" for row in rows)
    if args.record_times and args.inplace and ok and not args.notebooks:
        record_times(rows)
        print("times written to the title cells and README.md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
