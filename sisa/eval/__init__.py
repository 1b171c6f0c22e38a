"""Evaluating unlearning: metrics, membership-inference attacks, and the comparison benchmark."""
