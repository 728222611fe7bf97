"""The ``rlreg`` command line (installed as :mod:`rlreg.cli`): a thin Typer layer over :mod:`rlreg.pipelines`."""
