"""The lab: benchmarks and their reports, throughput, the demo and its SYNTHETIC data, figures.

Not shipped in the Slicer extension or the wheel: `plcl bench` and `plcl demo` run it from a source checkout.
"""
