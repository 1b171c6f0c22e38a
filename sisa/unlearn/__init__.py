"""Unlearning: exact SISA deletion (`exact`); approximate baselines live in `baselines/`."""
