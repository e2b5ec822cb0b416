"""Train a run file (JSON) like train_run.py, alone or under torchrun, and write what each process held at the end
of each stage to `<output_dir>/held-<rank>.json`: whether FSDP was on, the mesh, the parameter elements this
process stores against the model's whole count (sharded: about 1/N of them), the bytes of its parameters and of its
optimizer state, and its resident memory (peak, and at the start before anything was built).

A process that fails writes `<ExceptionType>: <message>` to `<output_dir>/error-<rank>.txt`. Flags that break one
thing on purpose, for the tests:

- `--without-fsdp-on-cpu`: omnimm's FSDP-on-CPU override does nothing (as if accelerate dropped the plugin);
- `--accelerate-internals-renamed`: `accelerate.state.PartialState._shared_state` is gone while the override runs;
- `--fail-final-save`: the first process fails while saving a sharded stage's `final/` (and then waits 3 s).
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from omnimm.run import RunConfig
from omnimm.training import distributed
from omnimm.training import trainer as stages


def _rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


START_RSS = _rss_mib()


def _local(tensor):
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def held(trainer):
    from torch.distributed.tensor import DTensor

    parameter_bytes = sum(_local(p).numel() * p.element_size() for p in trainer.model_wrapped.parameters())
    optimizer_bytes = sum(
        _local(value).numel() * value.element_size()
        for state in trainer.optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )
    local = whole = 0
    placements = set()
    mesh = None
    for parameter in trainer.model_wrapped.parameters():
        whole += parameter.numel()
        if isinstance(parameter, DTensor):
            local += parameter.to_local().numel()
            placements.add(str(parameter.placements))
            mesh = list(parameter.device_mesh.shape)
        else:
            local += parameter.numel()
    return {
        "fsdp": trainer.is_fsdp_enabled,
        "local": local,
        "whole": whole,
        "placements": sorted(placements),
        "mesh": mesh,
        "parameter_bytes": parameter_bytes,
        "optimizer_bytes": optimizer_bytes,
        "rss_start_mib": START_RSS,
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def train_stage(*args, **kwargs):
    trainer = train_stage.original(*args, **kwargs)
    train = args[1]
    record = Path(train.output_dir) / f"held-{os.environ.get('RANK', '0')}.json"
    record.write_text(json.dumps(held(trainer)))
    return trainer


train_stage.original = stages.train_stage
stages.train_stage = train_stage  # run_training looks it up in the module: this records, it changes nothing


def _internals_renamed(trainer, settings):
    import accelerate.state

    shared = accelerate.state.PartialState._shared_state
    del accelerate.state.PartialState._shared_state
    try:
        return _internals_renamed.original(trainer, settings)
    finally:
        accelerate.state.PartialState._shared_state = shared


def _fail_to_save(model, state):
    raise OSError("disk full (made up by the test)")


if "--without-fsdp-on-cpu" in sys.argv:
    distributed.use_fsdp_on_cpu = lambda trainer, settings: False
if "--accelerate-internals-renamed" in sys.argv:
    _internals_renamed.original = distributed._use_fsdp_on_cpu
    distributed._use_fsdp_on_cpu = _internals_renamed
if "--fail-final-save" in sys.argv:
    distributed.unsharded_copy = _fail_to_save

torch.manual_seed(0)  # every process builds the same initial model
run = RunConfig.model_validate(json.loads(Path(sys.argv[1]).read_text()))
try:
    stages.run_training(run, resume="--resume" in sys.argv, progress=False)
except Exception as error:
    rank = os.environ.get("RANK", "0")
    Path(run.train.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(run.train.output_dir) / f"error-{rank}.txt").write_text(f"{type(error).__name__}: {error}")
    if "--fail-final-save" in sys.argv and rank == "0":
        time.sleep(3)
    raise
