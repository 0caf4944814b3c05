"""The compiled feature kernel; everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "features._kernel",
            sources=["features/_kernel.c"],
            # No fused multiply-adds: the features' bits must not depend on the compiler or the
            # CPU (FMA is baseline on aarch64), so training and serving machines agree.
            extra_compile_args=["-O2", "-std=c11", "-ffp-contract=off"],
        )
    ]
)
