"""Label: rank the K answers of each prompt of a round, by people in a web page or by a model, then export the
rankings of every round so far as preference pairs for the reward stage.

    python recipes/label.py --config configs/smollm2-135m/label.yaml --round 1                  # people: the page
    python recipes/label.py --config configs/smollm2-135m/label.yaml --round 1 --ranker simulated --noise 0.1
    python recipes/label.py --config configs/smollm2-135m/label.yaml --host 0.0.0.0 --login alice:secret --login bob:pw

`ranker: human` serves the ranking page (Gradio; the same app deploys as a Space) on 127.0.0.1 and prints its
address and how many prompts are left: each labeller sees a prompt and its answers shuffled, models hidden, ranks
them with clicks or by typing the ranks (`2143`, ties `1122`) and Enter, or skips, or flags an unsafe prompt; every
ranking is saved the moment it is submitted. It returns when every prompt is ranked (`--wait false`: export what is
ranked now). `simulated`, `lm:<model>` and `reward:<folder>` rank unattended, each recorded as its ranker. The
export writes every ranking's C(K,2) pairs (ties skipped), grouped by prompt, with counts and labeller agreement;
`unpaired_dir` also writes thumbs up and down for KTO (each ranking's best answers desirable, its worst not).
"""

from rlhf_recipes import fs, stages
from rlhf_recipes.errors import UserError
from rlhf_recipes.feedback.config import LabelArguments, check_heldout, parse_logins, read_guidelines
from rlhf_recipes.feedback.export import write_pairs, write_thumbs
from rlhf_recipes.feedback.store import Store

STAGE = stages.get("label")


def main(args: LabelArguments) -> dict:
    check_heldout(args.heldout_pairs)  # before anyone ranks: the export at the end reads it
    if args.unpaired_dir:  # the thumbs' folder is checked as the pairs' is, before anyone ranks
        fs.check_output_folder(args.unpaired_dir, "unpaired_dir", "", what="label", replace=True)
    guidelines, logins = read_guidelines(args.guidelines), parse_logins(args.login)
    store = Store(args.store, create=False)  # a store that does not exist has nothing to rank: one sentence
    if (args.wait or args.ranker != "human") and not store.prompt_ids(args.round):
        raise UserError(
            f"round {args.round} of {store.url} holds no answers to rank; collect them first (python "
            f"recipes/collect.py --config configs/smollm2-135m/collect.yaml --round {args.round}), or check --round."
        )
    if args.ranker == "human" and args.wait:  # the page, until every prompt of the round is ranked
        from rlhf_recipes.feedback.app import serve

        serve(store, args.round, host=args.host, port=args.port, per_prompt=args.per_prompt,
              auth=logins or None, until_done=True, guidelines=guidelines)  # fmt: skip
    elif args.ranker != "human":
        from rlhf_recipes.feedback.rankers import load_ranker, rank_round

        ranker = load_ranker(args.ranker, args.noise, args.seed, args.reward_model_in_training)
        store.check_usable()  # damaged, read-only or full: one sentence before any ranking
        print(f"round {args.round}, {ranker.name}: {rank_round(store, ranker, args.round)}")
    rounds = args.export_rounds or list(range(1, args.round + 1))
    report = write_pairs(store, rounds, args.output_dir, args.heldout_pairs)
    print(f"exported {report['pairs']} pairs of rounds {rounds} to {args.output_dir}: {report['by_round_and_ranker']}")
    if args.unpaired_dir:
        thumbs = write_thumbs(store, rounds, args.unpaired_dir)
        print(f"exported {thumbs['answers']} answers ({thumbs['desirable']} desirable) to {args.unpaired_dir}")
    return report


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
