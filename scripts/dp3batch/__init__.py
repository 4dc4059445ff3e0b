"""Importable logic of the DP3 batch workflow, used by the rules, the scripts and the tests."""
