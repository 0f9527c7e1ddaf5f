"""The feedback loop: answers sampled into a comparison store (collect), ranked by people in a web page or by a model
(app, rankers, importers), exported as grouped preference pairs (export), and repeated in pipeline rounds (rounds).
The stages are `collect` and `label` in stages.py; README.md, "Feedback rounds", has the commands."""
