"""``python -m hkd_d2.data.synthetic --out DIR ...`` (see :func:`.writing.main`)."""
from .writing import main

main()
