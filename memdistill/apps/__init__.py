"""Applications: what a user runs, built on the library below.

Lives here: the ``memdistill`` command line (``cli``), batch jobs over TOML job files
(``batch``, ``jobfile``), the paper's reproduction (``reproduce``, ``report``), figures and
the memory profile (``profiling``). A new command goes here.

May import: everything in memdistill. Nothing imports it but ``memdistill.__main__``.
"""
