"""Break the code a notebook teaches and check that the notebook fails (its checkpoint cells can fail).

Each mutation edits one line of ``course_utils`` or of the lesson code written in a notebook's cell, runs the notebook headless with the
project's runner into a scratch folder, expects a FAILED status, and restores the file. Usage::

    python scripts/mutation_check.py            # every mutation (~6 minutes on 2 CPU cores)
    python scripts/mutation_check.py loss-no-shift dedup-noop

A mutation whose notebook still passes is printed as SURVIVED and the script exits 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> (file relative to the project, exact text, replacement, notebook that must fail)
MUTATIONS: dict[str, tuple[str, str, str, str]] = {
    "params-no-bias": (
        "course_utils/models.py",
        "attention += q_out + 2 * kv  # q, k, v biases",
        "attention += 0  # mutated",
        "00_environment",
    ),
    "reader-keeps-bom": ("course_utils/data.py", "raw = raw[3:]", "raw = raw", "01_data_preparation"),
    "dedup-noop": (
        "course_utils/cleaning.py",
        "        if digest not in seen:",
        "        if True:",
        "01_data_preparation",
    ),
    "no-control-token-check": (
        "course_utils/data.py",
        "    match = CONTROL_TOKEN_RE.search(text)",
        "    match = None",
        "01_data_preparation",
    ),
    "template-check-always-true": (
        "course_utils/tokenizer.py",
        "    return list(train_ids[: len(prompt_ids)]) == prompt_ids",
        "    return True",
        "02_tokenizer",
    ),
    "collate-labels-pad-id": (
        "course_utils/collate.py",
        "padded_labels = pad_sequence(labels, batch_first=True, padding_value=label_pad_id,",
        "padded_labels = pad_sequence(labels, batch_first=True, padding_value=0,",
        "03_collate_and_batching",
    ),
    "length-grouping-unsorted": (
        "course_utils/collate.py",
        "group = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)",
        "group = order[start : start + mega]",
        "03_collate_and_batching",
    ),
    "loss-no-shift": (
        "course_utils/loss.py",
        "    return logits[:, :-1, :], labels[:, 1:]",
        "    return logits[:, 1:, :], labels[:, 1:]",
        "04_loss_and_label_shift",
    ),
    "ignore-pad-id-by-position": (
        "notebooks/04_loss_and_label_shift.ipynb",  # the mistake written in the cell
        'ignore_index=pad_id)\\n"',
        'ignore_index=-100)\\n"',
        "04_loss_and_label_shift",
    ),
    "slides-labels-not-shifted": (
        "notebooks/04_loss_and_label_shift.ipynb",
        "    labels[:-1] = labels[1:]    # shift left by one\\n",
        "\\n",
        "04_loss_and_label_shift",
    ),
    "accumulation-per-micro-batch": (
        "notebooks/05_pretraining.ipynb",  # the cell's train_step (= course_utils.train)
        "num_items_in_batch=n_items)  # summed",
        "num_items_in_batch=None)  # summed",
        "05_pretraining",
    ),
    "sft-trains-user": (
        "notebooks/06_sft_masking.ipynb",  # the cell's encode_chat (= course_utils.sft)
        'trained = body if message[\\"role\\"] == \\"assistant\\" else',
        "trained = body if True else",
        "06_sft_masking",
    ),
    "lora-no-scaling": (
        "notebooks/07_lora.ipynb",  # the cell's LoRALinear (= course_utils.lora)
        "self.scaling = r, alpha, alpha / r\\n",
        "self.scaling = r, alpha, 1.0\\n",
        "07_lora",
    ),
    "zero2-keeps-grads": (
        "course_utils/memory.py",
        "grads = num_params * grad_bytes // (n if stage >= 2 else 1)",
        "grads = num_params * grad_bytes",
        "08_deepspeed_memory",
    ),
    "reward-first-token": (
        "course_utils/preference.py",
        "    last = (positions * non_pad).argmax(-1)",
        "    last = torch.zeros_like(non_pad[:, 0])",
        "09_reward_modeling",
    ),
    "dpo-sign": (
        "course_utils/preference.py",
        "    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()",
        "    loss = -F.logsigmoid(beta * (rejected_logratios - chosen_logratios)).mean()",
        "10_preference_alignment",
    ),
    "sweep-margin-times-beta": (
        "course_utils/preference.py",
        '"logratio_margin": metrics["reward_margin"] / beta,',
        '"logratio_margin": metrics["reward_margin"],',
        "10_preference_alignment",
    ),
    "grpo-four-generations": (
        "course_utils/preference.py",
        "        num_generations=8,\n",
        "        num_generations=4,\n",
        "10_preference_alignment",
    ),
    "merge-is-noop": (
        "course_utils/evaluation.py",
        "    merged = copy.deepcopy(peft_model).eval().merge_and_unload()",
        "    merged = copy.deepcopy(peft_model).eval().unload()",
        "11_evaluate_and_export",
    ),
    "exercise-checker-accepts-all": (
        "course_utils/exercises.py",
        "    return _verdict(problems)\n\n\n# --- 02",
        "    return True\n\n\n# --- 02",
        "01_data_preparation",
    ),
}


def run(notebook: str) -> str:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "run_notebooks.py"),
                "--out",
                out,
                str(ROOT / "notebooks" / f"{notebook}.ipynb"),
            ],
            capture_output=True,
            text=True,
        )
        summary = [line for line in proc.stdout.splitlines() if line.startswith(f"| {notebook}")]
        return summary[0] if summary else proc.stdout[-500:] + proc.stderr[-500:]


def main(names: list[str]) -> int:
    survived = []
    for name in names or list(MUTATIONS):
        rel, old, new, notebook = MUTATIONS[name]
        path = ROOT / rel
        original = path.read_text(encoding="utf-8")
        if original.count(old) != 1:
            print(f"{name}: the text to mutate occurs {original.count(old)} times in {rel}")
            return 2
        path.write_text(original.replace(old, new), encoding="utf-8")
        try:
            status = run(notebook)
        finally:
            path.write_text(original, encoding="utf-8")
        failed = "FAILED" in status
        print(
            f"{'killed  ' if failed else 'SURVIVED'} {name:<30} {notebook}: {status.split('|')[3].strip() if failed else ''}"
            f"{' ' + ' '.join(status.split('|')[4].split()[:12]) if failed else ''}",
            flush=True,
        )
        if not failed:
            survived.append(name)
    print(json.dumps({"mutations": len(names or MUTATIONS), "survived": survived}))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
