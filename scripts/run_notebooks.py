"""Execute the workbook's notebooks headless and print a summary table.

    python scripts/run_notebooks.py                      # every notebook -> build/*.ipynb + build/*.html
    python scripts/run_notebooks.py notebooks/05*.ipynb  # some of them
    python scripts/run_notebooks.py -p MODEL Qwen/Qwen2.5-0.5B -p MAX_STEPS 200   # papermill parameters
    python scripts/run_notebooks.py --inplace            # refresh the committed outputs (make notebooks)

Each notebook may call ``course_utils.env.record_key_figure(name, value)``; the runner collects those
figures into the summary (``build/summary.md`` and ``build/summary.json``). Exit status 1 if any
notebook fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_utils import env  # noqa: E402

NOTEBOOK_BUDGET_S = 120
TOTAL_BUDGET_S = 600


def parse_value(text: str) -> object:
    """Parse a ``-p`` value as JSON when possible (numbers, booleans), else keep the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
    try:
        if parameters:
            import papermill

            papermill.execute_notebook(
                str(path), str(target), parameters=parameters, cwd=str(path.parent), kernel_name="python3",
                progress_bar=False, execution_timeout=timeout,
            )
        else:
            from nbclient import NotebookClient

            notebook = nbformat.read(path, as_version=4)
            client = NotebookClient(
                notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
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

        html, _ = HTMLExporter().from_notebook_node(nbformat.read(target, as_version=4))
        (out_dir / f"{path.stem}.html").write_text(html, encoding="utf-8")
    figures = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.exists() else {}
    return {"notebook": path.name, "seconds": round(seconds, 1), "status": status, "figures": figures, "error": error}


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the run."""
    lines = ["| notebook | seconds | status | key figures |", "| --- | ---: | --- | --- |"]
    for row in rows:
        figures = ", ".join(f"{k}={v}" for k, v in row["figures"].items()) or row["error"]
        budget = " (over 120 s budget)" if row["seconds"] > NOTEBOOK_BUDGET_S else ""
        lines.append(f"| {row['notebook']} | {row['seconds']:.1f}{budget} | {row['status']} | {figures} |")
    total = sum(row["seconds"] for row in rows)
    lines.append(f"| **total** | {total:.1f}{' (over 600 s budget)' if total > TOTAL_BUDGET_S else ''} | "
                 f"{sum(r['status'] == 'ok' for r in rows)}/{len(rows)} ok | |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/[0-9]*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="output folder (default build/)")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks with fresh outputs")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    if args.inplace and args.parameter:
        parser.error("--inplace keeps the default parameters (the committed outputs are the CPU default)")

    env.setup_offline()
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend stores the plots in the notebooks
    notebooks = sorted(args.notebooks) or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print("no notebooks found")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    parameters = {name: parse_value(value) for name, value in args.parameter}
    rows = []
    for path in notebooks:
        print(f"running {path.name} ...", flush=True)
        row = execute(path.resolve(), args.out.resolve(), args.inplace, parameters, args.timeout)
        print(f"  {row['status']} in {row['seconds']:.1f} s {row['error']}", flush=True)
        rows.append(row)
    table = format_table(rows)
    print()
    print(table)
    (args.out / "summary.md").write_text(table + "\n", encoding="utf-8")
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
