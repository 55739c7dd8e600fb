"""course_utils.memory: byte-exact against DeepSpeed 0.19.8's estimators, paper vs seed table, activations."""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest
import torch

from course_utils import memory

SIZES = [1_509_504, 123_456_789, 1_543_714_304, 70_553_706_496]
GPUS_PER_NODE = [1, 8]
NODES = [1, 3]
FACTORS = [1.5, 1.3]


def _tiny_model(layers: int = 2, attention: str = "sdpa") -> "torch.nn.Module":
    from transformers import AutoModelForCausalLM, Qwen2Config

    kwargs = dict(memory.ARCHITECTURES["tiny"], num_hidden_layers=layers)
    config = Qwen2Config(**kwargs, attn_implementation=attention)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


ZERO2_CASES = list(itertools.product(SIZES, GPUS_PER_NODE, NODES, [True, False], FACTORS))
ZERO3_CASES = [
    c
    for c in itertools.product(SIZES, GPUS_PER_NODE, NODES, [True, False], [True, False], [True, False], [1.5])
    if c[3] or not c[4]  # DeepSpeed only offloads params together with the optimizer
]


def test_grid_is_large_enough():
    assert len(ZERO2_CASES) >= 20 and len(ZERO3_CASES) >= 20


@pytest.mark.parametrize("total,gpus,nodes,offload,factor", ZERO2_CASES)
def test_zero2_matches_deepspeed_bytes(total, gpus, nodes, offload, factor):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    expected = estimate_zero2_model_states_mem_needs(total, gpus, nodes, offload, factor)
    assert memory.ds_zero2_estimate(total, gpus, nodes, offload, factor) == expected


