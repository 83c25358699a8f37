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
    class Build(BuildExtension):
        """BuildExtension that leaves, beside a native build, the building CPU's flags
        (``_C.cpu_flags``, the "flags" line of /proc/cpuinfo): memdistill.engine.steps.extension
        refuses to load the extension on a CPU that lacks an instruction set of them (an illegal
        instruction would kill the process) and says why."""

        def build_extension(self, ext):
            super().build_extension(ext)
            # Beside the built module, and in the source tree for an editable install (whose
            # module setuptools copies there).
            targets = {os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_C.cpu_flags")}
            if getattr(self, "editable_mode", False):
                targets.add(os.path.join(*ext.name.split(".")[:-1], "_C.cpu_flags"))
            line = ""
            if native and os.path.exists("/proc/cpuinfo"):
                with open("/proc/cpuinfo") as f:
                    line = next((entry for entry in f if entry.startswith("flags")), "")
            for target in targets:
                if os.path.exists(target):
                    os.remove(target)
                if line:
                    with open(target, "w") as f:
                        f.write(line.partition(":")[2].strip() + "\n")

    return {"ext_modules": [kind("memdistill.engine.steps._C", sources, extra_compile_args=flags, py_limited_api=True)],
            "cmdclass": {"build_ext": Build}}


setup(**extension())
