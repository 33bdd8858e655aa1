"""A run folder and everything in it: the one home of what a training run writes and how it is read.

    RUN/config.json          the run's settings (`config.RunConfig`; a pre-training run adds "pretrain")
    RUN/metrics.jsonl        one JSON row per logged step, cut back to the checkpoint on resume
    RUN/checkpoint.pt        the newest checkpoint (weights, optimiser, random states, step)
    RUN/checkpoint-STEP.pt   the last `files.KEEP` checkpoints
    RUN/best.pt              the weights that scored best in validation so far
    RUN/population.pt        fixed batch-norm statistics, where the model ships them (nets.population)

`files` writes and reads them (atomically, and without running code), `config` holds the settings and
their rules, `build` makes a run's data and learner, `folder` holds the rules of a new or resumed run
and loads a trained one, `warmstart` starts a learner's backbone from another run's.

This module imports nothing, so that the bottom layers may use `fewsight.run.files` (which needs
only `fewsight.errors`).
"""
