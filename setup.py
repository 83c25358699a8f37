"""Build script. The optional C++/CUDA extension is built only with MEMDISTILL_BUILD_EXT=1
(see the fast-path issue); a plain install is pure Python."""
from setuptools import setup

setup()
