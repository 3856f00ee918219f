"""Hyper-parameter search over cellnet on Ray Tune + Optuna + Ray Train."""
