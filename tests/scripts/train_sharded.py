"""Train a run file (JSON) like train_run.py, alone or under torchrun, and write what each process held at the end
of each stage to `<output_dir>/held-<rank>.json`: whether FSDP was on, the mesh, the parameter elements this
process stores against the model's whole count (sharded: about 1/N of them), the bytes of its parameters and of its
optimizer state, and its resident memory (peak, and at the start before anything was built)."""

import json
import os
import resource
import sys
from pathlib import Path

import torch

from omnimm.run import RunConfig
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

torch.manual_seed(0)  # every process builds the same initial model
run = RunConfig.model_validate(json.loads(Path(sys.argv[1]).read_text()))
stages.run_training(run, resume="--resume" in sys.argv, progress=False)
