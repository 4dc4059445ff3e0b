"""Importable logic of the DP3 batch workflow (used by rules/common.smk, the scripts and the tests)."""
