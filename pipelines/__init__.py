"""Orchestration over the library (installed as :mod:`rlreg.pipelines`): data, I/O, progress, reports.

Data flows one way: ``rlreg.cli`` -> ``rlreg.pipelines`` -> ``rlreg``.
"""
