"""rlreg's benchmarks, peer runners, tuning scripts and evaluation-dataset writers: not part of the installed package.

Run each from the repository root as ``python -m benchmarks.NAME`` (``make bench`` runs the set that writes
``docs/benchmarks.md``); every figure in ``docs/`` names the command that produced it. The helpers the benchmarks
share (child processes with their own peak memory, the machine description, marked sections of a markdown file)
live in :mod:`benchmarks.common`. Benchmarks import the product (:mod:`rlreg`, :mod:`rlreg.pipelines`); nothing in
the product imports this folder.
"""
