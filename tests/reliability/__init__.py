"""The reliability and security suite (issue 10): kills, full disks, hostile files, fuzzed input, faults, load.

A package, unlike the other test folders: its conftest.py then imports as ``reliability.conftest`` and
does not replace the top-level ``conftest`` module the other tests import helpers from.
"""
