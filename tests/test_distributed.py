"""Distributed Jacobian extraction: 2 gloo processes on CPU against the single-process result."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import ltv_control as lc  # noqa: E402
from ltv_control.app.datasets import load_sentiment_task  # noqa: E402

from _tiny_lm import tiny_llama  # noqa: E402

TESTS = Path(__file__).resolve().parent
SEED, LAYERS, HIDDEN = 5, 3, 32

WORKER = textwrap.dedent(
    """
    import os, sys, json
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from _tiny_lm import tiny_llama
    from ltv_control.adapters import LLMPlant
    from ltv_control.adapters.distributed import distributed_jacobians, init_distributed
    from ltv_control.adapters.streamed_fit import fit_alqr_streamed

    spec = json.loads(os.environ["LTV_TEST_SPEC"])
    ctx = init_distributed(backend="gloo")
    assert ctx.world_size == 2 and ctx.rank == int(os.environ["RANK"]), ctx
    model, tok = tiny_llama({seed}, layers={layers}, hidden={hidden})
    plant = LLMPlant(model, tok)
    out = {{}}
    opts = dict(batch_size=1, max_tokens=12, progress=False)
    out["prompts"] = distributed_jacobians(plant, spec["jac"], shard="prompts", **opts)
    out["one_prompt"] = distributed_jacobians(plant, spec["jac"][:1], shard="prompts", **opts)
    out["layers"] = distributed_jacobians(plant, spec["jac"], shard="layers", layers=[2, 0, 1], **opts)
    for shard in ("prompts", "layers"):
        steerer = fit_alqr_streamed(plant, spec["desired"], spec["undesired"], jacobian_prompts=spec["jac"],
                                    shard=shard, **opts)
        out["w_" + shard] = steerer.w
    save_file({{k: v.contiguous() for k, v in out.items()}}, spec["out"] + f".rank{{ctx.rank}}")
    torch.distributed.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prompts():
    task = load_sentiment_task()
    return list(task.desired[:4]), list(task.undesired[:4]), list(task.jacobian_prompts[:5])


@pytest.fixture(scope="module")
def reference(prompts):
    """Single-process (world size 1, no process group) results."""
    from ltv_control.adapters import LLMPlant
    from ltv_control.adapters.alqr import ALQRSteerer

    torch.set_num_threads(1)
    desired, undesired, jac = prompts
    model, tok = tiny_llama(SEED, layers=LAYERS, hidden=HIDDEN)
    plant = LLMPlant(model, tok)
    opts = dict(batch_size=1, max_tokens=12, progress=False)
    A = torch.stack([A_k for _, A_k in plant.iter_jacobians(jac, **opts)])
    A1 = torch.stack([A_k for _, A_k in plant.iter_jacobians(jac[:1], **opts)])
    dense = ALQRSteerer.fit(plant, desired, undesired, jacobian_prompts=jac, **opts)
    return plant, A, A1, dense.w


@pytest.fixture(scope="module")
def two_ranks(prompts, tmp_path_factory):
    """Run the worker as 2 gloo ranks (the environment torchrun sets) and load both results."""
    from safetensors.torch import load_file

    desired, undesired, jac = prompts
    tmp = tmp_path_factory.mktemp("dist")
    script = tmp / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), seed=SEED, layers=LAYERS, hidden=HIDDEN))
    import json

    spec = json.dumps({"jac": jac, "desired": desired, "undesired": undesired, "out": str(tmp / "out")})
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, LTV_TEST_SPEC=spec,
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed workers timed out")
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    return [load_file(str(tmp / f"out.rank{r}")) for r in range(2)]


def test_prompt_shards_reduce_to_the_single_process_mean(reference, two_ranks):
    _, A, A1, _ = reference
    for res in two_ranks:  # every rank holds the same weighted mean (3 + 2 prompts)
        torch.testing.assert_close(res["prompts"], A, rtol=1e-10, atol=1e-12)
        # one prompt over two ranks: rank 1 has an empty shard and contributes weight 0
        torch.testing.assert_close(res["one_prompt"], A1, rtol=1e-10, atol=1e-12)


def test_layer_shards_come_back_in_the_requested_order(reference, two_ranks):
    _, A, _, _ = reference
    for res in two_ranks:
        torch.testing.assert_close(res["layers"], A[[2, 0, 1]], rtol=1e-10, atol=1e-12)


def test_distributed_streamed_fit_equals_dense_fit(reference, two_ranks):
    _, _, _, w_dense = reference
    for res in two_ranks:
        for shard in ("prompts", "layers"):
            w = res["w_" + shard]
            assert float((w - w_dense).norm() / w_dense.norm()) < 1e-6


def test_single_process_without_group_forwards_to_the_plant(reference, prompts):
    from ltv_control.adapters.distributed import (
        distributed_context,
        distributed_jacobians,
        iter_distributed_jacobians,
    )

    plant, A, _, _ = reference
    ctx = distributed_context()
    assert (ctx.rank, ctx.world_size, ctx.active) == (0, 1, False)
    jac = prompts[2]
    got = distributed_jacobians(plant, jac, batch_size=1, max_tokens=12, progress=False)
    torch.testing.assert_close(got, A, rtol=0, atol=0)
    order = [k for k, _ in iter_distributed_jacobians(plant, jac, layers=[1, 0], batch_size=1, max_tokens=12,
                                                       progress=False)]
    assert order == [1, 0]
    with pytest.raises(lc.ArgumentError, match="shard"):
        distributed_jacobians(plant, jac, shard="rows")
    with pytest.raises(lc.DimensionError, match="layers"):
        distributed_jacobians(plant, jac, layers=[7])
    with pytest.raises(lc.ArgumentError, match="prompts"):
        distributed_jacobians(plant, [])
