"""Library side of the command-line tools in ``tools/``: demo, benchmark, ablation runner, video.

The scripts in ``tools/`` only parse arguments and call the ``main`` of the module named like them.
"""
