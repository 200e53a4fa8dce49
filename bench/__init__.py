"""Benchmarks (not tests): ``leukolab bench ssl|throughput|active``, each writing a JSON report.

They call the same library functions as the product (``ml``), on MANIFEST-split image folders.
"""
