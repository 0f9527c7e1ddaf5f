"""Will it fit? The memory planner: the peak memory of training stages, estimated from their configs before anything
is loaded (`python recipes/plan.py --config ...`).

    device.py       where a stage runs and its memory (Device)
    shapes.py       a model's config and parameter shapes, built on the `meta` device (ModelShape)
    footprint.py    one model's memory in a stage: weights, trainable state, activations (Footprint)
    estimate.py     the planner hooks the stage registry names: plan_lm_stage, plan_ppo_stage
    table.py        a stage's plan as a table or JSON, with advice (StagePlan)
    run.py          plan a stage or pipeline YAML through the registry (plan_file, plan_config, plan_pipeline)
    calibration.py  the measured constants in calibration.json, read by the plan, written by the memory bench
"""

from .device import GIB, Device
from .run import plan_config, plan_file, plan_parsed, plan_pipeline
from .table import Item, StagePlan

__all__ = ["GIB", "Device", "Item", "StagePlan", "plan_config", "plan_file", "plan_parsed", "plan_pipeline"]
