"""Build script. A plain install is pure Python and does not import torch.

With ``MEMDISTILL_BUILD_EXT=1 pip install --no-build-isolation -e .`` it also builds the
optional extension ``memdistill.engine.steps._C`` (the torch custom ops ``torch.ops.memdistill.*``) from
``csrc/``: the CPU kernels always, plus ``csrc/cuda/*.cu`` when torch is a CUDA build and its
CUDA_HOME has nvcc. ``--no-build-isolation`` builds against the installed torch, whose ABI the
extension must match. The CPU kernels are built for the building machine's CPU (``-march=native``);
``MEMDISTILL_PORTABLE=1`` builds them for any x86-64.
"""
import glob
import os

from setuptools import setup


def extension() -> dict:
    """setup() arguments for memdistill.engine.steps._C, or {} unless MEMDISTILL_BUILD_EXT=1."""
    if os.environ.get("MEMDISTILL_BUILD_EXT") != "1":
        return {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp"))
    # The CPU kernels are SIMD lanes of models: built for this machine's vector units (AVX2 and
    # FMA where it has them: 1.3x faster on the §5.2 MLPs), unless MEMDISTILL_PORTABLE=1 asks
    # for a binary that runs on any x86-64 (a wheel built for other machines).
    native = [] if os.environ.get("MEMDISTILL_PORTABLE") == "1" else ["-march=native"]
    flags = {"cxx": ["-O3", *native, "-DPy_LIMITED_API=0x030A0000"]}
    kind = CppExtension
    if torch.version.cuda and CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        kind, flags["nvcc"] = CUDAExtension, ["-O3"]
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
    return {"ext_modules": [kind("memdistill.engine.steps._C", sources, extra_compile_args=flags, py_limited_api=True)],
            "cmdclass": {"build_ext": BuildExtension}}


setup(**extension())