@pytest.mark.parametrize("total,gpus,nodes,offload,offload_params,zero_init,factor", ZERO3_CASES)
def test_zero3_matches_deepspeed_bytes(total, gpus, nodes, offload, offload_params, zero_init, factor):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    largest = max(total // 10, 1)
    expected = estimate_zero3_model_states_mem_needs(
        total, largest, gpus, nodes, offload, offload_params, zero_init, factor
    )
    assert memory.ds_zero3_estimate(total, largest, gpus, nodes, offload, offload_params, zero_init, factor) == expected


@pytest.mark.parametrize(
    "stage,total,gpus,nodes",
    [(2, 1_543_714_304, 8, 1), (2, 7_615_616_512, 4, 2), (3, 7_615_616_512, 8, 1), (3, 70_553_706_496, 8, 4)],
)
def test_printed_tables_match_all_cold(stage, total, gpus, nodes):
    largest = total // 10 if stage == 3 else None
    printed = memory.deepspeed_printed_table(stage, total, largest, num_gpus_per_node=gpus, num_nodes=nodes)
    assert memory.ds_estimate_table(stage, total, largest, gpus, nodes) == printed


def test_live_estimators_on_a_real_model(capsys):
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    model = _tiny_model(layers=4)
    total, largest = memory.ds_count_params(model)
    assert total == stage_1_and_2.model_to_params(model) == stage3.model_to_params(model)[0]
    assert largest == stage3.model_to_params(model)[1] == 4096 * 128  # the (tied) embedding
    assert (total, largest) == memory.architecture_params("tiny")
    stage_1_and_2.estimate_zero2_model_states_mem_needs_all_live(model, num_gpus_per_node=2)
    stage3.estimate_zero3_model_states_mem_needs_all_live(model, num_gpus_per_node=2)
    printed = capsys.readouterr().out
    assert printed == memory.ds_estimate_table(2, total, None, 2) + memory.ds_estimate_table(3, total, largest, 2)


def test_paper_vs_seed_table_for_7b():
    psi = 7_000_000_000
    assert memory.zero_model_states(psi, 0).gpu_total == 112 * memory.GB  # 2 + 2 + 12 bytes/param
    assert memory.slides_table_bytes(2 * psi, 0) == 56 * memory.GB  # P read as 2-byte weights: half the truth
    for stage in range(4):
        assert memory.slides_table_bytes(2 * psi, stage, 8) < memory.zero_model_states(psi, stage, 8).gpu_total


@pytest.mark.parametrize("stage,n", itertools.product(range(4), [1, 2, 4, 8, 64]))
def test_seed_table_is_exact_for_fp32_adam(stage, n):
    psi = 1_000_000_000 * 64
    b = memory.FP32_ADAM_BYTES
    fp32 = memory.zero_model_states(psi, stage, n, b["params"], b["grads"], b["optimizer"])
    assert fp32.gpu_total == memory.slides_table_bytes(4 * psi, stage, n)


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_deepspeed_counts_fp32_grads_on_top_of_the_paper(n):
    psi, largest = 8_000_000_000 * 64, 10**9
    paper2 = memory.zero_model_states(psi, 2, n).gpu_total  # 2 + 14/N
    assert memory.ds_zero2_estimate(psi, n, 1, cpu_offload=False)[1] - paper2 == 4 * psi // n
    paper3 = memory.zero_model_states(psi, 3, n).gpu_total  # 16/N
    assert memory.ds_zero3_estimate(psi, largest, n, 1, cpu_offload=False)[1] - paper3 == 4 * largest + 2 * psi // n


def test_offload_moves_states_to_cpu():
    psi = 10**9
    off = memory.zero_model_states(psi, 2, 4, offload_optimizer=True)
    assert (off.params, off.grads, off.optimizer) == (2 * psi, 0, 0)
    assert off.cpu == (12 + 2) * psi // 4
    assert memory.zero_model_states(psi, 3, 4, offload_optimizer=True, offload_param=True).gpu_total == 0
    with pytest.raises(ValueError, match="stage 3"):
        memory.zero_model_states(psi, 2, 4, offload_param=True)
    with pytest.raises(ValueError, match="stage"):
        memory.zero_model_states(psi, 4, 4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_activation_formula_matches_saved_tensors(attention):
    model = _tiny_model(layers=2, attention=attention)
    model.train()
    batch, seq = 3, 16
    ids = torch.randint(4, 4096, (batch, seq), generator=torch.Generator().manual_seed(0))
    with memory.SavedTensorCounter(model) as counter:
        out = model(input_ids=ids, labels=ids)
    predicted = memory.activation_bytes(model.config, seq, batch, 4, attention)
    assert counter.nbytes == predicted.saved
    assert memory.tensor_bytes([out.logits]) == predicted.logits


def test_activation_formula_with_checkpointing():
    model = _tiny_model(layers=2)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    ids = torch.randint(4, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    with memory.SavedTensorCounter(model) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    predicted = memory.activation_bytes(model.config, 16, 2, 4, checkpointing=True)
    assert counter.nbytes == predicted.saved
    assert predicted.layers == 2 * 2 * 16 * 128 * 4  # each layer keeps only its input


def test_cpu_step_count_equals_prediction():
    model = _tiny_model(layers=2)
    ids = torch.randint(4, 4096, (2, 32), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    measured = memory.count_step_bytes_cpu(model, {"input_ids": ids, "labels": ids}, optimizer)
    assert measured.as_dict() == memory.predict_step_bytes(model, 32, 2).as_dict()


def test_korthikanti_flash_drops_quadratic_term():
    assert memory.korthikanti_layer_bytes(2048, 1, 4096, 32, flash=True) == 2048 * 4096 * 34
    assert memory.korthikanti_layer_bytes(2048, 1, 4096, 32) > 2 * memory.korthikanti_layer_bytes(
        2048, 1, 4096, 32, True
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the allocator measurement runs only on a GPU")
def test_cuda_measurement_within_10_percent():
    model = _tiny_model(layers=4).cuda()
    ids = torch.randint(4, 4096, (8, 256), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    measured = memory.measure_step_bytes_cuda(model, {"input_ids": ids, "labels": ids}, optimizer)
    predicted = memory.predict_step_bytes(model, 256, 8)
    assert abs(measured.model_states - predicted.model_states) <= 0.1 * predicted.model_states
    forward = predicted.saved_activations + predicted.logits
    assert abs(measured.saved_activations - forward) <= 0.1 * forward


def test_calculator_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    m = memory.estimate_training_memory("Qwen2.5-7B", num_gpus=8, stage=3, batch=1, seq_len=2048, checkpointing=True)
    assert m.deepspeed_gpu is not None and m.buffers == 4 * memory.architecture_params("Qwen2.5-7B")[1]
    assert m.fits(80) and not memory.estimate_training_memory("Qwen2.5-7B", 1, 0).fits(80)
    by_count = memory.estimate_training_memory(7_000_000_000, 1, 0)
    assert by_count.total == 112 * memory.GB and by_count.activations == 0
    fig = memory.plot_training_memory([m, by_count], gpu_gib=80)
    assert len(fig.axes) == 1


def test_zero_config_uses_the_trainers_torch_optimizer():
    config = memory.zero_config(3, offload_optimizer=True)
    assert config["zero_optimization"]["stage"] == 3 and "optimizer" not in config
    assert "zero_allow_untested_optimizer" not in config  # the Trainer's DeepSpeed integration sets it itself
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    with pytest.raises(ValueError):
        memory.zero_config(5)


def test_single_process_env_skips_the_shm_build(monkeypatch):
    import deepspeed.ops

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)  # tests/conftest.py removes what the function sets afterwards
    ops = deepspeed.ops.__compatible_ops__
    monkeypatch.setitem(ops, "deepspeed_shm_comm", ops.get("deepspeed_shm_comm", False))
    values = memory.single_process_deepspeed_env()
    assert values["WORLD_SIZE"] == "1" and int(values["MASTER_PORT"]) > 0
    assert ops["deepspeed_shm_comm"] is False


def test_calculator_takes_an_exact_parameter_count_only_when_asked():
    box = memory.memory_calculator_widget()
    controls = box.controls
    assert controls["params"].disabled and controls["model"].value == "Qwen2.5-1.5B"
    assert box.estimate().setup["params"] == memory.architecture_params("Qwen2.5-1.5B")[0]
    controls["model"].value = "param count"
    assert not controls["params"].disabled
    controls["params"].value = 0.494032768  # Qwen2.5-0.5B, typed in billions
    assert box.estimate().setup["params"] == 494_032_768
    controls["model"].value = "Qwen2.5-7B"
    assert controls["params"].disabled


@pytest.mark.slow
def test_two_process_zero_partitions_match_the_paper():
    """2 gloo processes: ZeRO-1 shards the fp32 master and Adam moments, ZeRO-2 also the gradients (whole tensors),
    ZeRO-3 also the weights; DeepSpeed keeps an fp32 master shard even in fp32 training (K = 12)."""
    pytest.importorskip("deepspeed")
    from course_utils import models

    rows = memory.measure_zero_partitions(models.tiny_config(), stages=(1, 2, 3), world_size=2)
    assert [(r.stage, r.rank) for r in rows] == [(s, k) for s in (1, 2, 3) for k in (0, 1)]
    for r in rows:
        assert r.psi <= 2 * r.master <= r.psi + 2 * r.tensors and r.optimizer == 2 * r.master
        expected_params = r.master if r.stage == 3 else r.psi
        assert r.params == expected_params
        if r.stage == 1:
            assert r.grads == r.psi
        elif r.stage == 2:
            assert r.psi / 2 <= r.grads <= min(r.psi, r.psi / 2 + 2 * r.largest)  # whole tensors overlapping
        else:
            assert r.grads == r.master
    assert sum(r.grads for r in rows if r.stage == 2) < sum(r.grads for r in rows if r.stage == 1)
    with pytest.raises(ValueError, match="stage"):
        memory.measure_zero_partitions(models.tiny_config(), stages=(4,))


def test_tensor_bytes_counts_each_storage_once():
    """Views and tied weights share a storage: one count (numel x element_size per tensor would count it twice)."""
    weight = torch.zeros(8, 4)
    assert memory.tensor_bytes([weight, weight.T, weight[:2]]) == 8 * 4 * 4
    model = _tiny_model(layers=1)
    assert (
        model.lm_head.weight.untyped_storage().data_ptr()
        == model.model.embed_tokens.weight.untyped_storage().data_ptr()
    )
    tied = [model.lm_head.weight, model.model.embed_tokens.weight]
    assert memory.tensor_bytes(tied) == model.lm_head.weight.numel() * 4
