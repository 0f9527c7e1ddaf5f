"""Publishing: a finished stage's output, its adapter merged and checked, with a model card, pushed to the Hub.

    python recipes/publish.py --config configs/smollm2-135m/publish.yaml --dry_run
    python recipes/publish.py --config configs/smollm2-135m/publish.yaml --hub_model_id you/smollm2-135m-skerrowen

The token comes from `HF_TOKEN` or `hf auth login`, never from the config. Everything is first staged in `output_dir`
(exactly what is pushed; kept when the push fails); `--dry_run` stops there and prints the files and the card.
"""

import shutil
from pathlib import Path

from huggingface_hub import get_token

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError
from rlhf_recipes.models import resolve_model_path
from rlhf_recipes.publish import cards, hub, inputs
from rlhf_recipes.publish.hub import PublishArguments

STAGE = stages.get("publish")


def main(args: PublishArguments) -> dict:
    # Model: a finished stage output (its lineage.json is written last), its files whole, before anything loads
    lineage = inputs.read_stage_lineage(args.model_path or "")
    if not args.dry_run and not args.hub_model_id:
        raise UserError("hub_model_id is not set; pass --hub_model_id you/model-name, or --dry_run to only stage.")
    inputs.check_model_folder(args.model_path)
    token = get_token()  # only to keep it out of what is written
    has_adapter = (Path(args.model_path) / "adapter_config.json").is_file()
    output_dir = args.output_dir or args.model_path.rstrip("/") + "-publish"
    hub.check_staging(output_dir, args.overwrite)  # a folder publish did not stage is refused now, not after the merge
    prompts = inputs.read_prompts(args.parity_prompts, args.parity_samples) if has_adapter and args.merge else None

    # Card inputs: evaluation results, data report and plots (the first two optional: the card says when absent)
    evaluation = cards.load_evaluation(args.eval_path)
    data_report = cards.load_data_report(args.data_report_path)
    missing = [p for p in args.plots if not Path(p).is_file()]
    if missing or len({Path(p).name for p in args.plots}) < len(args.plots):
        raise UserError(
            f"plots must be existing PNG files with distinct names; check {', '.join(missing or args.plots)}."
        )

    # Merge: the adapter folded into its float32 base (cached by models.resolve_model_path), checked on held-out
    # prompts against base + adapter on that same base; without merge, an adapter must name a base others can load
    source, published, merge_check, adapter_base_id = args.model_path, "adapter" if has_adapter else "full", None, None
    if has_adapter and args.merge:
        source, published = resolve_model_path(args.model_path), "merged"
        merge_check = hub.check_merge(
            args.model_path, source, prompts, args.merge_tolerance, args.parity_max_new_tokens
        )
        merge_check["prompts_file"] = args.parity_prompts
    elif has_adapter:
        adapter_base_id = cards.hub_id(lineage["model_name_or_path"])
        if adapter_base_id is None:
            raise UserError(
                f"merge: false publishes only the adapter, but its base {lineage['model_name_or_path']} "
                "is a local folder nobody else can load; set merge: true."
            )

    # Stage: model files, plots, data report, lineage, manifest and card, in a temporary folder renamed into place
    model_name = (args.hub_model_id or "-".join(Path(args.model_path).resolve().parts[-2:])).split("/")[-1]
    with hub.staging(output_dir, args.overwrite) as folder:
        hub.copy_model_files(source, folder, adapter_base_id)
        for plot in args.plots:
            shutil.copy(plot, folder)
        plots = [Path(p).name for p in args.plots]
        if cards.plot_training_curves(cards.stage_lineages(lineage), folder / cards.TRAINING_CURVES):
            plots.insert(0, cards.TRAINING_CURVES)
        evaluation_link, images = hub.copy_report(evaluation and args.eval_path, folder / "evaluation", "plots", token)
        report_link, histogram = hub.copy_report(
            data_report and args.data_report_path, folder / "data_report", "histogram", token
        )
        plots += images + histogram
        card = cards.render_card(
            lineage,
            model_name=model_name,
            published=published,
            repo=args.hub_model_id or cards.display_path(str(Path(output_dir).resolve())),
            license=args.license,
            description=args.description,
            evaluation=evaluation and evaluation["results"],
            comparison=evaluation and evaluation.get("comparison_table"),  # RL algorithms side by side, if compared
            evaluation_link=evaluation_link,
            data_report=data_report,
            data_report_link=report_link,
            plots=tuple(plots),
            merge_check=merge_check,
            publish_command=cards.publish_command(),
            token=token,
        )
        card.save(folder / "README.md")
        hub.write_json(folder / "lineage.json", lineage, token)
        manifest = {
            "generator": "rlhf_recipes.publish",
            "model_path": cards.display_path(args.model_path),
            "published": published,
            "merge_check": merge_check,
            "hub_model_id": args.hub_model_id,
            "revision": args.revision,
            "eval_path": args.eval_path,
            "data_report_path": args.data_report_path,
        }
        hub.write_json(folder / hub.MANIFEST, manifest, token)

    # Push (or show what would be pushed)
    if args.dry_run:
        where = f"{args.hub_model_id or '<hub_model_id>'} ({'private' if args.private else 'public'}"
        print(f"Dry run: nothing pushed. {output_dir} would go to {where}, branch {args.revision or 'main'}):")
        print(hub.list_files(Path(output_dir)) + "\n\n" + "-" * 40 + " README.md " + "-" * 40)
        print(Path(output_dir, "README.md").read_text())
        return manifest
    manifest["url"] = hub.push_folder(
        output_dir, args.hub_model_id, private=args.private, revision=args.revision, commit_message=args.commit_message
    )
    print(f"Published {output_dir} to {manifest['url']}")
    return manifest


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
