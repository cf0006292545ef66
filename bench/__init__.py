"""Benchmarks of e-mage side by side with Orthanc (``make bench``), results in ``docs/benchmarks.md``.

Run from the repository root: ``python -m bench`` (``make bench`` bootstraps and provisions first). What is
measured, through which path and at which scale: ``docs/benchmarks.md`` (written by the run) and
``bench/README.md``.
"""
