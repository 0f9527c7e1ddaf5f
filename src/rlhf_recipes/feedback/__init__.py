"""The feedback loop: answers sampled into a comparison store (collect), ranked by people in a web page or by a model
(app, rankers, importers), exported as grouped preference pairs (export), and repeated in pipeline rounds
(pipeline/expand.py).
The stages are `collect` and `label` (stages/catalog.py); README.md, "Feedback rounds", has the commands."""
