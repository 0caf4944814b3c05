"""The compiled kernels (features, TreeSHAP tables); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "features._kernel",
            sources=["features/_kernel.c"],
            # No fused multiply-adds: the features' bits must not depend on the compiler or the
            # CPU (FMA is baseline on aarch64), so training and serving machines agree.
            extra_compile_args=["-O2", "-std=c11", "-ffp-contract=off"],
        ),
        # The per-row part of tabulated TreeSHAP (models/treeshap.py); sums only, no FMA either.
        Extension(
            "models._treeshap",
            sources=["models/_treeshap.c"],
            extra_compile_args=["-O2", "-std=c11", "-ffp-contract=off"],
        ),
    ]
)
