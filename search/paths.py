"""What a search leaves in its run directory, by name, in one place (search.run, search.retrain, search.winner)."""

from __future__ import annotations

SEARCH_CONFIG = "search_config.yaml"  # the resolved config the trials ran (what --resume continues)
SPACE_AS_GIVEN = "space_as_given.yaml"  # the YAML before flags, to notice an edited space on --resume
TUNE_DIR = "tune"  # Ray Tune's experiment (resumable)
TRIALS_CSV = "trials.csv"
SUMMARY = "summary.json"
OOF_FILE = "oof.npz"  # the winner's out-of-fold predictions
DATA_FILE = "data.json"  # the search data's fingerprint, written when the search starts (--resume, retrain check it)
PRECISION_FILE = "precision.json"  # what `precision: auto` trains each backbone in, decided when the search starts
TRAIN_DIR = "train"  # Ray Train's runs, one per trial: checkpoints and the trial's fold models
FIRST_RUNG_FILE = "first_rung.json"  # the synchronous first rung's decision (search/first_rung.py)
