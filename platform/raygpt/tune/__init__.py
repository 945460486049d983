"""Hyperparameter sweeps on Ray Tune: every trial is a Ray Train run of one experiment config.

    sweep_config.py    the sweep YAML, typed and checked before Ray starts
    search_space.py    `key: {loguniform: [low, high]}` and friends, checked, then as Tune domains
    sweep.py           the Tuner: trials, concurrency from the cluster, resume
    report.py          evaluations from Ray Train to Tune; finished trials to the sweep folder
    early_stopping.py  ASHA whose rungs survive a resumed sweep
    results.py         the trial table, the best trial as a training YAML, the val-loss plot

Scaling-law studies (jobs/scaling.py) run their IsoFLOP runs as such a sweep:

    scaling_sizes.py      the depth/width rule, N and FLOPs per token from the model
    scaling_config.py     the study YAML, typed and checked; its runs as an IsoFlopSweep
    scaling_fit.py        Chinchilla's approaches 2 and 3, bootstrap intervals (no Ray)
    scaling_recommend.py  a budget's model and tokens, and the loss to expect
    scaling_report.py     scaling.md, scaling.json, scaling.png
    scaling_study.py      the sweep, then the fits and the report

Checking a sweep (sweep_config, search_space, results) imports no Ray.
"""
