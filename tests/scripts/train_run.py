"""Train a run file (JSON) with omnimm's stage runner; launched by tests, alone or under torchrun."""

import json
import sys

import torch

from omnimm.run import RunConfig
from omnimm.training.trainer import run_training

torch.manual_seed(0)  # every process builds the same initial model
run = RunConfig.model_validate(json.loads(open(sys.argv[1]).read()))
run_training(run, progress=False)
